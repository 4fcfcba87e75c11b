"""Shared fixtures: an isolated CKPTLAB_HOME with a small pico build, and one local Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Isolate every piece of state before anything reads it: hub cache, DuckDB, MLflow.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="ckptlab-test-home-"))
os.environ["CKPTLAB_HOME"] = str(_SESSION_HOME)
os.environ.pop("HF_HUB_CACHE", None)
os.environ["HF_HUB_OFFLINE"] = "1"  # the hub is unreachable here; never wait on it
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("MLFLOW_TRACKING_URI", None)  # a developer's own server never gets test runs
os.environ["DO_NOT_TRACK"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# The fixture build: two sizes, 100 steps -> checkpoints 0, 1, 2, 4, ..., 64, 100.
PICO_SIZES = ("xs", "s")
PICO_MAX_STEP = 100


@pytest.fixture(scope="session")
def ckptlab_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def pico_hub(ckptlab_home: Path) -> Path:
    from ckptlab.pico.build import PicoRecipe, build_pico

    hub = ckptlab_home / "hub"
    build_pico(hub, PICO_SIZES, (0,), PicoRecipe(max_step=PICO_MAX_STEP, code_bytes=600_000))
    return hub


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting one costs seconds)."""
    from ckptlab.orchestrator.cluster import private_ray_environment

    private_ray_environment()  # what `ckptlab run` does: loopback only, token auth
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


# --- RELIABILITY.md: rows recorded by fault, bad-input and security tests -------------------
_RELIABILITY_ROWS: list = []


def pytest_addoption(parser):
    parser.addoption(
        "--reliability-report",
        default=None,
        help="write the reliability table (RELIABILITY.md) from this run's recorded rows",
    )


@pytest.fixture
def reliability(request):
    from reliability import Recorder

    return Recorder(_RELIABILITY_ROWS, request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        for row in _RELIABILITY_ROWS:
            if row.test == item.nodeid and row.passed is None:
                row.passed = report.passed
    return report


def pytest_sessionfinish(session, exitstatus):
    out = session.config.getoption("--reliability-report")
    if out and _RELIABILITY_ROWS:
        import sys

        from reliability import write_report

        for row in _RELIABILITY_ROWS:  # a test that recorded, then errored in teardown
            row.passed = bool(row.passed)
        command = "pytest " + " ".join(sys.argv[1:])
        write_report(_RELIABILITY_ROWS, Path(out), command)

"""The MLflow UI as a person sees it: a real `mlflow server` on 127.0.0.1 over a run's store,
opened in headless Chromium. The experiment's runs, the parent (description, children, summary
metrics) and a child's metric charts over training steps must render; the screenshots are kept
in test-artifacts/mlflow-ui/ (CI keeps that folder)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ckptlab.results import ResultStore

from loopback_cluster import free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "mlflow-ui"
SPEC = """
name: ui-check
description: Two pico sizes, anisotropy and saturation over early training.
models: [{suite: pico, sizes: [xs, s], steps: [0, 4, 32, 100]}]
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 8, seq_len: 32}]
analyses: [{name: saturation}, {name: anisotropy}, {name: singular_entropy}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, pico_hub, ckptlab_home):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it")
    root = tmp_path_factory.mktemp("ui")
    (root / "ui.yaml").write_text(SPEC)
    store = root / "mlflow.db"
    env = os.environ | {"CKPTLAB_HOME": str(ckptlab_home), "HF_HUB_OFFLINE": "1"}
    # Inline: the UI is what this test is about, not where the units ran.
    subprocess.run(
        [sys.executable, "-m", "ckptlab", "run", "ui.yaml", "--executor", "inline",
         "--db", "r.duckdb", "--tracking-uri", f"sqlite:///{store}"],
        cwd=root, env=env, check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [Path(sys.executable).parent / "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{store}", "--default-artifact-root", (root / "mlartifacts").as_uri(),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "no mlflow server"
            time.sleep(0.5)
    yield url, root
    process.terminate()  # SIGTERM to the parent: its uvicorn children go with it
    process.wait(30)


def browse(url: str, name: str, out: Path) -> str:
    """The page's DOM once its scripts have run, and a screenshot of it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    flags = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
             "--virtual-time-budget=25000", f"--user-data-dir={out / 'chromium'}"]  # fmt: skip
    subprocess.run(
        [*flags, f"--screenshot={ARTIFACTS / name}.png", url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    (ARTIFACTS / f"{name}.html").write_text(dom)
    return dom


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_the_mlflow_ui_shows_runs_description_and_curves(server):
    url, root = server
    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("ui-check")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("mlflow.runName") == "pico/pico-s")
    base = f"{url}/#/experiments/{experiment.experiment_id}"

    listing = text_of(browse(f"{base}/runs", "experiment-runs", root))
    parent_page = text_of(browse(f"{base}/runs/{parent.info.run_id}", "parent-run", root))
    charts_dom = browse(f"{base}/runs/{child.info.run_id}/model-metrics", "child-charts", root)
    charts = text_of(charts_dom)

    keys = sorted(child.data.metrics)
    sections = re.findall(r"(\w+) \((\d+)\)", charts)
    # The experiment lists the parent run; its page has the description, the children and
    # the summary metrics; the child's page draws one chart per key over training steps.
    assert "Training runs" in listing and parent.data.tags["mlflow.runName"] in listing
    assert "Two pico sizes, anisotropy and saturation over early training." in parent_page
    assert "pico/pico-s" in parent_page and "pico/pico-xs" in parent_page
    summary = {"cells_computed", "cells_copied", "cells_cached", "cells_failed", "checkpoints",
               "metric_rows"}  # fmt: skip
    assert set(parent.data.metrics) == summary and "Metrics (6)" in parent_page
    stored = ResultStore(root / "r.duckdb").query(
        "SELECT DISTINCT metric, layer FROM results WHERE model = 'pico/pico-s'"
    )
    assert keys == sorted(
        metric if layer is None else f"{metric}/layer_{layer}" for metric, layer in stored.rows()
    )  # one key per (metric, layer), nothing else
    assert ("anisotropy", "3") in sections, sections
    assert "layer_0" in charts and "Step" in charts
    assert charts_dom.count("main-svg") >= 4  # plotly drew the charts, not placeholders
    for page in ("experiment-runs", "parent-run", "child-charts"):
        assert (ARTIFACTS / f"{page}.png").stat().st_size > 20_000  # a rendered page

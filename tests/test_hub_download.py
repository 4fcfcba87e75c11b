"""The download path against a hub of our own on 127.0.0.1 (tests/fake_hub.py): planning
fetches no weight file, a run downloads through the real client and analyses every revision,
missing revisions and repos are one line each, and a rerun offline needs nothing more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptlab.results import ResultStore

from fake_hub import FakeHub

pytestmark = pytest.mark.slow

CKPTLAB = str(Path(sys.executable).parent / "ckptlab")
SPEC = """
name: remote
models:
  - {repo: remote/pico-xs, revisions: [step0, step4, step64]}
  - {repo: remote/pico-s, revisions: [step0, step100]}
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 16}]
analyses: [{name: saturation}, {name: singular_entropy}]
"""


def published(pico_hub: Path, size: str) -> dict[str, Path]:
    """The pico build's revisions of one size: {branch: snapshot folder}."""
    storage = pico_hub / f"models--pico--pico-{size}"
    return {
        ref.name: storage / "snapshots" / ref.read_text() for ref in (storage / "refs").iterdir()
    }


@pytest.fixture(scope="module")
def hub(pico_hub):
    with FakeHub() as server:
        server.add_model("remote/pico-xs", published(pico_hub, "xs"))
        server.add_model("remote/pico-s", published(pico_hub, "s"))
        yield server


def client_env(hub: FakeHub, home: Path, offline: bool = False) -> dict[str, str]:
    """HF_ENDPOINT and HF_HUB_OFFLINE are read when huggingface_hub is imported: a fresh
    process of the CLI, with an empty home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
    return env | {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "CKPTLAB_HOME": str(home),
    }


def ckptlab(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CKPTLAB, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_plan_then_run_then_offline_rerun(hub, tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    home = tmp_path / "home"
    env = client_env(hub, home)
    hub.requests.clear()
    plan = ckptlab(["plan", "spec.yaml"], env, tmp_path)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "5 checkpoints (5 with work), 10 cells: 0 done, 10 to compute" in plan.stdout
    assert hub.downloads(".safetensors") == []  # planning read tokenizers, never weights
    refs = [p for m, p in hub.requests if p.endswith("/refs")]
    assert sorted(refs) == ["/api/models/remote/pico-s/refs", "/api/models/remote/pico-xs/refs"]

    run = ckptlab(["run", "spec.yaml", "--executor", "inline"], env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(hub.downloads("model.safetensors")) == 5  # each revision's weights, once
    store = ResultStore(home / "results.duckdb")
    assert store.query("SELECT count(*) FROM cells").item() == 10
    # The commits the run stored are the hub's.
    stored = dict(store.query("SELECT revision, commit_sha FROM checkpoints WHERE model ="
                              " 'remote/pico-xs'").rows())  # fmt: skip
    assert stored == {b: hub.repos[("models", "remote/pico-xs")].branches[b] for b in stored}

    offline = ckptlab(["run", "spec.yaml", "--executor", "inline"], client_env(hub, home, True),
                      tmp_path)  # fmt: skip
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "Nothing to compute: all 10 cells" in offline.stdout


MISSING = """
name: missing
models:
  - {repo: remote/pico-xs, revisions: [step0, step7, step9]}
  - {repo: remote/nope, revisions: [step1, step2]}
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 16}]
analyses: [{name: saturation}]
"""


def test_missing_revisions_and_repos_are_one_line_each(hub, tmp_path):
    (tmp_path / "spec.yaml").write_text(MISSING)
    plan = ckptlab(["plan", "spec.yaml"], client_env(hub, tmp_path / "home"), tmp_path)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    lines = [line for line in plan.stdout.splitlines() if line.startswith("unresolved")]
    assert lines == [
        "unresolved remote/pico-xs: step7, step9: no such revision",
        "unresolved remote/nope: step1, step2: no such repo",
    ]
    assert "Traceback" not in plan.stdout + plan.stderr


def test_offline_with_nothing_cached_is_one_line_per_model(tmp_path, hub):
    (tmp_path / "spec.yaml").write_text(SPEC)
    hub.requests.clear()
    plan = ckptlab(["plan", "spec.yaml"], client_env(hub, tmp_path / "empty", True), tmp_path)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    lines = [line for line in plan.stdout.splitlines() if line.startswith("unresolved")]
    assert len(lines) == 2 and all("not in the local hub cache (offline" in x for x in lines)
    assert "5 checkpoints unresolved" in plan.stdout
    assert hub.requests == []  # offline means offline


DATASET_SPEC = """
name: hub-inputs
models: [{repo: remote/pico-xs, revisions: [step64]}]
input_sets:
  - {name: wiki, hub: {repo: org/wiki, config: raw, split: validation}, num_sequences: 4,
     seq_len: 16}
analyses: [{name: saturation}]
"""


def test_an_input_set_from_a_hub_dataset(hub, tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [f"row {i}: a {['red', 'green'][i % 2]} {i}." for i in range(200)]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": rows}), buffer)
    hub.add_dataset("org/wiki", {"raw/validation-00000-of-00001.parquet": buffer.getvalue(),
                                 "README.md": b"# wiki"})  # fmt: skip
    (tmp_path / "spec.yaml").write_text(DATASET_SPEC)
    home = tmp_path / "home"
    run = ckptlab(["run", "spec.yaml", "--executor", "inline"], client_env(hub, home), tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert any(p.endswith("validation-00000-of-00001.parquet") for p in hub.downloads())
    store = ResultStore(home / "results.duckdb")
    [source] = store.query("SELECT source FROM input_sets")["source"].to_list()
    assert source.startswith("hub:org/wiki@") and source.endswith("/raw/validation:text")
    # Offline, the cached dataset gives the same tokens, so the same cells: nothing to do.
    again = ckptlab(["run", "spec.yaml", "--executor", "inline"], client_env(hub, home, True),
                    tmp_path)  # fmt: skip
    assert again.returncode == 0 and "Nothing to compute: all 1 cells" in again.stdout

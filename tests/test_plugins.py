"""Plug-in analyses: a file outside the repo runs through a real run next to the shipped
analyses (one load, one forward pass per input set), keyed by its code, isolated from the
others; the tutorial's code is the code that runs; `ckptlab analyses` says where each
analysis comes from; collisions are spec errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

import ckptlab.orchestrator.input_set_pass as input_set_pass
import ckptlab.orchestrator.worker as worker
from ckptlab.hub import fetch_snapshot, load_model
from ckptlab.orchestrator.executors import InlineExecutor
from ckptlab.orchestrator.runner import make_plan, run_plan
from ckptlab.results import ResultStore
from ckptlab.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "your-own-analysis.md"
STEPS = [0, 100]
INPUT_SET = {"name": "prose", "builtin": "pydoc_topics", "num_sequences": 4, "seq_len": 32}


def tutorial_code() -> str:
    return re.search(r"```python\n(.*?)```", TUTORIAL.read_text(), re.S).group(1)


class Counts:
    """Checkpoint loads and forward passes (per input set) of the units run in this process."""

    def __init__(self, monkeypatch):
        self.loads, self.passes = 0, []
        load, stream = worker.load_checkpoint, input_set_pass.stream_forward

        def counted_load(*args, **kwargs):
            self.loads += 1
            return load(*args, **kwargs)

        def counted_stream(model, tokens, needs, batch_size):
            self.passes.append(tokens.shape)
            yield from stream(model, tokens, needs, batch_size)

        monkeypatch.setattr(worker, "load_checkpoint", counted_load)
        monkeypatch.setattr(input_set_pass, "stream_forward", counted_stream)


def run_inline(spec: dict, root: Path, hub: Path, folder: Path | None = None):
    """parse (loads the plug-ins, relative to ``folder``, else the cwd), plan and run in
    this process."""
    parsed = parse_spec(spec, folder)
    db = root / "results.duckdb"
    plan = make_plan(parsed, db, hub)
    summary = run_plan(
        plan,
        yaml.safe_dump(spec),
        db,
        f"sqlite:///{root / 'mlflow.db'}",
        hub,
        InlineExecutor(parsed.resources),
        Console(file=io.StringIO()),
    )
    return plan, summary, ResultStore(db)


def norms_spec(plugin: str, extra: list[dict] | None = None) -> dict:
    return {
        "name": "norms",
        "plugins": [plugin],
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": STEPS}],
        "input_sets": [INPUT_SET],
        "analyses": [{"name": "mean_norm"}, {"name": "anisotropy"}, *(extra or [])],
    }


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """A folder outside the repo, the run's cwd, holding the tutorial's plug-in file."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "mean_norm.py").write_text(tutorial_code())
    monkeypatch.chdir(folder)
    return folder


def test_the_tutorial_plugin_runs_in_the_same_pass(outside, pico_hub, monkeypatch):
    counts = Counts(monkeypatch)
    plan, summary, store = run_inline(norms_spec("mean_norm.py"), outside, pico_hub)
    assert summary.cells_failed == 0 and summary.cells_computed == 2 * len(STEPS)
    # One load per checkpoint, one pass per input set for the plug-in and anisotropy together.
    assert counts.loads == len(STEPS) and len(counts.passes) == len(STEPS)

    rows = store.query(
        "SELECT step, layer, value FROM results WHERE analysis = 'mean_norm' ORDER BY step, layer"
    )
    tokens = torch.from_numpy(plan.input_sets["pico/pico-xs"]["prose"].token_ids)
    for step in STEPS:
        folder, _ = fetch_snapshot("pico/pico-xs", f"step{step}", pico_hub, local_only=True)
        model = load_model(folder, "float32", "cpu")
        with torch.no_grad():
            hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states
        expected = [
            np.linalg.norm(h[:, 1:].double().numpy(), axis=-1).mean() for h in hidden
        ]  # position 0 dropped, as the tutorial's default says
        got = [v for s, _, v in rows.iter_rows() if s == step]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    anisotropy = store.query("SELECT count(*) FROM results WHERE analysis = 'anisotropy'").item()
    assert anisotropy > 0

    code = store.query(
        "SELECT DISTINCT analysis, code_source, code_hash FROM cells ORDER BY analysis"
    ).rows()
    digest = hashlib.sha256((outside / "mean_norm.py").read_bytes()).hexdigest()
    assert code == [("anisotropy", None, None), ("mean_norm", "file mean_norm.py", digest)]


def test_editing_the_plugin_recomputes_only_its_cells(outside, pico_hub):
    spec = norms_spec("mean_norm.py")
    run_inline(spec, outside, pico_hub)
    again = make_plan(parse_spec(spec), outside / "results.duckdb", pico_hub)
    assert again.missing_cells == 0

    path = outside / "mean_norm.py"
    path.write_text(path.read_text() + "\n# a comment: new code, new cells\n")
    edited = make_plan(parse_spec(spec), outside / "results.duckdb", pico_hub)
    missing = sorted(c.analysis for u in edited.units for c in u.missing)
    assert missing == ["mean_norm"] * len(STEPS)


def test_mlflow_tags_the_plugins_code(outside, pico_hub):
    from mlflow import MlflowClient

    _, summary, _ = run_inline(norms_spec("mean_norm.py"), outside, pico_hub)
    run = MlflowClient(f"sqlite:///{outside / 'mlflow.db'}").get_run(summary.mlflow_run_id)
    digest = hashlib.sha256((outside / "mean_norm.py").read_bytes()).hexdigest()
    assert run.data.tags["ckptlab.code.mean_norm"] == f"file mean_norm.py sha256:{digest}"
    assert "ckptlab.code.anisotropy" not in run.data.tags


MISBEHAVING = '''
import time

from ckptlab.analysis import MetricValue, Need, Reducer, analysis


@analysis(name="raises", version=1, needs={Need.HIDDEN_STATES})
class Raises(Reducer):
    """Always fails (test)."""

    def update(self, batch):
        raise RuntimeError("boom in update")


@analysis(name="malformed", version=1, needs={Need.HIDDEN_STATES})
class Malformed(Reducer):
    """Returns a string where a number belongs (test)."""

    def finalize(self):
        return [MetricValue("x", "not a number")]


@analysis(name="slow", version=1, needs={Need.HIDDEN_STATES})
class Slow(Reducer):
    """Sleeps past its budget (test)."""

    def update(self, batch):
        time.sleep(0.3)

    def finalize(self):
        return [MetricValue("x", 1.0)]


@analysis(name="vandal", version=1, needs={Need.HIDDEN_STATES, Need.LM_HEAD})
class Vandal(Reducer):
    """Writes zeros into what it reads (test)."""

    def update(self, batch):
        for h in batch.require("hidden_states"):
            h.zero_()
        self.context.require("lm_head_weight").zero_()

    def finalize(self):
        return [MetricValue("x", 1.0)]
'''


def test_a_misbehaving_plugin_fails_only_its_cells(tmp_path, pico_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.py").write_text(MISBEHAVING)
    spec = {
        "name": "misbehaving",
        "plugins": ["bad.py"],
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [100]}],
        "input_sets": [INPUT_SET],
        "analyses": [{"name": n} for n in ("vandal", "anisotropy", "raises", "malformed", "slow")]
        + [{"name": "singular_entropy"}],
        "resources": {"batch_size": 2, "plugin_timeout_s": 0.2},  # 2 batches: slow > 0.2 s
    }
    _, summary, store = run_inline(spec, tmp_path, pico_hub)
    failures = dict(store.query("SELECT analysis, error FROM failures").rows())
    assert set(failures) == {"raises", "malformed", "slow"}
    assert failures["raises"].startswith("raises: RuntimeError: boom in update (bad.py:")
    assert failures["malformed"].startswith("malformed: ValueError: returned malformed rows:")
    assert "exceeded its time budget of 0.2 s" in failures["slow"]
    assert summary.cells_computed == 3  # vandal, anisotropy, singular_entropy

    # The vandal zeroed its copies: anisotropy and the head's entropy saw the real tensors.
    clean_root = tmp_path / "clean"
    clean_root.mkdir()
    clean = {**spec, "analyses": [{"name": "anisotropy"}, {"name": "singular_entropy"}]}
    _, _, reference = run_inline(clean, clean_root, pico_hub)
    query = (
        "SELECT analysis, metric, layer, value FROM results WHERE analysis IN"
        " ('anisotropy', 'singular_entropy') ORDER BY ALL"
    )
    assert store.query(query).rows() == reference.query(query).rows()


def cli(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptlab", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


COLLIDING = '''
from ckptlab.analysis import MetricValue, Need, Reducer, analysis


@analysis(name="{name}", version=1, needs={{Need.LM_HEAD}})
class Mine(Reducer):
    """A plug-in named like another analysis (test)."""

    def finalize(self):
        return [MetricValue("x", 1.0)]
'''


@pytest.mark.parametrize("name", ["anisotropy", "twice"])
def test_a_name_collision_is_a_spec_error_naming_both(tmp_path, name):
    (tmp_path / "one.py").write_text(COLLIDING.format(name=name))
    (tmp_path / "two.py").write_text(COLLIDING.format(name=name))
    plugins = ["one.py"] if name == "anisotropy" else ["one.py", "two.py"]
    spec = {
        "name": "collide",
        "plugins": plugins,
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0]}],
        "analyses": [{"name": name}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = cli(["validate", "spec.yaml"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    if name == "anisotropy":
        assert "plugins[0]" in line and "file one.py" in line and "of ckptlab" in line, line
    else:
        assert "plugins[1]" in line and "file two.py" in line and "file one.py" in line, line


def test_a_missing_plugin_is_one_line(tmp_path):
    spec = {
        "name": "missing",
        "plugins": ["nowhere.py", "no_such_module_xyz"],
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0]}],
        "analyses": [{"name": "singular_entropy"}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    done = cli(["validate", "spec.yaml"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: spec.yaml: plugins[0]: no such plug-in file: nowhere.py"


ENTRY_POINT_MODULE = '''
from ckptlab.analysis import MetricValue, Need, Reducer, analysis


@analysis(name="head_rows", version=1, needs={Need.LM_HEAD})
class HeadRows(Reducer):
    """Rows of the LM head (test): n = V."""

    def finalize(self):
        return [MetricValue("rows", float(self.context.require("lm_head_weight").shape[0]))]
'''


def test_analyses_lists_shipped_plugins_and_entry_points(tmp_path):
    site = tmp_path / "site"
    (site / "ckptlab_ep_demo").mkdir(parents=True)
    (site / "ckptlab_ep_demo" / "__init__.py").write_text(ENTRY_POINT_MODULE)
    info = site / "ckptlab_ep_demo-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ckptlab-ep-demo\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[ckptlab.analyses]\nhead_rows = ckptlab_ep_demo\n")
    (tmp_path / "mean_norm.py").write_text(tutorial_code())
    spec = norms_spec("mean_norm.py")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))

    done = cli(["analyses", "--spec", "spec.yaml", "--json"], tmp_path, PYTHONPATH=str(site))
    assert done.returncode == 0, done.stderr
    origin = {row["name"]: row["origin"] for row in json.loads(done.stdout)}
    assert origin["anisotropy"] == "ckptlab"
    assert origin["mean_norm"] == "file mean_norm.py"
    assert origin["head_rows"] == "entry point ckptlab_ep_demo (ckptlab-ep-demo 0.3)"
    table = cli(["analyses", "--spec", "spec.yaml"], tmp_path, PYTHONPATH=str(site), COLUMNS="200")
    assert "file mean_norm.py" in table.stdout and "entry point" in table.stdout


def test_the_api_reference_is_generated_from_the_code():
    from ckptlab.analysis import reference_markdown

    assert (REPO / "docs" / "analysis-api.md").read_text() == reference_markdown(), (
        "docs/analysis-api.md is stale: python -m ckptlab.analysis > docs/analysis-api.md"
    )


@pytest.mark.parametrize("example", ["residual_norm", "induction_score"])
def test_the_examples_run(example, tmp_path, pico_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repo: the specs name their files from their folder
    spec = yaml.safe_load((REPO / "examples" / f"{example}.yaml").read_text())
    spec["models"][0]["steps"] = [0, 64]  # what the tests' small pico build has
    plan, summary, store = run_inline(spec, tmp_path, pico_hub, REPO / "examples")
    assert summary.cells_failed == 0
    rows = {
        (m, st, layer, metric): v
        for m, st, layer, metric, v in store.query(
            "SELECT model, step, layer, metric, value FROM results"
        ).iter_rows()
    }
    folder, _ = fetch_snapshot("pico/pico-s", "step64", pico_hub, local_only=True)
    model = load_model(folder, "float32", "cpu")
    if example == "residual_norm":
        tokens = torch.from_numpy(plan.input_sets["pico/pico-s"]["heldout-prose"].token_ids)
        with torch.no_grad():
            last = model(input_ids=tokens, output_hidden_states=True).hidden_states[-1]
        norms = np.linalg.norm(last[:, 1:].double().numpy(), axis=-1)
        layer = model.config.num_hidden_layers
        got_mean = rows[("pico/pico-s", 64, layer, "norm_mean")]
        got_std = rows[("pico/pico-s", 64, layer, "norm_std")]
        np.testing.assert_allclose([got_mean, got_std], [norms.mean(), norms.std()], rtol=1e-5)
    else:  # a plain recomputation of the score's definition, one sequence at a time
        T, n = 24, 8
        generator = torch.Generator().manual_seed(0)
        from ckptlab.hub import load_tokenizer

        vocab = len(load_tokenizer(folder))
        segments = torch.randint(0, vocab, (n, T), generator=generator)
        firsts, seconds = [], []
        for s in segments:
            ids = torch.cat([s, s])[None]
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            firsts += [lp[j, ids[0, j + 1]].item() for j in range(T - 1)]
            seconds += [lp[j, ids[0, j + 1]].item() for j in range(T, 2 * T - 1)]
        expected = np.mean(seconds) - np.mean(firsts)
        got = rows[("pico/pico-s", 64, None, "induction_score")]
        assert got == pytest.approx(expected, abs=1e-4)
        assert 0 <= rows[("pico/pico-s", 64, None, "copy_accuracy")] <= 1


def test_a_plugin_that_cannot_travel_is_refused_before_submitting(tmp_path):
    # A namespace package (no __init__.py): Ray's py_modules and working_dir cannot carry it.
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "metric.py").write_text(COLLIDING.format(name="loose_metric"))
    spec = {
        "name": "loose",
        "plugins": ["loose.metric"],
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0]}],
        "analyses": [{"name": "loose_metric"}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert cli(["validate", "spec.yaml"], tmp_path).returncode == 0  # it runs here
    # Nothing listens on port 1: a one-line refusal here means nothing was sent.
    done = cli(["submit", "spec.yaml", "--address", "http://127.0.0.1:1"], tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "'loose' is a namespace package" in line and "cannot reach" not in line, line

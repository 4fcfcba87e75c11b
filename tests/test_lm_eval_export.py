"""``ckptlab export lm-eval``: one lm-eval-style JSON per (model, checkpoint, num_fewshot), in
the layout of Pythia's published evals, with every number equal to the stored rows.

The results DB is written through ckptlab's own writer (``ResultStore.write_unit``) with rows
shaped like the ``lm_eval`` analysis's. ``tests/data/pythia_eval_example.json`` is a trimmed
copy (six tasks of 81, the whole ``config``) of EleutherAI/pythia's
``evals/pythia-v1/pythia-160m/zero-shot/160m_step23000.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ckptlab.cli import app
from ckptlab.lm_eval_export import _metrics, label, relative_path, shot_folder
from ckptlab.results import ResultStore
from ckptlab.rows import CellRow, CheckpointRow, MetricRow

PYTHIA_EXAMPLE = Path(__file__).parent / "data" / "pythia_eval_example.json"
MODELS = ("EleutherAI/pythia-160m", "EleutherAI/pythia-410m")
STEPS = (0, 1000, 143000)
TASKS = {  # lm-eval 0.4's metric names, filter suffix dropped
    "arc_easy": ("acc", "acc_norm"),
    "lambada_openai": ("perplexity", "acc"),
}
EXTRA_TOP_LEVEL = {"n-shot", "n-samples", "lm_eval_version", "ckptlab"}
# What HFLM's own model info would say: it must never reach the export's config.
HFLM_INFO = {"model_revision": "main", "model_sha": "hflm0000"}


def _sha(model: str, step: int) -> str:
    return hashlib.sha1(f"{model}@{step}".encode()).hexdigest()


def _params(limit: int | None, shots: int) -> str:
    context = {
        "lm_eval_version": "0.4.13",
        "tasks": {t: {"version": 1.0, "config_sha256": "c" * 64} for t in TASKS},
        "model_info": HFLM_INFO,
    }
    params = {"tasks": sorted(TASKS), "num_fewshot": shots, "limit": limit, "batch_size": 8}
    return json.dumps(params | {"context": context}, sort_keys=True)


def _unit(store, run_id, model, step, key, shots=0, limit=None, tasks=TASKS, base=0.0):
    """One checkpoint's lm_eval cell, as the analysis stores it: task-level rows, their
    stderrs, n_docs, and per-document rows that the export leaves out."""
    sha = _sha(model, step)
    params = _params(limit, shots)
    cell = CellRow(key, sha, "lm_eval", 1, params, key[-6:], None, "cuda:0", "bfloat16", 1.0)
    metrics, value = [], base + MODELS.index(model) * 0.1 + step / 1e6 + shots / 100
    for t, task in enumerate(sorted(tasks)):
        for m, metric in enumerate(TASKS[task]):
            v = value + 0.01 * t + 0.001 * m
            metrics.append(MetricRow(key, None, metric, v, task=task, shots=shots))
            metrics.append(MetricRow(key, None, f"{metric}_stderr", v / 50, task=task, shots=shots))
        docs = float(limit or 2000 + t)
        metrics.append(MetricRow(key, None, "n_docs", docs, task=task, shots=shots))
        for doc in range(2):  # per-document rows
            metrics.append(MetricRow(key, None, "doc_acc", 1.0, item=doc, task=task, shots=shots))
    checkpoint = CheckpointRow(model, f"step{step}", step, sha, "pythia", label(model), 0)
    store.write_unit(run_id, checkpoint, [cell], metrics, [])
    return key


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """Run A (spec 'evals'): 2 models x 3 steps, zero-shot, and one five-shot cell; a
    saturation cell too. Run B (spec 'evals-limit', later): pythia-160m step1000's arc_easy
    again with limit=10, a different cell for the same (model, step, task, shots)."""
    path = tmp_path_factory.mktemp("lm_eval_export") / "r.duckdb"
    store = ResultStore(path)
    store.ensure_schema()
    store.start_run("run-a-0001", "evals", "h", "name: evals", "code")
    keys = []
    for model in MODELS:
        for step in STEPS:
            keys.append(_unit(store, "run-a-0001", model, step, f"a-{model[-4:]}-{step}"))
    keys.append(_unit(store, "run-a-0001", MODELS[0], 143000, "a-5shot", shots=5))
    sha = _sha(MODELS[1], 0)
    store.write_unit(
        "run-a-0001",
        CheckpointRow(MODELS[1], "step0", 0, sha, "pythia", "410m", 0),
        [CellRow("sat", sha, "saturation", 1, "{}", "p", None, "cpu", "float32", 0.0)],
        [MetricRow("sat", None, "cross_entropy", 9.0)],
        [],
    )
    store.write_run_cells("run-a-0001", [*keys, "sat"])
    store.finish_run("run-a-0001", "done", len(keys) + 1, 0, 0, None)
    store.start_run("run-b-0002", "evals-limit", "h2", "name: evals-limit", "code")
    b = _unit(
        store, "run-b-0002", MODELS[0], 1000, "b-limit", limit=10, tasks=["arc_easy"], base=0.5
    )
    store.write_run_cells("run-b-0002", [b])
    store.finish_run("run-b-0002", "done", 1, 0, 0, None)
    return path


def _export(db: Path, out: Path, *args: str):
    return CliRunner().invoke(app, ["export", "lm-eval", "--db", str(db), "--out", str(out), *args])


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*.json")}


def _expected_rows(db: Path) -> dict:
    """(model, revision, shots, task) -> {metric: value} of the latest cell, read directly."""
    rows = ResultStore(db).query(
        "SELECT model, revision, shots, task, metric, value FROM results"
        " WHERE analysis = 'lm_eval' AND item IS NULL AND metric NOT LIKE 'doc%'"
        " QUALIFY computed_at = max(computed_at) OVER (PARTITION BY model, revision, shots, task)"
    )
    expected: dict = {}
    for model, revision, shots, task, metric, value in rows.iter_rows():
        expected.setdefault((model, revision, shots, task), {})[metric] = value
    return expected


def test_export_writes_pythia_layout_with_the_stored_numbers(db, tmp_path):
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    out = tmp_path / "evals"
    result = _export(db, out)
    assert result.exit_code == 0, result.output
    assert f"wrote 7 files (2 models, 6 checkpoints) under {out}" in result.stdout
    assert "pythia-160m step1000 arc_easy 0-shot: 2 cells, used the latest" in result.stderr
    assert _files(out) == {
        *(f"pythia-{s}/zero-shot/{s}_step{n}.json" for s in ("160m", "410m") for n in STEPS),
        "pythia-160m/five-shot/160m-5shot_step143000.json",
    }
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # read-only

    expected, seen = _expected_rows(db), 0
    for path in sorted(out.rglob("*.json")):
        document = json.loads(path.read_text())
        ours = document["ckptlab"]
        model, revision = ours["model"], ours["revision"]
        shots = document["config"]["num_fewshot"]
        for task, metrics in document["results"].items():
            stored = dict(expected[(model, revision, shots, task)])
            assert document["n-samples"][task]["effective"] == stored.pop("n_docs")
            assert metrics == stored  # every number, exactly
            assert document["n-shot"][task] == shots
            assert document["versions"][task] == 1.0
            seen += 1
        # The checkpoint is ckptlab's, never what HFLM recorded.
        sha = _sha(model, ours["step"])
        assert document["config"]["model_args"] == f"pretrained={model},revision={revision}"
        assert document["config"]["model_revision"] == revision == f"step{ours['step']}"
        assert document["config"]["model_sha"] == ours["commit_sha"] == sha
        assert HFLM_INFO["model_sha"] not in json.dumps(document["config"])
        assert document["lm_eval_version"] == "0.4.13"
        assert document["config"]["device"] == "cuda:0"
    assert seen == len(expected) == 2 * 3 * 2 + 2  # and the five-shot cell's two tasks

    # A second export writes the same bytes.
    first = {p: (out / p).read_bytes() for p in _files(out)}
    assert _export(db, out).exit_code == 0
    assert {p: (out / p).read_bytes() for p in _files(out)} == first


def test_latest_cell_wins_and_the_other_is_listed(db, tmp_path):
    out = tmp_path / "evals"
    assert _export(db, out).exit_code == 0
    document = json.loads((out / "pythia-160m/zero-shot/160m_step1000.json").read_text())
    ours = document["ckptlab"]
    assert ours["cells"]["b-limit"]["tasks"] == ["arc_easy"]
    assert ours["cells"]["a-160m-1000"]["tasks"] == ["lambada_openai"]
    assert [(s["task"], s["cell_key"], s["instead_of"]) for s in ours["superseded"]] == [
        ("arc_easy", "a-160m-1000", "b-limit")
    ]
    assert ours["superseded"][0]["params"]["limit"] is None
    # The two tasks come from cells with different limits: config says neither.
    assert document["config"]["limit"] is None and ours["differs_across_cells"] == ["limit"]
    assert document["n-samples"]["arc_easy"] == {"effective": 10}  # limited: original unknown
    assert document["n-samples"]["lambada_openai"] == {"effective": 2001, "original": 2001}
    assert document["results"]["arc_easy"]["acc"] == pytest.approx(0.5 + 1000 / 1e6)


def test_layout_follows_a_real_pythia_file(db, tmp_path):
    pythia = json.loads(PYTHIA_EXAMPLE.read_text())
    out = tmp_path / "evals"
    assert _export(db, out).exit_code == 0
    ours = json.loads((out / "pythia-160m/zero-shot/160m_step0.json").read_text())

    assert set(pythia) <= set(ours) and set(ours) - set(pythia) == EXTRA_TOP_LEVEL
    assert list(ours)[:3] == list(pythia)  # results, versions, config first, as theirs
    config_keys = set(pythia["config"]) - {"no_cache", "description_dict"}  # old-harness only
    assert config_keys <= set(ours["config"])

    def pythia_style(metrics: dict) -> bool:
        """Metric names without lm-eval 0.4's ',filter'; each name then its _stderr."""
        names = list(metrics)
        pairs = [names[i : i + 2] for i in range(0, len(names), 2)]
        return all("," not in n for n in names) and all(
            len(p) == 2 and p[1] == f"{p[0]}_stderr" for p in pairs
        )

    assert all(pythia_style(m) for m in pythia["results"].values())
    assert all(pythia_style(m) for m in ours["results"].values())
    assert list(ours["results"]["arc_easy"]) == list(pythia["results"]["arc_easy"])
    # lambada_openai: the old harness's "ppl" is lm-eval 0.4's "perplexity" (stored as given).
    assert set(ours["results"]["lambada_openai"]) == {
        "perplexity",
        "perplexity_stderr",
        "acc",
        "acc_stderr",
    }
    assert all(isinstance(v, int | float) for v in pythia["versions"].values())


PYTHIA = "EleutherAI/pythia"


@pytest.mark.parametrize(
    "model, revision, step, shots, path",
    [  # the first four are real paths under EleutherAI/pythia's evals/pythia-v1/
        (f"{PYTHIA}-160m", "step23000", 23000, 0, "pythia-160m/zero-shot/160m_step23000"),
        (f"{PYTHIA}-160m", "step13000", 13000, 5, "pythia-160m/five-shot/160m-5shot_step13000"),
        (f"{PYTHIA}-1.4b-deduped", "step0", 0, 0,
         "pythia-1.4b-deduped/zero-shot/1.4b-deduped_step0"),
        (f"{PYTHIA}-12b-deduped", "step3000", 3000, 5,
         "pythia-12b-deduped/five-shot/12b-deduped-5shot_step3000"),
        ("allenai/OLMo-1B-hf", "step20000-tokens84B", 20000, 0,
         "OLMo-1B-hf/zero-shot/1B-hf_step20000-tokens84B"),
        ("pico/pico-xs", "step64", 64, 2, "pico-xs/two-shot/xs-2shot_step64"),
    ],
)  # fmt: skip
def test_file_names_are_pythias(model, revision, step, shots, path):
    folder = model.rsplit("/", 1)[-1]
    assert relative_path(model, revision, step, shots, folder) == Path(f"{path}.json")


def test_metric_order_keeps_each_stderr_next_to_its_metric():
    names = ["exact_match_stderr/strict-match", "n_docs", "acc_stderr", "exact_match/flexible",
             "exact_match/strict-match", "acc", "exact_match_stderr/flexible"]  # fmt: skip
    rows = pl.DataFrame({"metric": names, "value": [float(i) for i in range(len(names))]})
    assert list(_metrics(rows)) == [
        "acc",
        "acc_stderr",
        "exact_match/flexible",
        "exact_match_stderr/flexible",
        "exact_match/strict-match",
        "exact_match_stderr/strict-match",
    ]


def test_shot_folders():
    assert [shot_folder(n) for n in (0, 5, 10, 25)] == [
        "zero-shot",
        "five-shot",
        "ten-shot",
        "25-shot",
    ]


def test_selecting_spec_run_and_model(db, tmp_path):
    by_model = _export(db, tmp_path / "m", "--model", "pythia-410m")
    assert by_model.exit_code == 0, by_model.output
    assert _files(tmp_path / "m") == {f"pythia-410m/zero-shot/410m_step{n}.json" for n in STEPS}

    by_spec = _export(db, tmp_path / "s", "--spec", "evals-limit")
    assert by_spec.exit_code == 0, by_spec.output
    assert _files(tmp_path / "s") == {"pythia-160m/zero-shot/160m_step1000.json"}
    only = json.loads((tmp_path / "s/pythia-160m/zero-shot/160m_step1000.json").read_text())
    assert list(only["results"]) == ["arc_easy"] and only["config"]["limit"] == 10

    by_run = _export(db, tmp_path / "r", "--run", "run-a")  # a unique prefix
    assert by_run.exit_code == 0, by_run.output
    assert len(_files(tmp_path / "r")) == 7
    # Run A ended before run B: its 160m step1000 arc_easy is its own cell's.
    document = json.loads((tmp_path / "r/pythia-160m/zero-shot/160m_step1000.json").read_text())
    assert document["ckptlab"]["superseded"] == [] and document["config"]["limit"] is None


def _one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.output


def test_one_line_errors(db, tmp_path):
    out = tmp_path / "never"
    _one_line_error(_export(db, out, "--run", "nosuchrun"), 1, "no run 'nosuchrun'")
    _one_line_error(_export(db, out, "--run", "run-"), 1, "ambiguous")
    _one_line_error(_export(db, out, "--spec", "nosuch"), 1, "no run of spec 'nosuch'")
    _one_line_error(_export(db, out, "--model", "pythia-6.9b"), 1, "pythia-6.9b", "pythia-160m")
    _one_line_error(_export(db, out, "--spec", "evals", "--run", "run-a"), 2, "not both")
    _one_line_error(_export(tmp_path / "none.duckdb", out), 1, "no results database")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _one_line_error(_export(db, blocker), 1, "a-file")
    assert not out.exists()

    # A database with results, none of them lm_eval's.
    other = tmp_path / "other.duckdb"
    store = ResultStore(other)
    store.ensure_schema()
    store.start_run("r", "s", "h", "name: s", "code")
    sha = _sha("org/m", 0)
    store.write_unit(
        "r",
        CheckpointRow("org/m", "step0", 0, sha, None, None, None),
        [CellRow("k", sha, "saturation", 1, "{}", "p", None, "cpu", "float32", 0.0)],
        [MetricRow("k", None, "cross_entropy", 9.0)],
        [],
    )
    _one_line_error(_export(other, out), 1, "no lm_eval results", "run a spec with the lm_eval")
    assert not out.exists()

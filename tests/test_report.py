"""``ckptlab report``: figures and a self-contained HTML page from a real run's results, whose
plotted numbers are the database's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from ckptlab import report as report_module
from ckptlab.cli import app
from ckptlab.report import DPI, ReportError, pick_steps, render_report
from ckptlab.results import ResultStore
from ckptlab.rows import CellRow, CheckpointRow, FailureRow, MetricRow

SPEC = """
name: report
models:
  - suite: pico
    sizes: [xs, s]
    steps: {steps}
input_sets:
  - {{name: prose, builtin: pydoc_topics, num_sequences: 4, seq_len: 32}}
analyses:
  - name: saturation
  - name: anisotropy
  - name: singular_entropy
  - name: icl
    params:
      shots: [0, 1, 2]
      n_test: 8
      seeds: [0, 1]
      tasks:
        - {{data: category}}
        - {{data: category, variant: permuted_vocab}}
resources: {{cpus_per_worker: 1, batch_size: 4}}
"""
FIRST_STEPS, ALL_STEPS = [0, 4, 64], [0, 4, 64, 100]
ERROR = "RuntimeError: <injected> & failed"
EXPECTED = {
    "saturation",
    "lm_head_singular_entropy",
    "line__anisotropy__anisotropy",
    "line__anisotropy__anisotropy_pre_final_norm",
    "line__singular_entropy__spectral_entropy",
    "line__singular_entropy__singular_entropy_sq",
    "line__singular_entropy__spectral_entropy_sq",
    "line__singular_entropy__effective_rank",
    "heatmap__anisotropy__anisotropy",
    "icl__pico-xs",
    "icl__pico-s",
    "correlation__pico-xs",
    "correlation_scatter__pico-xs",
    "correlation__pico-s",
    "correlation_scatter__pico-s",
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, pico_hub, ray_session):
    """Run 1 over steps 0, 4, 64; run 2 of the same spec adds step 100 (the rest cached)."""
    root = tmp_path_factory.mktemp("report")
    db, uri = root / "r.duckdb", f"sqlite:///{root / 'mlflow.db'}"
    runner = CliRunner()
    for steps in (FIRST_STEPS, ALL_STEPS):
        spec = root / "report.yaml"
        spec.write_text(SPEC.format(steps=steps))
        result = runner.invoke(app, ["run", str(spec), "--db", str(db), "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
    store = ResultStore(db)
    first, second = store.query("SELECT run_id FROM runs ORDER BY started_at")["run_id"]
    store.write_failures(  # a failed cell, as the runner records one
        second, [FailureRow("pico/pico-s", "step100", 100, "abc", "anisotropy", None, ERROR, "k")]
    )
    return root, spec, db, first, second


def _manifest(out: Path) -> dict:
    return {f["name"]: f for f in json.loads((out / "figures.json").read_text())["figures"]}


def test_report_writes_valid_figures_and_a_self_contained_page(two_runs):
    root, spec, db, *_ = two_runs
    out = root / "out"
    result = CliRunner().invoke(app, ["report", str(spec), "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(EXPECTED)} figures" in result.output
    figures = _manifest(out)
    assert set(figures) == EXPECTED
    for name, figure in figures.items():
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
        with Image.open(out / f"{name}.png") as image:
            image.verify()
        with Image.open(out / f"{name}.png") as image:
            width, height = figure["figsize"]
            assert image.format == "PNG" and image.size == (round(width * DPI), round(height * DPI))
    with Image.open(out / "saturation.png") as image:
        assert image.size == (640, 400)

    page = (out / "index.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(EXPECTED) == page.count("<img ")
    assert all(re.fullmatch(r"data:image/png;base64,[A-Za-z0-9+/]+=*", s) for s in sources)
    text = re.sub(r"base64,[A-Za-z0-9+/]+=*", "base64,", page)  # base64 may spell 'href'
    assert not re.search(r"http|href|url\(|@import|<link|<script", text, re.I)
    failures = re.search(r'<table class="failures">(.*?)</table>', page, re.S).group(1)
    assert "RuntimeError: &lt;injected&gt; &amp; failed" in failures and "pico/pico-s" in failures
    assert "<th>error</th>" in failures and "<th>analysis</th>" in failures


def test_plotted_numbers_are_the_database_values(two_runs):
    root, _, db, *_ = two_runs
    out = root / "data"
    written = render_report(db, out, spec_name="report")
    assert {p.name for p in written} >= {"index.html", "saturation.png", "saturation.svg"}
    figures = _manifest(out)
    store = ResultStore(db)

    def lines(name: str) -> dict:
        return {
            (line["model"], x): y
            for line in figures[name]["lines"]
            for x, y in zip(line["steps"], line["y"], strict=True)
        }

    expected = store.query(
        "SELECT model, step, value FROM results WHERE metric = 'cross_entropy'"
    ).rows()
    assert lines("saturation") == {(m, s): v for m, s, v in expected}
    assert len(expected) == 2 * len(ALL_STEPS)

    last_layer = store.query(
        "SELECT model, step, value FROM results WHERE metric = 'anisotropy'"
        " QUALIFY layer = max(layer) OVER (PARTITION BY model)"
    ).rows()
    assert lines("line__anisotropy__anisotropy") == {(m, s): v for m, s, v in last_layer}
    assert {line["layer"] for line in figures["line__anisotropy__anisotropy"]["lines"]} == {2}

    cells = store.query(
        "SELECT model, layer, step, value FROM results WHERE metric = 'anisotropy'"
    ).rows()
    drawn = {}
    for panel in figures["heatmap__anisotropy__anisotropy"]["panels"]:
        assert panel["steps"] == ALL_STEPS and panel["layers"] == [0, 1, 2]
        for layer, row in zip(panel["layers"], panel["values"], strict=True):
            for step, value in zip(panel["steps"], row, strict=True):
                drawn[(panel["model"], layer, step)] = value
    assert drawn == {(m, k, s): v for m, k, s, v in cells}

    icl = store.query(
        "SELECT model, task, step, shots, avg(value) FILTER (metric = 'accuracy') AS acc,"
        " avg(value) FILTER (metric = 'chance_accuracy') AS chance,"
        " avg(value) FILTER (metric = 'bow_accuracy') AS bow, count(DISTINCT task_seed) AS seeds"
        " FROM results WHERE analysis = 'icl' GROUP BY ALL"
    )
    by_key = {(m, t, s, k): (a, c, b, n) for m, t, s, k, a, c, b, n in icl.rows()}
    for model in ("pico/pico-xs", "pico/pico-s"):
        figure = figures[f"icl__{model.split('/')[1]}"]
        assert [p["task"] for p in figure["panels"]] == ["category", "category/permuted_vocab"]
        for panel in figure["panels"]:
            assert [line["step"] for line in panel["lines"]] == pick_steps(ALL_STEPS)
            for line in panel["lines"]:
                assert line["shots"] == [0, 1, 2] and line["seeds"] == [2, 2, 2]
                for shots, accuracy in zip(line["shots"], line["accuracy"], strict=True):
                    want = by_key[(model, panel["task"], line["step"], shots)]
                    assert accuracy == pytest.approx(want[0], abs=1e-12)
                    assert panel["chance"] == pytest.approx(want[1])
            bow = (
                icl.filter((pl.col("model") == model) & (pl.col("task") == panel["task"]))
                .group_by("shots")
                .agg(pl.col("bow").mean())
                .sort("shots")
            )
            assert panel["bow"]["shots"] == bow["shots"].to_list()
            assert panel["bow"]["accuracy"] == pytest.approx(bow["bow"].to_list(), abs=1e-12)


def test_a_run_report_covers_the_cells_that_existed_at_its_end(two_runs, monkeypatch):
    root, _, db, first, second = two_runs
    runner = CliRunner()
    # Run 1 computed steps 0, 4, 64; run 2 only step 100 but found the rest: both are its.
    for run, steps, failed in ((first, FIRST_STEPS, False), (second, ALL_STEPS, True)):
        out = root / f"run-{run[:8]}"
        result = runner.invoke(
            app, ["report", "--run", run[:8], "--db", str(db), "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        saturation = _manifest(out)["saturation"]
        assert all(line["steps"] == steps for line in saturation["lines"])
        assert ("&lt;injected&gt;" in (out / "index.html").read_text()) is failed

    # A figure that cannot be drawn is skipped with a note; x = tokens plots tokens_seen.
    def broken(*args, **kwargs):
        raise ValueError("no can do")

    monkeypatch.setattr(report_module.build, "heatmap_figure", broken)  # where it is called
    out = root / "partial"
    written = render_report(db, out, spec_name="report", x="tokens")
    page = (out / "index.html").read_text()
    assert "not drawn (ValueError: no can do)" in page
    assert page.count("<img ") == len(EXPECTED) - 1
    tokens = dict(
        ResultStore(db).query("SELECT DISTINCT step, tokens_seen FROM checkpoints").rows()
    )
    for line in _manifest(out)["saturation"]["lines"]:
        assert line["x"] == [tokens[step] for step in line["steps"]] and line["x"][-1] > 100
    assert not (out / "heatmap__anisotropy__anisotropy.png").exists()
    assert sum(p.suffix == ".png" for p in written) == len(EXPECTED) - 1


def test_nothing_to_select(two_runs, tmp_path):
    _, _, db, *_ = two_runs
    copy = tmp_path / "r.duckdb"
    shutil.copy(db, copy)
    ResultStore(copy).start_run("empty0", "empty", "h", "name: empty", "code")  # no cells
    written = render_report(copy, tmp_path / "none", spec_name="empty")
    assert [p.name for p in written] == ["figures.json", "index.html"]
    page = (tmp_path / "none" / "index.html").read_text()
    assert "no rows selected" in page and "no failures" in page
    with pytest.raises(ReportError, match="no run 'nope'"):
        render_report(copy, tmp_path / "x", run_id="nope")
    with pytest.raises(ReportError, match=r"no run of spec 'typo' .* \(specs: empty, report\)"):
        render_report(copy, tmp_path / "x", spec_name="typo")
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--db", str(copy)])  # two specs: which one?
    assert result.exit_code == 1 and "name a spec or a run" in result.output
    result = runner.invoke(app, ["report", "--db", str(tmp_path / "missing.duckdb")])
    assert result.exit_code == 1 and "no results database" in result.output


def test_tokens_fall_back_to_steps_where_unknown(tmp_path):
    """A checkpoint without tokens_seen (a hub repo the catalog knows nothing of): x = step."""
    store = ResultStore(tmp_path / "r.duckdb")
    store.ensure_schema()
    store.start_run("r1", "s", "h", "name: s", "code")
    for step, tokens in ((0, 0), (10, None)):
        sha = f"c{step}"
        store.write_unit(
            "r1",
            CheckpointRow("org/m", f"step{step}", step, sha, None, None, None, tokens_seen=tokens),
            [CellRow(f"k{step}", sha, "saturation", 1, "{}", "p", None, "cpu", "float32", 0.0)],
            [MetricRow(f"k{step}", None, "cross_entropy", 5.0 - step / 10)],
            [],
        )
    out = tmp_path / "out"
    render_report(store.path, out, spec_name="s", x="tokens")
    assert (
        "tokens_seen is unknown for 1 checkpoint(s) (e.g. org/m@step10)"
        in (out / "index.html").read_text()
    )
    (line,) = _manifest(out)["saturation"]["lines"]
    assert line["x"] == [0, 10] and line["y"] == [5.0, 4.0] and line["label"] == "m"


def test_pick_steps_spreads_over_the_order():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, *range(100, 1001, 100)]
    assert pick_steps(steps) == [0, 8, 100, 600, 1000]
    assert pick_steps([3, 1]) == [1, 3]


def test_a_spec_reports_the_cells_it_shares_with_another_specs_run(tmp_path, pico_hub):
    """A cell computed first by spec a's run is spec b's too when b plans it: b's report has
    it (a cell keeps the run_id of the run that computed it)."""
    from test_plugins import run_inline

    from ckptlab.report import resolve_selection, select_rows

    base = {
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 100]}],
        "input_sets": [{"name": "p", "builtin": "pydoc_topics", "num_sequences": 4}],
    }
    for name, analyses in (("a", ["saturation"]), ("b", ["saturation", "anisotropy"])):
        run_inline(
            {"name": name, **base, "analyses": [{"name": n} for n in analyses]}, tmp_path, pico_hub
        )
    db = tmp_path / "results.duckdb"
    store = ResultStore(db)
    computed_by = dict(
        store.query("SELECT DISTINCT analysis, spec_name FROM results ORDER BY analysis").rows()
    )
    assert computed_by == {"anisotropy": "b", "saturation": "a"}  # b reused a's cells
    b_rows = select_rows(store, resolve_selection(store, "b"))
    assert set(b_rows["analysis"]) == {"saturation", "anisotropy"}
    assert set(select_rows(store, resolve_selection(store, "a"))["analysis"]) == {"saturation"}

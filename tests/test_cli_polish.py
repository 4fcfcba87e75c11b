"""The CLI's finish: progress, --version, schema, --json summaries, exit codes, and
``ckptlab.load_results`` with its documented example (docs/python-api.md)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

import ckptlab
from ckptlab.cli import app
from ckptlab.code_version import code_version
from ckptlab.orchestrator.progress import RunProgress, remaining_time

REPO = Path(__file__).resolve().parent.parent

SPEC = """
name: polish
models:
  - suite: pico
    sizes: [xs]
    steps: {steps}
input_sets:
  - {{name: heldout-prose, builtin: pydoc_topics, split: heldout, num_sequences: 2, seq_len: 16}}
analyses:
  - name: saturation
  - name: anisotropy
"""
FIRST_STEPS, MORE_STEPS = [0, 1, 100], [0, 1, 2, 100]


def count(db: Path, sql: str, params: list | None = None) -> int:
    """One number straight from DuckDB, without ckptlab's code."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchone()[0]


@pytest.fixture(scope="module")
def polish(tmp_path_factory, pico_hub, ray_session):
    """A run on a terminal-less stdout (as in CI), then a --json run that adds one step."""
    root = tmp_path_factory.mktemp("polish")
    first, more = root / "first.yaml", root / "more.yaml"
    first.write_text(SPEC.format(steps=FIRST_STEPS))
    more.write_text(SPEC.format(steps=MORE_STEPS))
    db, uri = root / "r.duckdb", f"sqlite:///{root / 'mlflow.db'}"
    runner = CliRunner()
    common = ["--db", str(db), "--tracking-uri", uri]
    human = runner.invoke(app, ["run", str(first), *common])
    planned = runner.invoke(app, ["plan", str(more), "--db", str(db), "--json"])
    as_json = runner.invoke(app, ["run", str(more), *common, "--json"])
    return {
        "runner": runner,
        "root": root,
        "first": first,
        "more": more,
        "db": db,
        "common": common,
        "human": human,
        "planned": planned,
        "json": as_json,
    }


# ----------------------------------------------------------------------------- progress


def test_progress_in_a_log_ends_with_every_checkpoint_and_cell(polish):
    human = polish["human"]
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    # One line per finished unit, each with the running count; no bar redraws in a log.
    units = [line for line in lines if re.match(r"^\s+pico/pico-xs@step\d+: 2/2 cells", line)]
    assert len(units) == len(FIRST_STEPS)
    assert [re.search(r"\((\d+)/3 checkpoints", line).group(1) for line in units] == [
        "1",
        "2",
        "3",
    ]
    assert "\r" not in human.stdout and "\x1b[" not in human.stdout
    total = [line for line in lines if line.startswith("polish: ")]
    assert len(total) == 1 and total[0].startswith("polish: 3/3 checkpoints · 6/6 cells in ")
    assert lines.index(total[0]) > max(lines.index(line) for line in units)


def test_progress_on_a_terminal_is_one_bar_that_reaches_the_total():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, color_system=None)
    with RunProgress(console, "sweep", 3, 12) as progress:
        for step in (0, 1, 2):
            progress.unit_done(4, f"  m@step{step}: 4/4 cells, 0.10s on cpu ok")
        assert len(progress.progress.tasks) == 1  # no per-checkpoint bars
    text = out.getvalue()
    assert "3/3 checkpoints · 12/12 cells · ETA 0:00:00" in text
    assert text.count("m@step1: 4/4 cells") == 1  # printed once, above the bar
    assert "(3/3 checkpoints" not in text  # the counts are the bar's on a terminal


def test_eta_is_the_average_pace_so_far():
    assert remaining_time(None, 0, 10) is None
    assert remaining_time(30.0, 0, 10) is None  # nothing finished: unknown
    assert remaining_time(30.0, 3, 12) == pytest.approx(90.0)
    assert remaining_time(30.0, 12, 12) == 0.0


# ------------------------------------------------------------------------ --json output


def test_plan_json_matches_the_database(polish):
    planned, db = polish["planned"], polish["db"]
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)  # stdout is the JSON object and nothing else
    assert plan["spec"] == "polish" and len(plan["spec_hash"]) == 64
    stored = count(  # when the plan was made: the first run's cells
        db,
        "SELECT count(*) FROM cells JOIN checkpoints USING (commit_sha) WHERE step IN (0, 1, 100)",
    )
    assert (plan["checkpoints"], plan["cells_total"]) == (4, 8)
    assert (plan["cells_done"], plan["cells_todo"]) == (stored, 8 - stored) == (6, 2)
    assert plan["checkpoints_todo"] == 1 and plan["unresolved"] == []
    units = {u["step"]: u for u in plan["units"]}
    assert sorted(units) == MORE_STEPS
    assert [units[s]["missing"] for s in MORE_STEPS] == [0, 0, 2, 0]
    with duckdb.connect(str(db), read_only=True) as con:
        commits = dict(con.execute("SELECT revision, commit_sha FROM checkpoints").fetchall())
    for step in FIRST_STEPS:
        assert units[step]["commit"] == commits[f"step{step}"]
        assert units[step]["revision"] == f"step{step}" and units[step]["model"] == "pico/pico-xs"


def test_run_json_matches_the_database(polish):
    result, db = polish["json"], polish["db"]
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    summary = json.loads(result.stdout)
    run_id = summary["run_id"]
    assert summary["db"] == str(db) and summary["spec"] == "polish"
    assert summary["checkpoints"] == 4 and summary["checkpoints_run"] == 1
    assert (
        summary["cells_computed"]
        == count(db, "SELECT count(*) FROM cells WHERE run_id = ?", [run_id])
        == 2
    )
    assert summary["cells_cached"] == 6 and summary["cells_failed"] == 0
    assert summary["failures"] == [] and summary["lineage_pending"] is None
    assert summary["metric_rows"] == count(
        db, "SELECT count(*) FROM metrics JOIN cells USING (cell_key) WHERE run_id = ?", [run_id]
    )
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT cells_computed, cells_cached, cells_failed, mlflow_run_id FROM runs"
            " WHERE run_id = ?",
            [run_id],
        ).fetchone()
    assert row == (2, 6, 0, summary["mlflow_run_id"])
    assert summary["seconds"] > 0
    # The progress went to stderr: the step's line and the totals.
    assert "pico/pico-xs@step2: 2/2 cells" in result.stderr
    assert "polish: 1/1 checkpoints · 2/2 cells" in result.stderr


def test_run_json_with_nothing_to_do(polish):
    runner, db = polish["runner"], polish["db"]
    again = runner.invoke(app, ["run", str(polish["more"]), *polish["common"], "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["run_id"] is None and summary["cells_computed"] == 0
    assert (
        summary["cells_cached"] == summary["cells_total"] == count(db, "SELECT count(*) FROM cells")
    )
    assert "Nothing to compute" in again.stderr


def test_json_errors_stay_on_stderr_with_their_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nmodels: [{suite: pico, sizes: [xxl]}]\nanalyses: [{name: saturation}]\n"
    )
    for command in ("plan", "run"):
        result = CliRunner().invoke(
            app, [command, str(bad), "--json", "--db", str(tmp_path / "r.duckdb")]
        )
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and "error:" in result.stderr


# ------------------------------------------------------------------- version and schema


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"ckptlab {code_version()}\n"
    assert result.stdout.startswith(f"ckptlab {ckptlab.__version__}")


def test_schema_validates_every_shipped_spec_and_rejects_unknown_fields():
    jsonschema = pytest.importorskip("jsonschema")
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "ckptlab spec" and schema["description"]
    assert schema["additionalProperties"] is False
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    shipped = sorted((REPO / "specs").glob("*.yaml"))
    assert len(shipped) >= 3
    for path in shipped:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path.name}: {errors}"
    demo = yaml.safe_load((REPO / "specs" / "demo.yaml").read_text())
    for where in ("top", "models", "resources", "analyses"):
        spec = json.loads(json.dumps(demo))
        target = {"top": spec, "models": spec["models"][0], "resources": spec["resources"]}.get(
            where, spec["analyses"][0]
        )
        target["bogus_field"] = 1
        assert not validator.is_valid(spec), where


# ----------------------------------------------------------------------------- exit codes


def test_exit_codes(tmp_path, monkeypatch, pico_hub):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [{suite: pico, sizes: [xs]}]\nanalyses: [{name: nope}]\n")
    good = tmp_path / "good.yaml"
    good.write_text(SPEC.format(steps=[64]))
    db = str(tmp_path / "r.duckdb")
    assert runner.invoke(app, ["validate", str(bad)]).exit_code == 2
    assert runner.invoke(app, ["validate", str(tmp_path / "missing.yaml")]).exit_code == 2
    assert runner.invoke(app, ["plan", str(good), "--no-such-option"]).exit_code == 2
    assert runner.invoke(app, ["query", "SELECT 1", "--db", db, "-f", "parquet"]).exit_code == 2
    assert runner.invoke(app, ["query", "SELECT 1", "--db", db]).exit_code == 1  # no DB
    assert runner.invoke(app, ["run", str(good), "--address", "no such:x"]).exit_code == 2

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ckptlab.orchestrator.runner.run_plan", interrupted)
    stopped = runner.invoke(app, ["run", str(good), "--db", db, "--executor", "inline"])
    assert stopped.exit_code == 130 and "interrupted" in stopped.stderr
    monkeypatch.setattr("ckptlab.cli.runs.plan_of", interrupted)  # Ctrl-C while planning
    assert runner.invoke(app, ["plan", str(good), "--db", db]).exit_code == 130


# ------------------------------------------------------------------------- load_results


RESULT_ORDER = ["cell_key", "metric", "layer", "item", "task", "shots", "task_seed"]


def independent(db: Path, where: str = "") -> pl.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        table = con.sql(f"SELECT * FROM results {where}").to_arrow_table()
    return pl.from_arrow(table).sort(RESULT_ORDER, nulls_last=False)


def same(frame: pl.DataFrame, expected: pl.DataFrame) -> bool:
    return frame.sort(RESULT_ORDER, nulls_last=False).equals(expected)


def test_load_results_filters_like_sql(polish):
    db = polish["db"]
    everything = ckptlab.load_results(db)
    assert everything.height == count(db, "SELECT count(*) FROM results") > 0
    assert same(everything, independent(db))
    picked = ckptlab.load_results(db, analysis="anisotropy", layer=[0, 2], step=[1, 100])
    expected = independent(
        db, "WHERE analysis = 'anisotropy' AND layer IN (0, 2) AND step IN (1, 100)"
    )
    # 2 steps x (anisotropy at 0 and 2, anisotropy_pre_final_norm at 2 = L)
    assert picked.height == expected.height == 2 * 3 and same(picked, expected)
    scalars = ckptlab.load_results(str(db), model="pico/pico-xs", step=2, layer=None)
    assert same(
        scalars, independent(db, "WHERE model = 'pico/pico-xs' AND step = 2 AND layer IS NULL")
    )
    assert "cross_entropy" in set(scalars["metric"]) and scalars["layer"].is_null().all()
    assert ckptlab.load_results(db, step=[]).height == 0
    assert ckptlab.load_results(db, step=[]).columns == everything.columns
    steps = ckptlab.load_results(db, metric="cross_entropy")["step"].to_list()
    assert steps == sorted(steps) == MORE_STEPS  # ordered by model, step, ...
    with pytest.raises(ValueError, match=r"unknown filter\(s\) modle.*columns are: model, "):
        ckptlab.load_results(db, modle="pico/pico-xs")


def test_load_results_defaults_to_the_home_database(polish, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTLAB_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no results database"):
        ckptlab.load_results()
    shutil.copy(polish["db"], tmp_path / "results.duckdb")
    assert ckptlab.load_results().height == count(polish["db"], "SELECT count(*) FROM results")


def test_import_ckptlab_is_light():
    code = (
        "import sys, ckptlab; heavy = {'torch', 'ray', 'duckdb', 'polars', 'transformers', "
        "'mlflow', 'ckptlab.results'} & set(sys.modules); print(sorted(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_python_api_doc_runs(polish, tmp_path, monkeypatch):
    """docs/python-api.md's code blocks, in order, on the test database (pico-xs)."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("CKPTLAB_HOME", str(tmp_path))
    shutil.copy(polish["db"], tmp_path / "results.duckdb")
    monkeypatch.chdir(tmp_path)
    text = (REPO / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3
    code = "\n".join(blocks)
    assert 'MODEL = "pico/pico-m"' in code
    namespace: dict = {}
    exec(
        compile(code.replace('MODEL = "pico/pico-m"', 'MODEL = "pico/pico-xs"'), "doc", "exec"),
        namespace,
    )
    curves = namespace["curves"]
    assert curves["step"].to_list() == MORE_STEPS
    assert curves.columns == ["step", "0", "1", "2"]  # pico-xs: embeddings + 2 layers
    expected = count(
        polish["db"],
        "SELECT value FROM results WHERE model = 'pico/pico-xs' AND metric = 'anisotropy'"
        " AND step = 100 AND layer = 1",
    )
    assert curves.filter(pl.col("step") == 100)["1"].item() == expected
    assert (tmp_path / "anisotropy_by_layer.png").stat().st_size > 1000
    assert namespace["by_model"].columns == ["step", "pico/pico-xs"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "a"], "--seeds: expected comma-separated seed numbers (e.g. 0,1,2), got 'a'"),
        (["--seeds", "0,12"], "--seeds: pico seeds are 0-9, got 12"),
        (["--max-step", "0"], "--max-step: at least 1, got 0"),
    ],
)
def test_pico_build_refuses_bad_options_in_one_line(args, message):
    result = CliRunner().invoke(app, ["pico", "build", *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}"]


@pytest.mark.parametrize(("max_step", "quarters"), [(8, (2, 4, 6, 8)), (7, (2, 4, 6, 7))])
def test_pico_build_in_a_log_says_where_it_is(tmp_path, monkeypatch, max_step, quarters):
    """Not on a terminal (a log file, CI) there is no live bar: a line per quarter of the
    steps, then the size's summary."""
    monkeypatch.setenv("CKPTLAB_HOME", str(tmp_path / "home"))
    args = ["pico", "build", "--sizes", "xs", "--max-step", str(max_step)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [
        line for line in result.output.splitlines() if line.startswith("training pico/pico-xs:")
    ]
    assert [line.split(" (")[0] for line in lines] == [
        f"training pico/pico-xs: step {step}/{max_step}" for step in quarters
    ]
    assert "pico/pico-xs: " in result.output and "train loss" in result.output

"""The CLI: run / rerun / plan / query, and reading while another process writes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import polars as pl
import pytest
from typer.testing import CliRunner

from ckptlab.cli import app
from ckptlab.results import ResultStore

SPEC = """
name: cli
models:
  - suite: pico
    sizes: [xs]
    steps: [0, 100]
input_sets:
  - {name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 16}
analyses:
  - name: saturation
  - name: singular_entropy
"""


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, pico_hub, ray_session):
    root = tmp_path_factory.mktemp("cli")
    spec = root / "cli.yaml"
    spec.write_text(SPEC)
    db, uri = root / "r.duckdb", f"sqlite:///{root / 'mlflow.db'}"
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(spec), "--db", str(db), "--tracking-uri", uri])
    return runner, spec, db, uri, first


def test_run_then_rerun_says_nothing_to_compute(cli_run):
    runner, spec, db, uri, first = cli_run
    assert first.exit_code == 0, first.output
    assert "cells computed" in first.output and "pico/pico-xs@step100" in first.output
    assert ResultStore(db).query("SELECT count(*) FROM cells").item() == 2 * 2
    again = runner.invoke(app, ["run", str(spec), "--db", str(db), "--tracking-uri", uri])
    assert again.exit_code == 0
    assert "Nothing to compute: all 4 cells" in again.output
    assert ResultStore(db).query("SELECT count(*) FROM runs").item() == 1


def test_plan_counts_what_is_done(cli_run):
    runner, spec, db, *_ = cli_run
    result = runner.invoke(app, ["plan", str(spec), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "2 checkpoints (0 with work), 4 cells: 4 done, 0 to compute" in result.output


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "table"])
def test_query_formats(cli_run, tmp_path, fmt):
    runner, _, db, *_ = cli_run
    sql = "SELECT step, metric, value FROM results WHERE metric = 'cross_entropy' ORDER BY step"
    expected = ResultStore(db).query(sql)
    assert expected.height == 2
    out = tmp_path / f"out.{fmt}"
    args = ["query", sql, "--db", str(db), "--format", fmt]
    result = runner.invoke(app, [*args, "--output", str(out)] if fmt == "parquet" else args)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        assert pl.read_csv(result.stdout.encode()).equals(expected)
    elif fmt == "json":
        assert [r["value"] for r in json.loads(result.stdout)] == expected["value"].to_list()
    elif fmt == "parquet":
        assert pl.read_parquet(out).equals(expected)
    else:
        assert "cross_entropy" in result.output and "step" in result.output


def test_a_piped_table_is_not_wrapped(cli_run):
    """Piped (CliRunner is not a terminal), a wide table keeps one line per row."""
    runner, _, db, *_ = cli_run
    wide = "x" * 150
    sql = f"SELECT step, '{wide}' AS long_text, value FROM results WHERE metric = 'cross_entropy'"
    result = runner.invoke(app, ["query", sql, "--db", str(db)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if wide in line]
    assert len(rows) == 2  # wrapped to 80 columns, no line would hold the whole text


def test_query_is_read_only(cli_run):
    runner, _, db, *_ = cli_run
    before = ResultStore(db).query("SELECT count(*) FROM metrics").item()
    for sql in ("DELETE FROM metrics", "DROP TABLE cells", "COPY metrics TO '/tmp/leak.csv'"):
        result = runner.invoke(app, ["query", sql, "--db", str(db)])
        assert result.exit_code == 1, sql
        assert "error:" in result.output
    assert ResultStore(db).query("SELECT count(*) FROM metrics").item() == before
    missing = runner.invoke(app, ["query", "SELECT 1", "--db", "/no/such.duckdb"])
    assert missing.exit_code == 1 and "no results database" in missing.output


WRITER = textwrap.dedent(
    """
    import sys
    from ckptlab.results import ResultStore
    from ckptlab.rows import CellRow, CheckpointRow, MetricRow
    store = ResultStore(sys.argv[1])
    ck = CheckpointRow("m", "step1", 1, "sha", None, None, None)
    for i in range(int(sys.argv[2])):
        cell = CellRow(f"k{i}", "sha", "a", 1, "{}", "h", None, "cpu", "float32", 0.0)
        store.write_unit("run", ck, [cell], [MetricRow(f"k{i}", None, "m", float(i))], [])
    print("done", flush=True)
    """
)


def test_queries_succeed_while_another_process_writes(tmp_path):
    db = tmp_path / "busy.duckdb"
    ResultStore(db).ensure_schema()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), "300"], stdout=subprocess.PIPE, text=True
    )
    seen = []
    while writer.poll() is None:
        seen.append(ResultStore(db).query("SELECT count(*) FROM cells").item())
    assert writer.wait() == 0 and writer.stdout.read().strip() == "done"
    assert len(seen) >= 3, "the reader never overlapped the writer"
    assert seen == sorted(seen)  # every read saw a consistent, growing table
    assert ResultStore(db).query("SELECT count(*) FROM metrics").item() == 300


def test_analyses_command_lists_the_registry():
    result = CliRunner().invoke(app, ["analyses"])
    assert result.exit_code == 0
    for name in ("saturation", "anisotropy", "singular_entropy"):
        assert name in result.output


def test_an_input_set_larger_than_its_corpus_is_a_bad_spec(tmp_path, pico_hub):
    spec = tmp_path / "big.yaml"
    spec.write_text(SPEC.replace("num_sequences: 2", "num_sequences: 100000"))
    result = CliRunner().invoke(app, ["plan", str(spec), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 2
    assert "input_sets.prose: builtin:pydoc_topics/heldout has" in result.output
    assert "100000 requested" in result.output
    assert not (tmp_path / "r.duckdb").exists()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("{data: {file: /no/such/tasks.jsonl}}", "data.file: no such file: /no/such/tasks.jsonl"),
        ("{data: category, template: 'no slots'}", "template must contain {input} exactly once"),
        ("{data: planets}", "analyses[0].params.tasks[0].data: Input should be 'category'"),
    ],
)
def test_a_bad_icl_task_is_a_bad_spec(tmp_path, pico_hub, task: str, message: str):
    spec = tmp_path / "icl.yaml"
    spec.write_text(
        "name: bad-icl\nmodels: [{suite: pico, sizes: [xs], steps: [0]}]\n"
        f"analyses:\n  - name: icl\n    params: {{tasks: [{task}]}}\n"
    )
    db = tmp_path / "r.duckdb"
    result = CliRunner().invoke(app, ["run", str(spec), "--db", str(db), "--executor", "inline"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not db.exists()  # nothing written

"""Which rows a report covers: the spec or run it is of (``resolve_selection``), that
selection's results rows (``select_rows``) and its failures (``select_failures``).

- a **spec name**: every ``results`` row of a cell its runs planned (``run_cells``), whichever
  run computed it, this spec's or another's that shares the cell;
- a **run**: the rows of the cells it planned, and of its spec's, that existed when it
  finished (``computed_at`` <= its ``finished_at``; now, if it has not finished). A cell a
  rerun found already stored keeps the run_id of the run that computed it, so filtering on
  ``run_id`` alone would leave out everything cached.

Within it, each analysis is read at its latest ``analysis_version`` (older versions' cells stay
in the database); several parameter sets, input sets or dtypes of one analysis are told apart
by the ``variant`` column. Per-item rows (``item`` not NULL) are not selected.

Owns: every SQL query the report runs on the results database. Must not: shape rows for a
figure, compute statistics, draw or write files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from ckptlab.errors import one_line
from ckptlab.report.order import with_order
from ckptlab.results import ResultStore

# Columns the results view gained over time: NULL where an older database's view lacks them.
NEWER_COLUMNS = {"stage": "VARCHAR", "tokens_seen": "BIGINT", "dtype": "VARCHAR",
                 "tied_head": "BOOLEAN"}  # fmt: skip


class ReportError(ValueError):
    """Nothing to report on (no database, unknown run, no selection); one line."""


@dataclass
class Selection:
    spec_name: str
    run_id: str | None = None
    until: dt.datetime | None = None  # rows computed at or before (a run's end)

    def describe(self) -> str:
        if self.run_id is None:
            return f"spec {self.spec_name!r}: every run"
        until = self.until.isoformat(sep=" ", timespec="seconds") if self.until else "now"
        return (
            f"run {self.run_id} of spec {self.spec_name!r}: the spec's cells computed by "
            f"{until} (its end)"
        )


def resolve_selection(
    store: ResultStore, spec_name: str | None = None, run_id: str | None = None
) -> Selection:
    """The rows a report covers; ``run_id`` may be a unique prefix. ReportError when the
    database, the run or the spec is not there."""
    import duckdb

    if not store.path.exists():
        raise ReportError(f"no results database at {store.path}")
    try:
        runs = store.query("SELECT run_id, spec_name, finished_at FROM runs")
    except duckdb.Error as err:
        raise ReportError(f"{store.path}: no runs table ({one_line(err, first=True)})") from None
    specs = sorted({name for name in runs["spec_name"] if name is not None})
    known = ", ".join(specs) or "none"
    if run_id is not None:
        runs = runs.filter(pl.col("run_id").str.starts_with(run_id))
        if runs.height == 0:
            raise ReportError(f"no run {run_id!r} in {store.path}")
        if runs.height > 1:
            raise ReportError(f"run id prefix {run_id!r} is ambiguous ({runs.height} runs)")
        run = runs.row(0, named=True)
        if spec_name is not None and spec_name != run["spec_name"]:
            raise ReportError(
                f"run {run['run_id']} is of spec {run['spec_name']!r}, not {spec_name!r}"
            )
        return Selection(run["spec_name"], run["run_id"], run["finished_at"])
    if spec_name is None:
        if len(specs) != 1:
            raise ReportError(f"name a spec or a run (specs in {store.path}: {known})")
        spec_name = specs[0]
    elif spec_name not in specs:
        raise ReportError(f"no run of spec {spec_name!r} in {store.path} (specs: {known})")
    return Selection(spec_name)


def select_rows(store: ResultStore, selection: Selection) -> pl.DataFrame:
    """The selection's non-item rows, each analysis at its latest version, in training order
    (``with_order``), with a ``variant`` column (input set / params hash / dtype, empty when
    an analysis has only one)."""
    # A spec's cells: those its runs planned (run_cells; a cell another spec's run computed
    # first counts too), and, from databases older than run_cells, those its runs computed.
    runs = "SELECT run_id FROM runs WHERE spec_name = ?"
    if selection.run_id is not None:
        runs = "SELECT run_id FROM runs WHERE run_id = ?"
    view = set(
        store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'"
        )["column_name"]
    )
    newer = ", ".join(
        name if name in view else f"CAST(NULL AS {kind}) AS {name}"
        for name, kind in NEWER_COLUMNS.items()
    )
    sql = (
        "SELECT model, size, seed, revision, step, analysis, analysis_version, params_hash,"
        f" input_set, layer, metric, value, task, shots, task_seed, {newer}"
        f" FROM results WHERE item IS NULL AND (cell_key IN (SELECT cell_key FROM run_cells"
        f" WHERE run_id IN ({runs})) OR spec_name = ?)"
    )
    params: list = [selection.run_id or selection.spec_name, selection.spec_name]
    if selection.run_id is not None and selection.until is not None:
        sql += " AND computed_at <= ?"
        params.append(selection.until)
    rows = store.query(sql, params)
    if rows.height == 0:
        return rows
    rows = rows.filter(
        pl.col("analysis_version") == pl.col("analysis_version").max().over("analysis")
    )
    rows = rows.with_columns(pl.col("input_set").fill_null(""))
    rows = with_order(rows)
    # Per analysis: how many input sets, parameter sets and dtypes it has; only those with
    # more than one name the variant (a float32 and a bfloat16 cell are two measurements).
    kinds = rows.group_by("analysis").agg(
        pl.col("input_set").n_unique().alias("_sets"),
        pl.col("params_hash").n_unique().alias("_params"),
        pl.col("dtype").drop_nulls().n_unique().alias("_dtypes"),
    )
    rows = rows.join(kinds, on="analysis")
    variant = pl.concat_str(
        pl.when(pl.col("_sets") > 1).then(pl.col("input_set")).otherwise(pl.lit("")),
        pl.when(pl.col("_params") > 1)
        .then(pl.lit("params ") + pl.col("params_hash").str.slice(0, 6))
        .otherwise(pl.lit("")),
        pl.when(pl.col("_dtypes") > 1)
        .then(pl.col("dtype").fill_null("dtype unknown"))
        .otherwise(pl.lit("")),
        separator=" ",
    ).str.strip_chars()
    return rows.with_columns(variant.alias("variant")).drop("_sets", "_params", "_dtypes")


def select_failures(store: ResultStore, selection: Selection) -> pl.DataFrame:
    """The selection's ``failures`` rows (of its spec's runs, or of its run), with
    ``computed_since``: a later run stored the cell. Columns: model, revision, step, analysis,
    error, run_id, computed_since."""
    sql = (
        "SELECT f.model, f.revision, f.step, f.analysis, f.error, f.run_id,"
        " f.cell_key IN (SELECT cell_key FROM cells) AS computed_since"
        " FROM failures f JOIN runs r USING (run_id) WHERE r.spec_name = ?"
    )
    params: list = [selection.spec_name]
    if selection.run_id is not None:
        sql += " AND f.run_id = ?"
        params.append(selection.run_id)
    return store.query(sql + " ORDER BY f.model, f.step, f.analysis", params)

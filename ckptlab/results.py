"""The results database (DuckDB): long tidy rows keyed by content.

Tables: ``runs``, ``checkpoints`` (model, revision, step -> commit sha), ``input_sets`` and
``inputs`` (the exact token ids), ``cells`` (one analysis x params x input set on one commit,
keyed by a content hash), ``metrics`` (a cell's values), ``failures``. The ``results`` view
joins them into one row per value.

DuckDB lets one process hold a database file for writing, and while it does nobody else can
open it, not even read-only. So the driver, the only writer, opens the file for each unit's
transaction and closes it at once, and readers retry briefly on a lock conflict: ``ckptlab
query`` works while a run is going.

Owns: the schema and its migrations, every write (one transaction each), the retries on a held
file, and the check that a user's query only reads (``user_query``). Must not: decide what is
written (the driver, ``orchestrator/runner.py``, calls the writes; ``sync.py`` only sets a run's
lineage), keep the file open between calls, or import torch, ``analyses/`` or ``orchestrator/``.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import polars as pl
import tenacity

from ckptlab.interrupts import is_ctrl_c, sigint_after_block
from ckptlab.keys import DEFAULT_DTYPE, cell_identity
from ckptlab.rows import CellRow, CheckpointRow, FailureRow, MetricRow, UnitRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, spec_name VARCHAR, spec_hash VARCHAR, spec_yaml VARCHAR,
    code_version VARCHAR, mlflow_run_id VARCHAR, status VARCHAR,
    cells_computed INTEGER, cells_cached INTEGER, cells_failed INTEGER,
    started_at TIMESTAMP, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS checkpoints (
    model VARCHAR, revision VARCHAR, step BIGINT, commit_sha VARCHAR,
    suite VARCHAR, size VARCHAR, seed INTEGER, first_seen TIMESTAMP,
    PRIMARY KEY (model, revision, commit_sha));
CREATE TABLE IF NOT EXISTS input_sets (
    input_set_id VARCHAR PRIMARY KEY, name VARCHAR, source VARCHAR, seed INTEGER,
    num_sequences INTEGER, seq_len INTEGER, tokenizer_of VARCHAR);
CREATE TABLE IF NOT EXISTS inputs (
    input_set_id VARCHAR, seq_index INTEGER, token_ids BIGINT[],
    PRIMARY KEY (input_set_id, seq_index));
CREATE TABLE IF NOT EXISTS cells (
    cell_key VARCHAR PRIMARY KEY, commit_sha VARCHAR, analysis VARCHAR,
    analysis_version INTEGER, params_json VARCHAR, params_hash VARCHAR, input_set_id VARCHAR,
    run_id VARCHAR, device VARCHAR, dtype VARCHAR, seconds DOUBLE, computed_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS metrics (
    cell_key VARCHAR, layer INTEGER, metric VARCHAR, value DOUBLE, item INTEGER);
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS item INTEGER;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS task VARCHAR;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS shots INTEGER;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS task_seed INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMP;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS trust_remote_code BOOLEAN;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS lineage VARCHAR;
CREATE TABLE IF NOT EXISTS units (
    run_id VARCHAR, model VARCHAR, revision VARCHAR, commit_sha VARCHAR, node VARCHAR,
    device VARCHAR, fetch_seconds DOUBLE, load_seconds DOUBLE, compute_seconds DOUBLE,
    started_at TIMESTAMP, finished_at TIMESTAMP, prefetch_started_at TIMESTAMP,
    prefetch_finished_at TIMESTAMP, cells INTEGER, failed INTEGER);
CREATE TABLE IF NOT EXISTS failures (
    run_id VARCHAR, model VARCHAR, revision VARCHAR, step BIGINT, commit_sha VARCHAR,
    analysis VARCHAR, input_set_id VARCHAR, error VARCHAR, failed_at TIMESTAMP);
ALTER TABLE failures ADD COLUMN IF NOT EXISTS cell_key VARCHAR;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS weights_sha256 VARCHAR;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS duplicate_of VARCHAR;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS tokens_seen BIGINT;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS stage VARCHAR;
ALTER TABLE units ADD COLUMN IF NOT EXISTS batch_size INTEGER;
-- Which cells each run's spec covers (computed by it or found stored): what a report of the
-- spec counts, since a cell keeps the run_id of whichever run first computed it.
CREATE TABLE IF NOT EXISTS run_cells (run_id VARCHAR, cell_key VARCHAR);
ALTER TABLE cells ADD COLUMN IF NOT EXISTS code_source VARCHAR;
ALTER TABLE cells ADD COLUMN IF NOT EXISTS code_hash VARCHAR;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS weight_format VARCHAR;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS model_type VARCHAR;
ALTER TABLE checkpoints ADD COLUMN IF NOT EXISTS tied_head BOOLEAN;
-- A duplicate revision's cell whose values were copied from the identical revision's cell
-- (loading.duplicates: skip), instead of computed: the source cell's key.
ALTER TABLE cells ADD COLUMN IF NOT EXISTS copied_from VARCHAR;
CREATE OR REPLACE VIEW results AS
SELECT ch.model, ch.revision, ch.step, c.analysis, m.layer, m.metric, m.value, m.item,
       m.task, m.shots, m.task_seed, ch.duplicate_of,
       ch.suite, ch.size, ch.seed, ch.tokens_seen, ch.stage, ch.tied_head, c.commit_sha,
       i.name AS input_set, c.input_set_id,
       c.analysis_version, c.params_hash, c.params_json, c.dtype, r.spec_name, r.spec_hash,
       c.run_id, c.cell_key, c.computed_at
FROM metrics m
JOIN cells c USING (cell_key)
JOIN checkpoints ch ON ch.commit_sha = c.commit_sha
LEFT JOIN input_sets i ON i.input_set_id = c.input_set_id
LEFT JOIN runs r ON r.run_id = c.run_id;
"""

LOCK_WAIT_S = 60.0
_CELL_COLUMNS = {
    "cell_key": pl.String,
    "commit_sha": pl.String,
    "analysis": pl.String,
    "analysis_version": pl.Int32,
    "params_json": pl.String,
    "params_hash": pl.String,
    "input_set_id": pl.String,
    "run_id": pl.String,
    "device": pl.String,
    "dtype": pl.String,
    "seconds": pl.Float64,
    "code_source": pl.String,
    "code_hash": pl.String,
}


def _is_lock_conflict(err: BaseException) -> bool:
    return isinstance(err, duckdb.IOException | duckdb.ConnectionException) and (
        "lock" in str(err).lower()
    )


def _holder(err: BaseException) -> str:
    """Who holds the file, from DuckDB's message: 'held in /usr/bin/python3 (PID 42)'."""
    found = re.search(r"held in (\S+) \(PID (\d+)\)", str(err))
    return f"PID {found.group(2)}, {Path(found.group(1)).name}" if found else "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class QueryRefused(ValueError):
    """A user query that ckptlab will not run; ``str(err)`` is one line."""


READ_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


_EXPLAIN = re.compile(r"^\s*EXPLAIN\s*(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\b)?(.*)$", re.I | re.S)
_ONLY = "only SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN"


def _check_read_only(sql: str, explained: bool = False) -> None:
    """QueryRefused unless ``sql`` is one statement of a reading kind; what an EXPLAIN
    (ANALYZE runs it) explains is checked the same way."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryRefused(str(err).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryRefused(
            f"one statement at a time ({len(statements)} given): ckptlab query runs a single SELECT"
        )
    try:
        kind = statements[0].type
    except ValueError:  # a statement type this duckdb's Python API has no name for
        verb = (sql.split() or ["?"])[0].upper()
        raise QueryRefused(f"ckptlab query is read-only: {verb} is refused ({_ONLY})") from None
    if kind not in READ_STATEMENTS:
        under = " (also under EXPLAIN, which ANALYZE runs)" if explained else ""
        raise QueryRefused(
            f"ckptlab query is read-only: {kind.name} statements are refused{under} ({_ONLY})"
        )
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.match(statements[0].query)
        if inner is None or not inner.group(1).strip():
            raise QueryRefused("ckptlab query: EXPLAIN of what? (EXPLAIN [ANALYZE] SELECT ...)")
        _check_read_only(inner.group(1), explained=True)


class ResultsBusy(RuntimeError):
    """Another process holds the results file beyond the wait; ``str(err)`` is one line."""


def lock_wait_s() -> float:
    return float(os.environ.get("CKPTLAB_LOCK_WAIT_S", LOCK_WAIT_S))


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ connections

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A connection, waiting a bounded time (CKPTLAB_LOCK_WAIT_S, default 60 s) while
        another process holds the file, and saying so once the wait is noticeable."""
        # Readers reach no file, network or extension, and cannot change that setting.
        config = {"enable_external_access": False, "lock_configuration": True} if read_only else {}
        started = time.monotonic()
        said = []

        def waiting(state: tenacity.RetryCallState) -> None:
            if not said and time.monotonic() - started > 1.0:
                holder = _holder(state.outcome.exception())
                sys.stderr.write(
                    f"waiting up to {lock_wait_s():g}s for {self.path}: held by {holder}\n"
                )
                said.append(True)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_lock_conflict),
            wait=tenacity.wait_exponential(multiplier=0.01, max=1.0),
            stop=tenacity.stop_after_delay(lock_wait_s()),
            before_sleep=waiting,
            reraise=True,
        )
        try:
            return retrying(duckdb.connect, str(self.path), read_only=read_only, config=config)
        except (duckdb.IOException, duckdb.ConnectionException) as err:
            if not _is_lock_conflict(err):
                raise
            raise ResultsBusy(
                f"{self.path} is held by {_holder(err)} (a notebook's connection?): close it, "
                "or query with `ckptlab query` (it holds the file only per query); finished "
                "units are stored, a rerun resumes"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short write transaction; the file is unlocked again when it ends. A Ctrl-C
        once the file is open waits for the transaction to end (DuckDB would abort the query
        and raise a RuntimeError instead); one while waiting for the lock stops at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect(read_only=False)
        try:
            with sigint_after_block():
                try:
                    con.execute("BEGIN TRANSACTION")
                    yield con
                    con.execute("COMMIT")
                except BaseException as err:
                    # A failed rollback (none active after an aborted COMMIT) must not hide
                    # why: closing the connection discards the transaction anyway.
                    with suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    if is_ctrl_c(err):  # a second Ctrl-C aborted DuckDB's query
                        raise KeyboardInterrupt from None
                    raise
        finally:
            con.close()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection that cannot touch files outside the database either. A
        Ctrl-C during a query is a KeyboardInterrupt here, not DuckDB's RuntimeError (which a
        caller's ``except Exception`` would take for a failed read)."""
        if not self.path.exists():
            raise FileNotFoundError(f"no results database at {self.path}")
        con = self._connect(read_only=True)
        try:
            yield con
        except RuntimeError as err:
            if is_ctrl_c(err):
                raise KeyboardInterrupt from None
            raise
        finally:
            con.close()

    def ensure_schema(self) -> None:
        with self.transaction() as con:
            con.execute(SCHEMA)
            _rekey_dtype_cells(con)

    # ---------------------------------------------------------------------- reading

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.reader() as con:
            relation = con.sql(sql, params=params) if params else con.sql(sql)
            if relation is None:  # a statement that returns no rows
                return pl.DataFrame()
            return pl.from_arrow(relation.to_arrow_table())

    def user_query(self, sql: str) -> pl.DataFrame:
        """A user's SQL (``ckptlab query``): one SELECT-like statement (SELECT, WITH, FROM,
        DESCRIBE, SHOW, SUMMARIZE, EXPLAIN), on a read-only connection that can reach no
        file, network or extension. Anything else is a one-line QueryRefused."""
        _check_read_only(sql)
        return self.query(sql)

    def done_cell_keys(self, keys: list[str]) -> set[str]:
        if not keys or not self.path.exists():
            return set()
        with self.reader() as con:
            has_cells = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'cells'"
            ).fetchone()[0]
            if not has_cells:
                return set()
            rows = con.execute(
                "SELECT cell_key FROM cells WHERE cell_key IN (SELECT unnest(?))", [keys]
            ).fetchall()
        return {r[0] for r in rows}

    def failed(self) -> tuple[set[str], set[tuple[str, str]]]:
        """(cell keys, (model, revision) of unresolved checkpoints) that failed before."""
        if not self.path.exists():
            return set(), set()
        with self.reader() as con:
            if not con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'failures'"
            ).fetchone()[0]:
                return set(), set()
            rows = con.execute("SELECT cell_key, model, revision FROM failures").fetchall()
        return {k for k, _, _ in rows if k}, {(m, r) for k, m, r in rows if not k}

    def duplicates(self, model: str, revision: str) -> str | None:
        """The earlier revision whose weights this one repeats, if any."""
        with self.reader() as con:
            row = con.execute(
                "SELECT duplicate_of FROM checkpoints WHERE model = ? AND revision = ?",
                [model, revision],
            ).fetchone()
        return row[0] if row else None

    # ---------------------------------------------------------------------- writing

    def start_run(
        self,
        run_id: str,
        spec_name: str,
        spec_hash: str,
        spec_yaml: str,
        code: str,
        trust_remote_code: bool = False,
    ):
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, spec_name, spec_hash, spec_yaml, code_version, status,"
                " started_at, heartbeat_at, host, pid, trust_remote_code)"
                " VALUES (?, ?, ?, ?, ?, 'running', now(), now(), ?, ?, ?)",
                [run_id, spec_name, spec_hash, spec_yaml, code, socket.gethostname(),
                 os.getpid(), trust_remote_code],
            )  # fmt: skip

    def write_run_cells(self, run_id: str, cell_keys: list[str]) -> None:
        """The cells a run's plan covers, whoever computes them."""
        frame = pl.DataFrame({"run_id": [run_id] * len(cell_keys), "cell_key": cell_keys})
        with self.transaction() as con:
            con.register("new_run_cells", frame)
            con.execute("INSERT INTO run_cells SELECT run_id, cell_key FROM new_run_cells")
            con.unregister("new_run_cells")

    def mark_dead_runs(self, stale_after_s: float = 3600.0) -> list[str]:
        """Runs still marked running whose driver is gone: on this host, its process no
        longer exists; elsewhere, no unit for ``stale_after_s``. They become 'killed'."""
        if not self.path.exists():
            return []
        with self.transaction() as con:
            running = con.execute(
                "SELECT run_id, host, pid, epoch(now() - coalesce(heartbeat_at, started_at))"
                " FROM runs WHERE status = 'running'"
            ).fetchall()
            here = socket.gethostname()
            dead = [
                run_id
                for run_id, host, pid, idle in running
                if (host == here and pid and not _pid_alive(pid))
                or (host != here and idle > stale_after_s)
            ]
            for run_id in dead:
                con.execute(
                    "UPDATE runs SET status = 'killed', finished_at = coalesce(heartbeat_at,"
                    " started_at) WHERE run_id = ?",
                    [run_id],
                )
        return dead

    def finish_run(
        self,
        run_id: str,
        status: str,
        computed: int,
        cached: int,
        failed: int,
        mlflow_run_id: str | None,
        lineage: str = "logged",
    ):
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET status = ?, cells_computed = ?, cells_cached = ?,"
                " cells_failed = ?, mlflow_run_id = ?, lineage = ?, finished_at = now()"
                " WHERE run_id = ?",
                [status, computed, cached, failed, mlflow_run_id, lineage, run_id],
            )

    def set_lineage(self, run_id: str, lineage: str, mlflow_run_id: str | None) -> None:
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET lineage = ?, mlflow_run_id = coalesce(?, mlflow_run_id)"
                " WHERE run_id = ?",
                [lineage, mlflow_run_id, run_id],
            )

    def write_input_set(self, inputs, num_sequences: int, seq_len: int) -> None:
        """Store an input set's exact token ids (once per content id)."""
        with self.transaction() as con:
            exists = con.execute(
                "SELECT count(*) FROM input_sets WHERE input_set_id = ?", [inputs.input_set_id]
            ).fetchone()[0]
            if exists:
                return
            con.execute(
                "INSERT INTO input_sets VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    inputs.input_set_id,
                    inputs.name,
                    inputs.source,
                    inputs.seed,
                    num_sequences,
                    seq_len,
                    inputs.tokenizer_of,
                ],
            )
            frame = pl.DataFrame(
                {
                    "input_set_id": [inputs.input_set_id] * len(inputs.token_ids),
                    "seq_index": list(range(len(inputs.token_ids))),
                    "token_ids": [row.tolist() for row in inputs.token_ids],
                },
                schema={
                    "input_set_id": pl.String,
                    "seq_index": pl.Int32,
                    "token_ids": pl.List(pl.Int64),
                },
            )
            con.register("new_inputs", frame)
            con.execute("INSERT INTO inputs SELECT * FROM new_inputs")
            con.unregister("new_inputs")

    def write_unit(
        self,
        run_id: str,
        checkpoint: CheckpointRow,
        cells: list[CellRow],
        metrics: list[MetricRow],
        failures: list[FailureRow],
        unit: UnitRow | None = None,
    ) -> str | None:
        """Everything one checkpoint produced, in one transaction: all of it or none. Returns
        the earlier revision whose weights this one repeats (``duplicate_of``), if any: read
        in the same transaction, so the driver opens the file once per unit, not twice."""
        with self.transaction() as con:
            con.execute("UPDATE runs SET heartbeat_at = now() WHERE run_id = ?", [run_id])
            if unit is not None:
                con.execute(
                    "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?),"
                    " to_timestamp(?), to_timestamp(?), to_timestamp(?), ?, ?, ?)",
                    [
                        run_id,
                        unit.model,
                        unit.revision,
                        unit.commit_sha,
                        unit.node,
                        unit.device,
                        unit.fetch_seconds,
                        unit.load_seconds,
                        unit.compute_seconds,
                        unit.started_at,
                        unit.finished_at,
                        unit.prefetch_started_at,
                        unit.prefetch_finished_at,
                        unit.cells,
                        unit.failed,
                        unit.batch_size,
                    ],
                )
            con.execute(
                "INSERT INTO checkpoints (model, revision, step, commit_sha, suite, size, seed,"
                " first_seen, weights_sha256, tokens_seen, stage, weight_format, model_type,"
                " tied_head) VALUES (?, ?, ?, ?, ?, ?, ?, now(), ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET weights_sha256 = coalesce(excluded.weights_sha256,"
                " weights_sha256), weight_format = coalesce(excluded.weight_format,"
                " weight_format), model_type = coalesce(excluded.model_type, model_type),"
                " tied_head = coalesce(excluded.tied_head, tied_head)",
                [
                    checkpoint.model,
                    checkpoint.revision,
                    checkpoint.step,
                    checkpoint.commit_sha,
                    checkpoint.suite,
                    checkpoint.size,
                    checkpoint.seed,
                    checkpoint.weights_sha256,
                    checkpoint.tokens_seen,
                    checkpoint.stage,
                    checkpoint.weight_format,
                    checkpoint.model_type,
                    checkpoint.tied_head,
                ],
            )
            if checkpoint.weights_sha256:
                _flag_duplicates(con, checkpoint.model, checkpoint.weights_sha256)
            inserted: set[str] = set()
            if cells:
                frame = pl.DataFrame(
                    [
                        (
                            c.cell_key,
                            c.commit_sha,
                            c.analysis,
                            c.analysis_version,
                            c.params_json,
                            c.params_hash,
                            c.input_set_id,
                            run_id,
                            c.device,
                            c.dtype,
                            c.seconds,
                            c.code_source,
                            c.code_hash,
                        )
                        for c in cells
                    ],
                    schema=_CELL_COLUMNS,
                    orient="row",
                )
                con.register("new_cells", frame)
                # A concurrent run may have stored the same cell already: keep the first.
                inserted = {
                    row[0]
                    for row in con.execute(
                        f"INSERT INTO cells ({', '.join(_CELL_COLUMNS)}, computed_at)"
                        " SELECT *, now() FROM new_cells ON CONFLICT DO NOTHING RETURNING cell_key"
                    ).fetchall()
                }
                con.unregister("new_cells")
            metrics = [m for m in metrics if m.cell_key in inserted]
            if metrics:
                frame = pl.DataFrame(
                    [
                        (
                            m.cell_key,
                            m.layer,
                            m.metric,
                            m.value,
                            m.item,
                            m.task,
                            m.shots,
                            m.task_seed,
                        )
                        for m in metrics
                    ],
                    schema={
                        "cell_key": pl.String,
                        "layer": pl.Int32,
                        "metric": pl.String,
                        "value": pl.Float64,
                        "item": pl.Int32,
                        "task": pl.String,
                        "shots": pl.Int32,
                        "task_seed": pl.Int32,
                    },
                    orient="row",
                )
                con.register("new_metrics", frame)
                con.execute(
                    "INSERT INTO metrics"
                    " (cell_key, layer, metric, value, item, task, shots, task_seed)"
                    " SELECT cell_key, layer, metric, value, item, task, shots, task_seed"
                    " FROM new_metrics"
                )
                con.unregister("new_metrics")
            _insert_failures(con, run_id, failures)
            twin = con.execute(
                "SELECT duplicate_of FROM checkpoints WHERE model = ? AND revision = ?",
                [checkpoint.model, checkpoint.revision],
            ).fetchone()
        return twin[0] if twin else None

    def copy_cells(
        self,
        run_id: str,
        checkpoint: CheckpointRow,
        duplicate_of: str,
        pairs: list[tuple[str, str]],
    ) -> dict[str, list[tuple]]:
        """A duplicate revision's cells, copied from the cells of the revision whose weights it
        repeats: ``pairs`` is (new cell key, stored cell key). One transaction: the checkpoint
        row (flagged ``duplicate_of``), each cell with ``copied_from`` and its metric rows.
        Returns the copied values per new key (layer, metric, value, task, shots, task_seed),
        per-item rows left out, as ``persist`` hands them to MLflow; a new key already stored
        (another run's copy, or the same commit under two names) is in it with no values; a
        pair whose source is not stored is not in it."""
        frame = pl.DataFrame(
            {"cell_key": [new for new, _ in pairs], "source": [old for _, old in pairs]},
            schema={"cell_key": pl.String, "source": pl.String},
        )
        with self.transaction() as con:
            con.execute("UPDATE runs SET heartbeat_at = now() WHERE run_id = ?", [run_id])
            con.execute(
                "INSERT INTO checkpoints (model, revision, step, commit_sha, suite, size, seed,"
                " first_seen, weights_sha256, tokens_seen, stage, weight_format, duplicate_of,"
                " model_type, tied_head) SELECT ?, ?, ?, ?, ?, ?, ?, now(), ?, ?, ?, ?, ?,"
                " any_value(model_type), any_value(tied_head) FROM checkpoints"
                " WHERE model = ? AND revision = ?"  # the same weights: the same architecture
                " ON CONFLICT DO UPDATE SET duplicate_of = excluded.duplicate_of",
                [checkpoint.model, checkpoint.revision, checkpoint.step, checkpoint.commit_sha,
                 checkpoint.suite, checkpoint.size, checkpoint.seed, checkpoint.weights_sha256,
                 checkpoint.tokens_seen, checkpoint.stage, checkpoint.weight_format,
                 duplicate_of, checkpoint.model, duplicate_of],
            )  # fmt: skip
            con.register("copies", frame)
            copied = con.execute(
                "INSERT INTO cells (cell_key, commit_sha, analysis, analysis_version,"
                " params_json, params_hash, input_set_id, run_id, device, dtype, seconds,"
                " computed_at, code_source, code_hash, copied_from)"
                " SELECT k.cell_key, ?, c.analysis, c.analysis_version, c.params_json,"
                " c.params_hash, c.input_set_id, ?, c.device, c.dtype, 0, now(), c.code_source,"
                " c.code_hash, c.cell_key FROM copies k JOIN cells c ON c.cell_key = k.source"
                " ON CONFLICT DO NOTHING RETURNING cell_key",
                [checkpoint.commit_sha, run_id],
            ).fetchall()
            done = pl.DataFrame(
                {"cell_key": [k for (k,) in copied]}, schema={"cell_key": pl.String}
            )
            con.register("copied", done)
            rows = con.execute(
                "INSERT INTO metrics (cell_key, layer, metric, value, item, task, shots,"
                " task_seed) SELECT k.cell_key, m.layer, m.metric, m.value, m.item, m.task,"
                " m.shots, m.task_seed FROM copies k JOIN copied USING (cell_key)"
                " JOIN metrics m ON m.cell_key = k.source"
                " RETURNING cell_key, layer, metric, value, task, shots, task_seed, item"
            ).fetchall()
            stored = con.execute(
                "SELECT cell_key FROM cells WHERE cell_key IN (SELECT cell_key FROM copies)"
            ).fetchall()
            con.unregister("copied")
            con.unregister("copies")
        values: dict[str, list[tuple]] = {key: [] for (key,) in stored}
        for key, *value, item in rows:
            if item is None:
                values[key].append(tuple(value))
        return values

    def write_failures(self, run_id: str, failures: list[FailureRow]) -> None:
        with self.transaction() as con:
            _insert_failures(con, run_id, failures)


def _rekey_dtype_cells(con: duckdb.DuckDBPyConnection) -> None:
    """Once per database: cells computed in another dtype than float32 before the dtype was
    part of a cell's key were stored under the float32 key; give them their own (``cells``,
    ``metrics``, ``failures``, ``run_cells``), so a float32 run never takes them for its own."""
    con.execute("CREATE TABLE IF NOT EXISTS migrations (name VARCHAR PRIMARY KEY)")
    name = "dtype-in-cell-key"
    if con.execute("SELECT count(*) FROM migrations WHERE name = ?", [name]).fetchone()[0]:
        return
    cells = con.execute(
        "SELECT cell_key, commit_sha, analysis, analysis_version, params_json, input_set_id,"
        " code_hash, dtype FROM cells WHERE dtype IS NOT NULL AND dtype != ?",
        [DEFAULT_DTYPE],
    ).fetchall()
    for key, commit, analysis, version, params, input_set_id, code_hash, dtype in cells:
        identity = (commit, analysis, version, params, input_set_id, code_hash)
        if key != cell_identity(*identity):  # keyed with its dtype already
            continue
        new = cell_identity(*identity, dtype)
        for table in ("cells", "metrics", "failures", "run_cells"):
            con.execute(f"UPDATE {table} SET cell_key = ? WHERE cell_key = ?", [new, key])
    con.execute("INSERT INTO migrations VALUES (?)", [name])


def _flag_duplicates(con: duckdb.DuckDBPyConnection, model: str, digest: str) -> None:
    """Revisions of one model with byte-identical weights (a known defect of public suites:
    Pythia #205, OLMo #915): every one but the earliest points at the earliest."""
    con.execute(
        "UPDATE checkpoints SET duplicate_of = first.revision FROM (SELECT revision, step"
        " FROM checkpoints WHERE model = ? AND weights_sha256 = ?"
        # training order, as the plan's (CheckpointRef.order): tokens seen, else stage, step
        " ORDER BY tokens_seen IS NULL, tokens_seen, stage NULLS FIRST, step, revision"
        " LIMIT 1) AS first WHERE checkpoints.model = ? AND checkpoints.weights_sha256 = ?"
        " AND checkpoints.revision != first.revision",
        [model, digest, model, digest],
    )


def _insert_failures(con: duckdb.DuckDBPyConnection, run_id: str, failures: list[FailureRow]):
    for f in failures:
        con.execute(
            "INSERT INTO failures (run_id, model, revision, step, commit_sha, analysis,"
            " input_set_id, error, failed_at, cell_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
            [
                run_id,
                f.model,
                f.revision,
                f.step,
                f.commit_sha,
                f.analysis,
                f.input_set_id,
                f.error,
                f.cell_key,
            ],
        )

"""The driver: owns each unit's lifecycle and is the only writer of results.

plan (skip cells already stored) -> run units on an executor -> persist each unit's rows in one
transaction (its cell rows mark it done) -> log to MLflow -> summary.

Owns: ``run_plan`` and ``_Lifecycle``: the run's rows and each unit's in the results database
(the single writer), the reference sketches on disk, the MLflow runs, the progress shown and the
summary. Must not: decide where a unit runs (``executors.py``), load a model or run an analysis
(``worker.py``), or import torch or Ray at module level (a ``run`` with nothing to do imports
neither).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ckptlab.analyses.registry import get_analysis
from ckptlab.code_version import code_version
from ckptlab.errors import one_line
from ckptlab.home import ckptlab_home
from ckptlab.lineage import Lineage, Value
from ckptlab.orchestrator.executors import Executor
from ckptlab.orchestrator.placement import unit_bytes
from ckptlab.orchestrator.plan import Plan, SketchRequest, Unit, build_plan
from ckptlab.orchestrator.prefetch import wanted
from ckptlab.orchestrator.progress import RunProgress
from ckptlab.orchestrator.sketches import RunSketches, cached_sketches, sketch_requests
from ckptlab.orchestrator.unit import UnitResult, UnitTask, failure_rows
from ckptlab.results import ResultsBusy, ResultStore
from ckptlab.rows import CheckpointRow, FailureRow, UnitRow
from ckptlab.spec import Spec


@dataclass
class RunSummary:
    run_id: str | None
    checkpoints: int
    checkpoints_run: int
    cells_total: int
    cells_cached: int
    cells_computed: int = 0
    cells_copied: int = 0  # a duplicate revision's cells, copied from its twin's
    cells_failed: int = 0
    metric_rows: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    mlflow_run_id: str | None = None
    lineage_pending: str | None = None  # why MLflow was not written (``ckptlab sync`` later)
    reaped_runs: list[str] = field(default_factory=list)  # earlier runs found dead, now killed
    duplicates: list[str] = field(default_factory=list)  # revisions repeating earlier weights

    @property
    def nothing_to_do(self) -> bool:
        return self.run_id is None

    def count(self, task: UnitTask, result: UnitResult, twin: str | None) -> None:
        """Add one finished unit; ``twin``: the earlier revision whose weights it repeats."""
        label = task.checkpoint.label
        self.cells_computed += len(result.cells)
        self.cells_failed += len(result.failures)
        self.metric_rows += len(result.metrics)
        self.failures += [f"{label} {f.analysis}: {f.error}" for f in result.failures]
        if twin:
            self.duplicates.append(f"{label} = {twin}")


def make_plan(
    spec: Spec, db_path: Path, hub_dir: Path, before_tokenizing: Callable[[], None] | None = None
) -> Plan:
    return build_plan(spec, hub_dir, ResultStore(db_path).done_cell_keys, before_tokenizing)


def _task(
    unit: Unit,
    plan: Plan,
    hub_dir: Path,
    reference_errors: dict[str, str],
    sketches: list[SketchRequest] | None = None,
) -> UnitTask:
    spec = plan.spec
    tokens = plan.input_sets.get(unit.checkpoint.model, {})
    sketches = sketches or []
    wanted = {c.input_set for c in unit.missing if c.input_set} | {r.input_set for r in sketches}
    return UnitTask(
        checkpoint=unit.checkpoint,
        commit=unit.commit,
        cells=unit.missing,
        token_ids={name: tokens[name].token_ids for name in wanted},
        hub_dir=hub_dir,
        dtype=spec.resources.dtype,
        batch_size=spec.resources.batch_size,
        trust_remote_code=spec.loading.trust_remote_code,
        allow_pickle=spec.loading.allow_pickle_weights,
        reference_errors=plan.reference_errors | reference_errors,
        sketches=sketches,
        plugins=plan.plugins,
        plugin_timeout_s=spec.resources.plugin_timeout_s,
        weight_files=unit.layout.names if unit.layout is not None else None,
    )


def _units_per_model(plan: Plan) -> dict[str, int]:
    """How many units each model has to run on workers."""
    per_model: dict[str, int] = {}
    for unit in plan.todo:
        if _runs(unit):
            per_model[unit.checkpoint.model] = per_model.get(unit.checkpoint.model, 0) + 1
    return per_model


def _demand(plan: Plan) -> dict[str, int]:
    """Bytes one unit of each model needs (its config, the dtype, one batch, the analyses'
    states)."""
    spec = plan.spec
    needs = set().union(*(get_analysis(a.name).needs for a in spec.analyses))
    seq_len = max((s.seq_len for s in spec.input_sets), default=0)
    demand = {}
    for model in _units_per_model(plan):
        config = plan.model_configs.get(model)
        if config:
            r = spec.resources
            demand[model] = unit_bytes(config, r.dtype, r.batch_size, seq_len, needs)
    return demand


def _runs(unit: Unit) -> bool:
    """Whether a unit goes to a worker: not one that cannot run (``error``), nor a duplicate
    whose rows are copied from the revision with the same weights."""
    return unit.error is None and unit.commit is not None and unit.duplicate_of is None


def _checkpoint_row(unit: Unit, result: UnitResult | None = None) -> CheckpointRow:
    ref = unit.checkpoint
    digest = result.weights_sha256 if result is not None else None
    if digest is None and unit.layout is not None:
        digest = unit.layout.digest
    return CheckpointRow(
        ref.model, ref.revision, ref.step, unit.commit, ref.suite, ref.size, ref.seed, digest,
        tokens_seen=ref.tokens_seen, stage=ref.stage,
        weight_format=result.weight_format if result is not None else (
            unit.layout.format if unit.layout is not None else None
        ),
        model_type=result.model_type if result is not None else None,
        tied_head=result.tied_head if result is not None else None,
    )  # fmt: skip


def _result_of(task: UnitTask, outcome: UnitResult | Exception) -> UnitResult:
    """What a unit gave back, or, for a unit whose worker was lost, its cells failed."""
    if isinstance(outcome, UnitResult):
        return outcome
    message = f"worker: {one_line(outcome)}"
    result = UnitResult(task.checkpoint, task.commit)
    result.failures = failure_rows(task.checkpoint, task.commit, task.cells, message)
    result.sketch_errors = {r.key: message for r in task.sketches}
    return result


def _cached_values(store: ResultStore, plan: Plan) -> dict[str, list[tuple]]:
    """Stored values of the plan's already-done cells, so each MLflow run shows whole curves."""
    done = [key for u in plan.units for key in u.stored_keys]
    if not done:
        return {}
    frame = store.query(
        "SELECT cell_key, layer, metric, value, task, shots, task_seed FROM metrics"
        " WHERE cell_key IN (SELECT unnest(?)) AND item IS NULL",
        [done],
    )
    values: dict[str, list[tuple]] = {}
    for key, *value in frame.iter_rows():  # (layer, metric, value, task, shots, task_seed)
        values.setdefault(key, []).append(tuple(value))
    return values


class _Lifecycle:
    """One ``ckptlab run``: the driver's view. Owns the results DB (single writer) and the
    MLflow runs; executors only hand back results.

    MLflow opens on a thread of its own (its import, client, store and parent run take 1-3 s,
    a fresh sqlite store's migrations most of it) while the first units run: nothing touches
    it before the first unit is persisted, which then waits for it if it must."""

    def __init__(
        self,
        plan: Plan,
        spec_text: str,
        db_path: Path,
        tracking_uri: str,
        on_pending: Callable[[str], None] = lambda why: None,
    ):
        self.plan = plan
        self.spec = plan.spec
        self.store = ResultStore(db_path)
        self.store.ensure_schema()
        # Earlier runs whose driver died (SIGKILL, a lost node) would stay 'running' forever.
        self.reaped = self.store.mark_dead_runs()
        self.run_id = uuid.uuid4().hex
        code = code_version()
        self.store.start_run(
            self.run_id,
            self.spec.name,
            self.spec.spec_hash(),
            spec_text,
            code,
            self.spec.loading.trust_remote_code,
        )
        self.store.write_run_cells(
            self.run_id, sorted({c.key for u in plan.units for c in u.cells if c.key})
        )
        configs = {s.name: s for s in self.spec.input_sets}
        for sets in plan.input_sets.values():
            for name, materialized in sets.items():
                config = configs[name]
                self.store.write_input_set(materialized, config.num_sequences, config.seq_len)
        self.cells_by_key = {c.key: c for u in plan.units for c in u.cells if c.key}
        cached = _cached_values(self.store, plan)  # read here: the driver owns the DB
        self._lineage: Future[Lineage] = Future()
        threading.Thread(
            target=self._open_lineage,
            args=(tracking_uri, spec_text, code, cached, on_pending),
            name="mlflow-open",
            daemon=True,
        ).start()

    def _open_lineage(self, tracking_uri, spec_text, code, cached, on_pending) -> None:
        """The MLflow parent run, then the plan's stored cells logged to it (so that each
        MLflow run shows whole curves)."""
        try:
            lineage = Lineage(tracking_uri, self.spec, spec_text, self.run_id, code)
            lineage.start()
            if lineage.pending:
                on_pending(lineage.pending)
            for unit in self.plan.units:
                done_here = {c.key: cached[c.key] for c in unit.cells if c.key in cached}
                if done_here:
                    self.log(unit, done_here, lineage=lineage)
        except BaseException as err:  # raised where the lineage is first used
            self._lineage.set_exception(err)
        else:
            self._lineage.set_result(lineage)

    @property
    def lineage(self) -> Lineage:
        return self._lineage.result()

    @property
    def mlflow_run_id(self) -> str | None:
        return self.lineage.parent_id

    def log(
        self,
        unit: Unit,
        keyed_values: dict[str, list[tuple]],
        weight_format: str | None = None,
        lineage: Lineage | None = None,
    ) -> None:
        """keyed_values: cell key -> (layer, metric, value, task, shots, task_seed) rows."""
        rows = []
        for key, values in keyed_values.items():
            cell = self.cells_by_key[key]
            rows += [
                Value(cell.entry_key, cell.analysis, metric, layer, cell.input_set, value, *facets)
                for layer, metric, value, *facets in values
            ]
        if rows:
            if weight_format is None and unit.layout is not None:
                weight_format = unit.layout.format
            twin = unit.duplicate_of.revision if unit.duplicate_of else None
            lineage = lineage or self.lineage
            lineage.log_checkpoint(unit.checkpoint, unit.commit, rows, weight_format, twin)

    def record_unresolved(self, unit: Unit) -> int:
        error = f"resolve: {unit.checkpoint.label}: {unit.error}"
        failures = failure_rows(unit.checkpoint, unit.commit, unit.missing, error)
        self.store.write_failures(self.run_id, failures)
        return len(failures)

    def copy_duplicate(self, unit: Unit, source: Unit) -> tuple[int, list[FailureRow]]:
        """A whole duplicate's missing cells, copied from the same cells of the revision with
        the same weights (stored by now, or failed there). Returns (cells copied, failures)."""
        same = {(c.entry_key, c.input_set): c.key for c in source.cells}
        pairs = [(c.key, same[(c.entry_key, c.input_set)]) for c in unit.missing]
        copied = self.store.copy_cells(
            self.run_id, _checkpoint_row(unit), source.checkpoint.revision, pairs
        )
        why = f"same weights as {source.checkpoint.label}, where this cell was not computed"
        failures = failure_rows(
            unit.checkpoint, unit.commit, [c for c in unit.missing if c.key not in copied], why
        )
        self.store.write_failures(self.run_id, failures)
        self.log(unit, copied)
        return len(copied), failures

    def persist(self, unit: Unit, result: UnitResult) -> str | None:
        """Everything the unit produced in one transaction; its cell rows mark it done.
        Returns the earlier revision whose weights this one repeats, if any."""
        timing = None
        if result.started_at:  # a unit that ran (a lost one has no timings)
            ref = unit.checkpoint
            timing = UnitRow(
                ref.model,
                ref.revision,
                unit.commit,
                result.node or "driver",
                result.device,
                result.fetch_seconds,
                result.load_seconds,
                result.compute_seconds,
                result.started_at,
                result.finished_at,
                result.prefetch_started_at,
                result.prefetch_finished_at,
                len(result.cells),
                len(result.failures),
                result.batch_size,
            )
        twin = self.store.write_unit(
            self.run_id,
            _checkpoint_row(unit, result),
            result.cells,
            result.metrics,
            result.failures,
            timing,
        )
        values: dict[str, list[tuple]] = {}
        for m in result.metrics:
            if m.item is None:  # per-item rows (e.g. per neuron) stay in DuckDB only
                values.setdefault(m.cell_key, []).append(
                    (m.layer, m.metric, m.value, m.task, m.shots, m.task_seed)
                )
        self.log(unit, values, result.weight_format)
        return twin

    def finish(self, status: str, summary: RunSummary, report: bool = False) -> None:
        counts = {
            "cells_computed": summary.cells_computed,
            "cells_copied": summary.cells_copied,
            "cells_cached": summary.cells_cached,
            "cells_failed": summary.cells_failed,
            "checkpoints": summary.checkpoints,
            "metric_rows": summary.metric_rows,
        }
        if report:  # asked for (run --report): seconds of figures after the last unit
            self.lineage.log_report(self.store.path)
        self.lineage.finish(status, counts)
        summary.lineage_pending = self.lineage.pending
        # If the file is held now, the next run marks this one killed; its units are stored.
        with contextlib.suppress(ResultsBusy):
            self.store.finish_run(
                self.run_id,
                status.lower(),
                summary.cells_computed,
                summary.cells_cached,
                summary.cells_failed,
                self.mlflow_run_id,
                "pending" if self.lineage.pending else "logged",
            )


def _waves(
    executor: Executor,
    first: list[UnitTask],
    later: list[Unit],
    plan: Plan,
    hub_dir: Path,
    sketches: RunSketches,
) -> Iterator[tuple[UnitTask, UnitResult | Exception]]:
    """(task, outcome) of wave 1 (the units that make reference sketches), then of wave 2,
    whose tasks are built only once wave 1 has said which sketches exist."""
    yield from executor.run(first, references=sketches.found)
    later_tasks = [_task(u, plan, hub_dir, sketches.errors) for u in later]
    yield from executor.run(later_tasks, references=sketches.found)


def _unit_line(task: UnitTask, result: UnitResult) -> str:
    failed = len(result.failures) + len(result.sketch_errors)
    state = "[green]ok[/green]" if not failed else f"[red]{failed} failed[/red]"
    made = f", {len(result.sketches)} sketch(es)" if task.sketches else ""
    return (
        f"  {task.checkpoint.label}: {len(result.cells)}/{len(task.cells)} cells{made}, "
        f"{result.seconds:.2f}s on {result.device} {state}"
    )


def run_plan(
    plan: Plan,
    spec_text: str,
    db_path: Path,
    tracking_uri: str,
    hub_dir: Path,
    executor: Executor,
    console: Console | None = None,
    sketch_dir: Path | None = None,
    report_to_mlflow: bool = False,
) -> RunSummary:
    """Compute the plan's missing cells: skip what is stored -> run units on ``executor`` ->
    persist each unit in one transaction -> log to MLflow. A failing checkpoint is recorded and
    the others finish; an interrupted run keeps every unit it had persisted.
    ``report_to_mlflow``: also render the report (`ckptlab report`) into the parent run's
    artifacts at the end; off by default, so that nothing runs after the last unit that the
    user did not ask for."""
    console = console or Console()
    sketch_dir = sketch_dir or ckptlab_home() / "sketches"
    started = time.perf_counter()
    summary = RunSummary(
        run_id=None,
        checkpoints=len(plan.units),
        checkpoints_run=len(plan.todo),
        cells_total=plan.total_cells,
        cells_cached=plan.total_cells - plan.missing_cells,
    )
    if not plan.todo:
        return summary
    units = {u.checkpoint: u for u in plan.units}
    # The first checkpoints start downloading now, where this machine is the node, while
    # Ray and the workers start.
    ahead = [wanted(_task(u, plan, hub_dir, {})) for u in plan.todo if _runs(u)]
    executor.download_ahead([item for item in ahead if item is not None])
    with executor:
        # Resource errors surface before anything is written.
        executor.prepare(
            _units_per_model(plan),
            lambda: _demand(plan),
            lambda line: console.print(line, highlight=False),
        )
        console.print(
            f"{executor.description}; {executor.pool_summary()}", highlight=False, soft_wrap=True
        )
        sketches = RunSketches(sketch_dir, cached_sketches(plan, sketch_dir))
        requests = sketch_requests(plan, sketches.found)
        # A reference that cannot run (no weights, not cached, refused) makes no sketch: the
        # cells that read it fail with its reason; its own cells fail once, as unresolved.
        for ref in [r for r in requests if units[r].error is not None]:
            for request in requests.pop(ref):
                sketches.errors[request.key] = f"({ref.label}: {units[ref].error})"
        # Wave 1: the units that make the missing reference sketches (a reference checkpoint
        # whose own cells are all stored still runs, for its sketch only). Wave 2: the rest,
        # built once wave 1 has said which sketches exist.
        first = [_task(units[ref], plan, hub_dir, {}, found) for ref, found in requests.items()]
        later = [u for u in plan.todo if _runs(u) and u.checkpoint not in requests]
        copies = [u for u in plan.todo if u.duplicate_of is not None and u.error is None]
        # The workers boot (processes, imports: seconds) while the driver sets up the results
        # DB and MLflow below, instead of after it.
        opening = first[0].checkpoint if first else later[0].checkpoint if later else None
        if opening is not None:
            executor.start_workers(opening.model)

        def pending(why: str) -> None:
            console.print(
                f"[yellow]lineage pending[/yellow]: {why}; results go to DuckDB, `ckptlab sync` "
                "logs them to MLflow later",
                highlight=False,
                soft_wrap=True,
            )

        run = _Lifecycle(plan, spec_text, db_path, tracking_uri, pending)
        summary.run_id = run.run_id
        summary.reaped_runs = run.reaped
        if run.reaped:
            console.print(
                f"marked {len(run.reaped)} earlier run(s) killed: their driver is gone",
                highlight=False,
            )
        status = "KILLED"
        try:
            for unit in plan.todo:
                if unit.error is not None:
                    summary.failures.append(f"{unit.checkpoint.label}: {unit.error}")
                    summary.cells_failed += run.record_unresolved(unit)

            cells = sum(len(t.cells) for t in first) + sum(len(u.missing) for u in later + copies)
            count = len(first) + len(later) + len(copies)
            with RunProgress(console, plan.spec.name, count, cells) as progress:
                waves = _waves(executor, first, later, plan, hub_dir, sketches)
                for task, outcome in waves:
                    result = _result_of(task, outcome)
                    sketches.take(task, result)
                    twin = run.persist(units[task.checkpoint], result) if task.cells else None
                    summary.count(task, result, twin)
                    if twin:
                        progress.print(
                            f"  [yellow]warning[/yellow] {task.checkpoint.label} has the same "
                            f"weights as {twin} (flagged: checkpoints.duplicate_of)",
                            highlight=False,
                        )
                    progress.unit_done(len(task.cells), _unit_line(task, result))
                # Last, once the revisions they repeat are stored: no download, no compute.
                for unit in copies:
                    source = units[unit.duplicate_of]
                    copied, failures = run.copy_duplicate(unit, source)
                    summary.cells_copied += copied
                    summary.cells_failed += len(failures)
                    summary.failures += [
                        f"{unit.checkpoint.label} {f.analysis}: {f.error}" for f in failures
                    ]
                    summary.duplicates.append(
                        f"{unit.checkpoint.label} = {source.checkpoint.label}"
                    )
                    progress.unit_done(
                        len(unit.missing),
                        f"  {unit.checkpoint.label}: {copied}/{len(unit.missing)} cells copied "
                        f"from {source.checkpoint.revision} (same weights; loading.duplicates: "
                        "skip)",
                    )
            status = "FINISHED" if not summary.cells_failed else "FAILED"
        finally:
            run.finish(status, summary, report_to_mlflow)
            summary.mlflow_run_id = run.mlflow_run_id
    summary.seconds = time.perf_counter() - started
    return summary

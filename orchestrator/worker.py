"""What runs where a unit runs: load the checkpoint once, one streamed forward pass per input
set, every analysis on it as a reducer. Plain functions, so the Ray actor and the inline
executor share them."""

from __future__ import annotations

import numbers
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ckptlab.analyses.capture import CheckpointContext, ReferenceSketch, sample_positions
from ckptlab.analyses.plugins import PluginCode, PluginError
from ckptlab.analyses.plugins import load as load_plugin
from ckptlab.analyses.position_sample import PositionSample
from ckptlab.analyses.registry import (
    FORWARD_NEEDS,
    MetricValue,
    Need,
    Reducer,
    get_analysis,
    registered_analyses,
)
from ckptlab.architectures import model_type, tied_head
from ckptlab.home import hub_cache_dir
from ckptlab.hub import (
    fetch_snapshot,
    load_model,
    load_tokenizer,
    local_checkpoint,
)
from ckptlab.lazy import torch
from ckptlab.orchestrator.forward import checkpoint_context, stream_forward
from ckptlab.orchestrator.plan import Cell, CheckpointRef
from ckptlab.rows import CellRow, FailureRow, MetricRow
from ckptlab.weights import WeightsError, choose_layout, folder_files


@dataclass(frozen=True)
class SketchRequest:
    """Take a reference sketch from this unit's pass over one input set: the hidden states
    at a seeded sample of positions, for cross-checkpoint analyses of other checkpoints."""

    key: str
    input_set: str
    input_set_id: str
    max_tokens: int
    seed: int


@dataclass
class UnitTask:
    checkpoint: CheckpointRef
    commit: str
    cells: list[Cell]
    token_ids: dict[str, np.ndarray]  # input set name -> [seq, pos]
    hub_dir: Path | None  # None: the worker's own hub cache (HF_HUB_CACHE / CKPTLAB_HOME)
    dtype: str
    batch_size: int
    trust_remote_code: bool
    allow_pickle: bool
    # Why a reference sketch is missing, by sketch key or model (cross-checkpoint cells).
    reference_errors: dict[str, str] = field(default_factory=dict)
    sketches: list[SketchRequest] = field(default_factory=list)
    # The spec's plug-ins: a file's text travels here, so a worker that never saw it runs it.
    plugins: list[PluginCode] = field(default_factory=list)
    plugin_timeout_s: float | None = None  # a plug-in cell's time budget in this unit
    # The plan's weight files of this revision (hub metadata): exactly these are fetched.
    weight_files: tuple[str, ...] | None = None


@dataclass
class UnitResult:
    checkpoint: CheckpointRef
    commit: str
    cells: list[CellRow] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    sketches: dict[str, ReferenceSketch] = field(default_factory=dict)
    sketch_errors: dict[str, str] = field(default_factory=dict)
    fetch_seconds: float = 0.0  # waiting for the checkpoint's files (download or cache)
    load_seconds: float = 0.0  # from_pretrained onto the device
    seconds: float = 0.0  # the whole unit, fetch and load included
    device: str = "cpu"
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0
    node: str = ""
    # Set by a worker that prefetched this unit's checkpoint during its previous unit.
    prefetch_started_at: float | None = None
    prefetch_finished_at: float | None = None
    weights_sha256: str | None = None  # identical payloads across revisions are flagged
    batch_size: int | None = None  # the batch the passes ran with (smaller after running out)
    weight_format: str | None = None  # safetensors | safetensors-sharded | pickle | ...
    model_type: str | None = None  # the loaded config's model_type
    tied_head: bool | None = None  # the LM head shares the input embedding matrix

    @property
    def compute_seconds(self) -> float:
        return max(0.0, self.seconds - self.fetch_seconds - self.load_seconds)


def failure_rows(
    ref: CheckpointRef, commit: str | None, cells: list[Cell], error: str
) -> list[FailureRow]:
    """One failure row per cell that could not be computed on this checkpoint."""
    return [
        FailureRow(
            ref.model, ref.revision, ref.step, commit, c.analysis, c.input_set_id, error, c.key
        )
        for c in cells
    ]


def pick_device(want_gpu: bool, gpus: float = 1) -> str:
    """cuda when GPUs were asked for and exist; "auto" (device_map) when a worker holds
    several; cpu otherwise."""
    if not (want_gpu and torch.cuda.is_available()):
        return "cpu"
    return "auto" if gpus > 1 and torch.cuda.device_count() > 1 else "cuda"


def _one_line(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}".replace("\n", " ")[:2000]


def load_checkpoint(task: UnitTask, device: str, timing: UnitResult | None = None):
    """(model, tokenizer) of the task's checkpoint, verified against the planned commit;
    ``timing`` gets the seconds spent fetching files and loading them."""
    started = time.perf_counter()
    ref = task.checkpoint
    if ref.source == "local":
        folder, commit = local_checkpoint(Path(ref.model), ref.revision)
    else:
        folder, commit = fetch_snapshot(
            ref.model,
            ref.revision,
            task.hub_dir or hub_cache_dir(),
            local_only=ref.local_only,
            allow_pickle=task.allow_pickle,
            remote_code=task.trust_remote_code,
            weight_files=task.weight_files,
        )
    if commit != task.commit:
        raise RuntimeError(f"revision moved: planned {task.commit[:12]}, found {commit[:12]}")
    if timing is not None:
        with suppress(WeightsError):  # load_model says why, in its own words
            layout = choose_layout(folder_files(folder), task.allow_pickle)
            timing.weight_format, timing.weights_sha256 = layout.format, layout.digest
    fetched = time.perf_counter()
    model = load_model(
        folder,
        task.dtype,
        device,
        trust_remote_code=task.trust_remote_code,
        allow_pickle=task.allow_pickle,
    )
    tokenizer = load_tokenizer(folder, trust_remote_code=task.trust_remote_code)
    if timing is not None:
        timing.fetch_seconds = fetched - started
        timing.load_seconds = time.perf_counter() - fetched
        # Read from the loaded model: a checkpoint may untie what its config ties.
        timing.model_type, timing.tied_head = model_type(model), tied_head(model)
    return model, tokenizer


@dataclass
class _Running:
    """One cell's reducer during a pass, and the time spent in it."""

    cell: Cell
    reducer: Reducer
    seconds: float = 0.0


class _Pass:
    """One input set's pass over one checkpoint: every cell's reducer and every requested
    sketch fed the same batches; a reducer that raises fails its own cell only."""

    def __init__(
        self,
        task: UnitTask,
        result: UnitResult,
        input_set: str | None,
        cells,
        refs,
        batch_size: int,
    ):
        self.task, self.result, self.input_set = task, result, input_set
        self.batch_size = batch_size
        self.cells = cells
        self.references = refs
        self.requests = [r for r in task.sketches if r.input_set == input_set]
        self.running: dict[str, _Running] = {}
        self.samples: dict[str, PositionSample] = {}
        # Plug-ins get their own copies of the batches and weights, and a time budget.
        self.isolated = {c.key for c in cells if not get_analysis(c.analysis).shipped}

    def fail(self, cells: list[Cell], error: str) -> None:
        self.result.failures += failure_rows(self.task.checkpoint, self.task.commit, cells, error)

    def start(self, context: CheckpointContext) -> None:
        for cell in self.cells:
            definition = get_analysis(cell.analysis)
            cell_context = context
            if definition.cross_checkpoint:
                reference = self.references.get(cell.reference_key)
                made_here = any(r.key == cell.reference_key for r in self.requests)
                if reference is None and not made_here:
                    why = self.task.reference_errors.get(
                        cell.reference_key or self.task.checkpoint.model, ""
                    )
                    self.fail(
                        [cell], f"{cell.analysis}: reference sketch unavailable {why}".strip()
                    )
                    continue
                cell_context = replace(context, reference=reference)
            why = context.refusal(definition.needs)  # e.g. a mixture of experts' neurons
            if why is not None:
                self.fail([cell], f"{cell.analysis}: {why}")
                continue
            if cell.key in self.isolated:
                cell_context = _own_weights(cell_context)
            started = time.perf_counter()
            try:
                params = definition.params_model.model_validate_json(
                    cell.run_params_json or cell.params_json
                )
                reducer = definition.start(params, cell_context)
            except Exception as err:
                self.fail([cell], f"{cell.analysis}: {_one_line(err)}")
                continue
            self.running[cell.key] = _Running(cell, reducer, time.perf_counter() - started)
        if self.requests:
            seq, pos = context.input_shape()
            for r in self.requests:
                positions = sample_positions(seq * pos, r.max_tokens, r.seed)
                self.samples[r.key] = PositionSample(positions, torch.float32)

    def stream(
        self, model, tokens: torch.Tensor, needs: set[Need], context: CheckpointContext
    ) -> None:
        for batch in stream_forward(model, tokens, needs, self.batch_size):
            # What the pass found this checkpoint cannot give (the first batch's readout
            # self-check): the cells that need it fail here, before they read the batch.
            context.unavailable.update(batch.unavailable or {})
            self.refuse(context)
            for key, running in list(self.running.items()):
                started = time.perf_counter()
                try:
                    running.reducer.update(batch.copy() if key in self.isolated else batch)
                except Exception as err:
                    if is_out_of_memory(err):  # the whole pass retries with smaller batches
                        raise
                    self.fail([running.cell], f"{running.cell.analysis}: {_one_line(err)}")
                    del self.running[key]
                    continue
                running.seconds += time.perf_counter() - started
                if self._over_budget(running):
                    del self.running[key]
            for sample in self.samples.values():
                sample.add(batch, batch.require("hidden_states"))
            del batch  # the next batch is computed with this one released

    def refuse(self, context: CheckpointContext) -> None:
        """Running cells whose analysis needs what the pass found it cannot give fail, each
        with the one-line reason; the other cells go on."""
        for key, running in list(self.running.items()):
            why = context.refusal(running.reducer.needs)
            if why is not None:
                self.fail([running.cell], f"{running.cell.analysis}: {why}")
                del self.running[key]

    def _over_budget(self, running: _Running) -> bool:
        """A plug-in past its time budget fails its cell (checked between its calls: a call
        that never returns holds the unit until the job is stopped)."""
        budget = self.task.plugin_timeout_s
        if budget is None or running.cell.key not in self.isolated or running.seconds <= budget:
            return False
        self.fail(
            [running.cell],
            f"{running.cell.analysis}: exceeded its time budget of {budget:g} s "
            f"({running.seconds:.1f} s; resources.plugin_timeout_s)",
        )
        return True

    def forward_failed(self, err: Exception) -> None:
        self.fail([r.cell for r in self.running.values()], f"forward: {_one_line(err)}")
        self.running.clear()
        for r in self.requests:
            self.result.sketch_errors[r.key] = f"forward: {_one_line(err)}"
        self.samples.clear()

    def finish(self) -> None:
        # Sketches first: the reference's own cross-checkpoint cell reads the one made here.
        for r in self.requests:
            if r.key in self.samples:
                layers = tuple(x.cpu().numpy() for x in self.samples[r.key].complete())
                positions = self.samples[r.key].positions.numpy()
                self.result.sketches[r.key] = ReferenceSketch(
                    self.task.commit, r.input_set_id, positions, layers
                )
        for running in self.running.values():
            cell, reducer = running.cell, running.reducer
            started = time.perf_counter()
            try:
                if Need.REFERENCE in reducer.needs and reducer.context.reference is None:
                    reducer.context.reference = self.result.sketches[cell.reference_key]
                values = reducer.finalize()
                malformed = malformed_rows(values)
                if malformed:
                    raise ValueError(f"returned malformed rows: {malformed}")
            except Exception as err:
                self.fail([cell], f"{cell.analysis}: {_one_line(err)}")
                continue
            running.seconds += time.perf_counter() - started
            if self._over_budget(running):
                continue
            definition = get_analysis(cell.analysis)
            self.result.cells.append(
                CellRow(
                    cell.key,
                    self.task.commit,
                    cell.analysis,
                    cell.version,
                    cell.params_json,
                    cell.params_hash,
                    cell.input_set_id,
                    self.result.device,
                    self.task.dtype,
                    running.seconds,
                    None if definition.shipped else definition.origin.describe(),
                    definition.origin.source_hash,
                )
            )
            self.result.metrics += [
                MetricRow(
                    cell.key, v.layer, v.metric, v.value, v.item, v.task, v.shots, v.task_seed
                )
                for v in values
            ]


def _own_weights(context: CheckpointContext) -> CheckpointContext:
    """The context with copies of the weight tensors a plug-in asked for."""
    copies = {
        name: getattr(context, name).clone()
        for name in ("lm_head_weight", "input_embedding_weight", "input_ids")
        if getattr(context, name) is not None
    }
    return replace(context, **copies)


_INT_FIELDS = ("layer", "item", "shots", "task_seed")


def malformed_rows(values) -> str | None:
    """Why an analysis' return value is not a list of MetricValue rows (first problem)."""
    if not isinstance(values, list):
        return f"expected a list of MetricValue, got {type(values).__name__}"
    for i, v in enumerate(values):
        if not isinstance(v, MetricValue):
            return f"row {i} is a {type(v).__name__}, not a MetricValue"
        if not isinstance(v.metric, str) or not v.metric:
            return f"row {i}: metric must be a non-empty string, got {v.metric!r}"
        if isinstance(v.value, bool) or not isinstance(v.value, numbers.Real):
            return f"row {i} ({v.metric}): value must be a number, got {v.value!r}"
        for name in _INT_FIELDS:
            field_value = getattr(v, name)
            if field_value is not None and (
                isinstance(field_value, bool) or not isinstance(field_value, numbers.Integral)
            ):
                return f"row {i} ({v.metric}): {name} must be an integer, got {field_value!r}"
        if v.task is not None and not isinstance(v.task, str):
            return f"row {i} ({v.metric}): task must be a string, got {v.task!r}"
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's refusal."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err)
    # oneDNN (CPU kernels) reports an allocation it could not make as a failed primitive.
    return isinstance(err, RuntimeError) and (
        "out of memory" in text
        or "can't allocate memory" in text
        or "could not create a primitive" in text
    )


def _run_input_set(task, result, model, tokenizer, input_set, cells, references) -> None:
    """One input set's pass. Out of memory, it starts again with half the batch, down to
    one sequence; then every cell of the input set fails with that reason."""
    needs = set().union(*(get_analysis(c.analysis).needs for c in cells))
    if any(r.input_set == input_set for r in task.sketches):
        needs.add(Need.HIDDEN_STATES)
    tokens = torch.from_numpy(task.token_ids[input_set]) if input_set is not None else None
    batch_size = task.batch_size
    while True:
        attempt = UnitResult(task.checkpoint, task.commit, device=result.device)
        step = _Pass(task, attempt, input_set, cells, references, batch_size)
        error = _attempt(step, model, tokenizer, tokens, needs, cells)
        if error is not None and batch_size > 1:
            del step, attempt
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size //= 2
            continue
        if error is not None:
            step.forward_failed(RuntimeError(f"out of memory even at batch size 1: {error}"))
        result.cells += attempt.cells
        result.metrics += attempt.metrics
        result.failures += attempt.failures
        result.sketches |= attempt.sketches
        result.sketch_errors |= attempt.sketch_errors
        result.batch_size = min(result.batch_size or batch_size, batch_size)
        return


def _attempt(step: _Pass, model, tokenizer, tokens, needs, cells) -> str | None:
    """Run one pass; returns why it ran out of memory, or None when it went through."""
    with torch.inference_mode():
        try:
            context = checkpoint_context(model, tokens, needs, len(tokenizer))
        except Exception as err:  # what a model cannot give is in context.unavailable; this
            # is anything else, and every cell here fails with it
            step.fail(cells, f"forward: {_one_line(err)}")
            for r in step.requests:
                step.result.sketch_errors[r.key] = f"forward: {_one_line(err)}"
            return None
        if Need.MODEL in needs:
            context.model, context.tokenizer = model, tokenizer
        step.start(context)
        if tokens is not None and needs & FORWARD_NEEDS:
            try:
                step.stream(model, tokens, needs, context)
            except Exception as err:  # the pass itself: every cell of this input set
                if is_out_of_memory(err):
                    return _one_line(err)
                step.forward_failed(err)
        step.finish()
    return None


@contextmanager
def cpu_memory_cap(gib: float | None) -> Iterator[None]:
    """While a unit's passes run, cap the data segment (RLIMIT_DATA: heap and anonymous
    mappings) at what the process holds now, the model loaded, plus ``gib``. Only then: Ray's
    own buffers (the one that sends the result back) must never meet the cap, or the worker
    process dies, and a first load's imports are a one-off cost, not the pass's."""
    if not gib:
        yield
        return
    import re
    import resource

    status = Path("/proc/self/status").read_text()
    held = int(re.search(r"VmData:\s+(\d+) kB", status).group(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (held * 1024 + int(gib * 2**30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _with_plugins(task: UnitTask, result: UnitResult) -> UnitTask:
    """Load the task's plug-ins in this process (once per content); the cells of analyses
    that did not load fail with the plug-in's reason and the unit goes on without them."""
    errors = []
    for code in task.plugins:
        try:
            load_plugin(code)
        except PluginError as err:
            errors.append(str(err))
    known = registered_analyses()
    missing = [c for c in task.cells if c.analysis not in known]
    if not missing:
        return task
    why = "; ".join(errors) or "not registered on this worker"
    for cell in missing:
        result.failures += failure_rows(
            task.checkpoint, task.commit, [cell], f"{cell.analysis}: {why}"
        )
    return replace(task, cells=[c for c in task.cells if c.analysis in known])


def run_unit(
    task: UnitTask,
    device: str,
    references: dict[str, ReferenceSketch] | None = None,
    cpu_memory_gib: float | None = None,
) -> UnitResult:
    ref = task.checkpoint
    result = UnitResult(ref, task.commit, device=device, started_at=time.time())
    started = time.perf_counter()
    references = references or {}
    task = _with_plugins(task, result)
    try:
        model, tokenizer = load_checkpoint(task, device, result)
    except Exception as err:
        result.failures += failure_rows(ref, task.commit, task.cells, f"load: {_one_line(err)}")
        for r in task.sketches:
            result.sketch_errors[r.key] = f"load: {_one_line(err)}"
        result.seconds = time.perf_counter() - started
        result.finished_at = time.time()
        return result

    # Group cells by input set: one pass per group; sketch requests join their input set's.
    groups: dict[str | None, list[Cell]] = {r.input_set: [] for r in task.sketches}
    for cell in task.cells:
        groups.setdefault(cell.input_set, []).append(cell)
    with cpu_memory_cap(cpu_memory_gib):
        for input_set, cells in groups.items():
            _run_input_set(task, result, model, tokenizer, input_set, cells, references)
    result.seconds = time.perf_counter() - started
    result.finished_at = time.time()
    return result

"""One input set's pass over one loaded checkpoint: every cell's reducer (and every sketch the
unit must take) fed the same streamed batches, then finalized into rows.

Owns: the reducers' lifecycle within a pass (start → update per batch → finalize), a failing
cell failing alone, plug-ins' copies and time budgets, and the check of the rows analyses
return. Must not: load checkpoints, retry (``worker.py`` halves the batch when a pass runs
out of memory), or touch the results store.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, replace

from ckptlab.analyses.capture import CheckpointContext, ReferenceSketch, sample_positions
from ckptlab.analyses.position_sample import PositionSample
from ckptlab.analyses.registry import FORWARD_NEEDS, MetricValue, Need, Reducer, get_analysis
from ckptlab.errors import one_line
from ckptlab.lazy import torch
from ckptlab.orchestrator.forward import checkpoint_context, stream_forward
from ckptlab.orchestrator.memory import is_out_of_memory
from ckptlab.orchestrator.plan import Cell
from ckptlab.orchestrator.unit import UnitResult, UnitTask, failure_rows
from ckptlab.rows import CellRow, MetricRow


def run_pass(
    task: UnitTask,
    model,
    tokenizer,
    input_set: str | None,
    cells: list[Cell],
    references: dict[str, ReferenceSketch],
    batch_size: int,
    device: str,
) -> UnitResult | None:
    """The rows and failures of ``cells`` from one pass over ``input_set`` (None: the cells
    that need no forward pass). Returns None when the pass ran out of memory at a batch that
    can still be halved; at batch size 1, its cells fail instead."""
    rows = UnitResult(task.checkpoint, task.commit, device=device)
    the_pass = InputSetPass(task, rows, input_set, cells, references, batch_size)
    tokens = torch.from_numpy(task.token_ids[input_set]) if input_set is not None else None
    needs = the_pass.needs()
    with torch.inference_mode():
        try:
            context = checkpoint_context(model, tokens, needs, len(tokenizer))
        except Exception as err:  # what a model cannot give is in context.unavailable; this
            the_pass.forward_failed(err, cells)  # is anything else: every cell here fails
            return rows
        if Need.MODEL in needs:
            context.model, context.tokenizer = model, tokenizer
        the_pass.start(context)
        if tokens is not None and needs & FORWARD_NEEDS:
            try:
                the_pass.stream(model, tokens, needs, context)
            except Exception as err:  # the pass itself: every running cell of this input set
                if not is_out_of_memory(err):
                    the_pass.forward_failed(err)
                elif batch_size > 1:
                    return None  # the caller tries again with half the batch
                else:
                    reason = (
                        f"out of memory even at batch size 1: {one_line(err, 2000, where=True)}"
                    )
                    the_pass.forward_failed(RuntimeError(reason))
        the_pass.finish()
    return rows


@dataclass
class _Running:
    """One cell's reducer during a pass, and the time spent in it."""

    cell: Cell
    reducer: Reducer
    seconds: float = 0.0


class InputSetPass:
    """The cells and sketch requests of one input set on one checkpoint, fed the same
    batches; a reducer that raises fails its own cell only."""

    def __init__(
        self,
        task: UnitTask,
        rows: UnitResult,
        input_set: str | None,
        cells: list[Cell],
        references: dict[str, ReferenceSketch],
        batch_size: int,
    ):
        self.task, self.rows, self.input_set = task, rows, input_set
        self.batch_size = batch_size
        self.cells = cells
        self.references = references
        self.requests = [r for r in task.sketches if r.input_set == input_set]
        self.running: dict[str, _Running] = {}
        self.samples: dict[str, PositionSample] = {}
        # Plug-ins get their own copies of the batches and weights, and a time budget.
        self.isolated = {c.key for c in cells if not get_analysis(c.analysis).shipped}

    def needs(self) -> set[Need]:
        """What the forward pass must capture: the union of the cells' needs."""
        needs = set().union(*(get_analysis(c.analysis).needs for c in self.cells))
        if self.requests:
            needs.add(Need.HIDDEN_STATES)
        return needs

    def fail(self, cells: list[Cell], error: str) -> None:
        self.rows.failures += failure_rows(self.task.checkpoint, self.task.commit, cells, error)

    def start(self, context: CheckpointContext) -> None:
        for cell in self.cells:
            definition = get_analysis(cell.analysis)
            cell_context = context
            if definition.cross_checkpoint:
                reference = self.references.get(cell.sketch_key)
                made_here = any(r.key == cell.sketch_key for r in self.requests)
                if reference is None and not made_here:
                    why = self.task.reference_errors.get(
                        cell.sketch_key or self.task.checkpoint.model, ""
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
                self.fail([cell], f"{cell.analysis}: {one_line(err, 2000, where=True)}")
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
                    error = one_line(err, 2000, where=True)
                    self.fail([running.cell], f"{running.cell.analysis}: {error}")
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

    def forward_failed(self, err: Exception, cells: list[Cell] | None = None) -> None:
        """The pass broke: ``cells`` (default: the running ones) and the sketches fail."""
        error = f"forward: {one_line(err, 2000, where=True)}"
        self.fail(cells if cells is not None else [r.cell for r in self.running.values()], error)
        self.running.clear()
        for r in self.requests:
            self.rows.sketch_errors[r.key] = error
        self.samples.clear()

    def finish(self) -> None:
        # Sketches first: the reference's own cross-checkpoint cell reads the one made here.
        for r in self.requests:
            if r.key in self.samples:
                layers = tuple(x.cpu().numpy() for x in self.samples[r.key].complete())
                positions = self.samples[r.key].positions.numpy()
                self.rows.sketches[r.key] = ReferenceSketch(
                    self.task.commit, r.input_set_id, positions, layers
                )
        for running in self.running.values():
            cell, reducer = running.cell, running.reducer
            started = time.perf_counter()
            try:
                if Need.REFERENCE in reducer.needs and reducer.context.reference is None:
                    reducer.context.reference = self.rows.sketches[cell.sketch_key]
                values = reducer.finalize()
                malformed = malformed_rows(values)
                if malformed:
                    raise ValueError(f"returned malformed rows: {malformed}")
            except Exception as err:
                self.fail([cell], f"{cell.analysis}: {one_line(err, 2000, where=True)}")
                continue
            running.seconds += time.perf_counter() - started
            if self._over_budget(running):
                continue
            definition = get_analysis(cell.analysis)
            self.rows.cells.append(
                CellRow(
                    cell.key,
                    self.task.commit,
                    cell.analysis,
                    cell.version,
                    cell.params_json,
                    cell.params_hash,
                    cell.input_set_id,
                    self.rows.device,
                    self.task.dtype,
                    running.seconds,
                    None if definition.shipped else definition.origin.describe(),
                    definition.origin.source_hash,
                )
            )
            self.rows.metrics += [
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

"""What runs where a unit runs, top to bottom: the spec's plug-ins → the checkpoint, loaded
once → one streamed forward pass per input set, every analysis on it (half the batch when a
pass runs out of memory) → the rows. Plain functions, so the Ray actor and the inline executor
share them.

Owns: a unit's order of work and its timings. Must not: schedule units or download ahead
(``executors.py``, ``prefetch.py``), or write results (the driver is the single writer).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from ckptlab.analyses.capture import ReferenceSketch
from ckptlab.analyses.plugins import PluginError
from ckptlab.analyses.plugins import load as load_plugin
from ckptlab.analyses.registry import registered_analyses
from ckptlab.architectures import model_type, tied_head
from ckptlab.errors import one_line
from ckptlab.home import hub_cache_dir
from ckptlab.hub import fetch_snapshot, load_model, load_tokenizer, local_checkpoint
from ckptlab.lazy import torch
from ckptlab.orchestrator.input_set_pass import run_pass
from ckptlab.orchestrator.memory import cpu_memory_cap, free_cached_memory
from ckptlab.orchestrator.plan import Cell
from ckptlab.orchestrator.unit import UnitResult, UnitTask, failure_rows
from ckptlab.weights import WeightsError, choose_layout, folder_files


def run_unit(
    task: UnitTask,
    device: str,
    references: dict[str, ReferenceSketch] | None = None,
    cpu_memory_gib: float | None = None,
) -> UnitResult:
    """Every cell of one checkpoint: load it once, one pass per input set, rows out. A
    checkpoint that does not load fails all its cells; a cell that fails fails alone."""
    result = UnitResult(task.checkpoint, task.commit, device=device, started_at=time.time())
    started = time.perf_counter()
    task = with_plugins(task, result)
    try:
        model, tokenizer = load_checkpoint(task, device, result)
    except Exception as err:
        error = f"load: {one_line(err, 2000, where=True)}"
        result.failures += failure_rows(task.checkpoint, task.commit, task.cells, error)
        result.sketch_errors |= {r.key: error for r in task.sketches}
    else:
        with cpu_memory_cap(cpu_memory_gib):
            for input_set, cells in cells_by_input_set(task).items():
                run_input_set(task, result, model, tokenizer, input_set, cells, references or {})
    result.seconds = time.perf_counter() - started
    result.finished_at = time.time()
    return result


def cells_by_input_set(task: UnitTask) -> dict[str | None, list[Cell]]:
    """One pass per input set (None: the cells that read weights only); an input set that a
    sketch is taken from has a pass even when none of its cells is missing."""
    groups: dict[str | None, list[Cell]] = {r.input_set: [] for r in task.sketches}
    for cell in task.cells:
        groups.setdefault(cell.input_set, []).append(cell)
    return groups


def run_input_set(task, result, model, tokenizer, input_set, cells, references) -> None:
    """One input set's pass; out of memory, it starts again with half the batch, down to one
    sequence (then its cells fail with that reason). A plain loop rather than accelerate's
    find_executable_batch_size: that one recognises out of memory by a few RuntimeError
    messages only (not the MemoryError of the CPU cap, nor oneDNN's failed primitive), and
    accelerate is a dependency of the [bench] extra only."""
    batch_size = task.batch_size
    while True:
        device = result.device
        rows = run_pass(task, model, tokenizer, input_set, cells, references, batch_size, device)
        if rows is not None:
            result.add_pass(rows, batch_size)
            return
        free_cached_memory()  # the failed pass' tensors are gone with its frame
        batch_size //= 2


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


def with_plugins(task: UnitTask, result: UnitResult) -> UnitTask:
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


def pick_device(want_gpu: bool, gpus: float = 1) -> str:
    """cuda when GPUs were asked for and exist; "auto" (device_map) when a worker holds
    several; cpu otherwise."""
    if not (want_gpu and torch.cuda.is_available()):
        return "cpu"
    return "auto" if gpus > 1 and torch.cuda.device_count() > 1 else "cuda"

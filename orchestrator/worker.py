"""What runs where a unit runs: load the checkpoint once, one forward pass per input set, every
analysis on it. Plain functions, so the Ray actor and the inline executor share them."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ckptlab.analyses.capture import ReferenceSketch, sample_positions, sketch_hidden_states
from ckptlab.analyses.registry import Need, get_analysis
from ckptlab.hub import fetch_snapshot, load_model, load_tokenizer, local_checkpoint
from ckptlab.orchestrator.forward import capture_forward
from ckptlab.orchestrator.plan import Cell, CheckpointRef
from ckptlab.rows import CellRow, FailureRow, MetricRow


@dataclass
class UnitTask:
    checkpoint: CheckpointRef
    commit: str
    cells: list[Cell]
    token_ids: dict[str, np.ndarray]  # input set name -> [seq, pos]
    hub_dir: Path
    dtype: str
    batch_size: int
    trust_remote_code: bool
    allow_pickle: bool
    # Why a reference sketch is missing, by sketch key or model (cross-checkpoint cells).
    reference_errors: dict[str, str] = field(default_factory=dict)


@dataclass
class SketchTask:
    """Compute a reference checkpoint's sketch on one input set (load + one forward pass)."""

    checkpoint: CheckpointRef
    commit: str
    key: str
    input_set_id: str
    token_ids: np.ndarray  # [seq, pos]
    max_tokens: int
    seed: int
    hub_dir: Path
    dtype: str
    batch_size: int
    trust_remote_code: bool
    allow_pickle: bool


@dataclass
class UnitResult:
    checkpoint: CheckpointRef
    commit: str
    cells: list[CellRow] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    load_seconds: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"


def failure_rows(
    ref: CheckpointRef, commit: str | None, cells: list[Cell], error: str
) -> list[FailureRow]:
    """One failure row per cell that could not be computed on this checkpoint."""
    return [
        FailureRow(ref.model, ref.revision, ref.step, commit, c.analysis, c.input_set_id, error)
        for c in cells
    ]


def pick_device(want_gpu: bool) -> str:
    return "cuda" if want_gpu and torch.cuda.is_available() else "cpu"


def _one_line(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(err).__name__}: {err}{where}".replace("\n", " ")[:2000]


def load_checkpoint(task: UnitTask | SketchTask, device: str):
    """(model, tokenizer) of the task's checkpoint, verified against the planned commit."""
    ref = task.checkpoint
    if ref.source == "local":
        folder, commit = local_checkpoint(Path(ref.model), ref.revision)
    else:
        folder, commit = fetch_snapshot(
            ref.model,
            ref.revision,
            task.hub_dir,
            local_only=ref.local_only,
            allow_pickle=task.allow_pickle,
        )
    if commit != task.commit:
        raise RuntimeError(f"revision moved: planned {task.commit[:12]}, found {commit[:12]}")
    model = load_model(
        folder,
        task.dtype,
        device,
        trust_remote_code=task.trust_remote_code,
        allow_pickle=task.allow_pickle,
    )
    return model, load_tokenizer(folder, trust_remote_code=task.trust_remote_code)


def run_sketch(task: SketchTask, device: str) -> ReferenceSketch:
    model, tokenizer = load_checkpoint(task, device)
    tokens = torch.from_numpy(task.token_ids)
    capture = capture_forward(model, tokens, {Need.HIDDEN_STATES}, task.batch_size, len(tokenizer))
    positions = sample_positions(tokens.numel(), task.max_tokens, task.seed)
    layers = sketch_hidden_states(capture.hidden_states, positions)
    return ReferenceSketch(task.commit, task.input_set_id, positions, layers)


def run_unit(
    task: UnitTask, device: str, references: dict[str, ReferenceSketch] | None = None
) -> UnitResult:
    ref = task.checkpoint
    result = UnitResult(ref, task.commit, device=device)
    started = time.perf_counter()
    references = references or {}

    def fail(cells: list[Cell], error: str) -> None:
        result.failures += failure_rows(ref, task.commit, cells, error)

    try:
        model, tokenizer = load_checkpoint(task, device)
    except Exception as err:
        fail(task.cells, f"load: {_one_line(err)}")
        result.seconds = time.perf_counter() - started
        return result
    result.load_seconds = time.perf_counter() - started

    # Group cells by input set: one capture (one forward pass) per group.
    groups: dict[str | None, list[Cell]] = {}
    for cell in task.cells:
        groups.setdefault(cell.input_set, []).append(cell)
    for input_set, cells in groups.items():
        definitions = {c.key: get_analysis(c.analysis) for c in cells}
        needs = set().union(*(d.needs for d in definitions.values()))
        tokens = torch.from_numpy(task.token_ids[input_set]) if input_set is not None else None
        try:
            capture = capture_forward(model, tokens, needs, task.batch_size, len(tokenizer))
        except Exception as err:
            fail(cells, f"forward: {_one_line(err)}")
            continue
        if Need.MODEL in needs:
            capture.model, capture.tokenizer = model, tokenizer
        for cell in cells:
            definition = definitions[cell.key]
            cell_started = time.perf_counter()
            if definition.cross_checkpoint:
                capture.reference = references.get(cell.reference_key)
                if capture.reference is None:
                    reason = task.reference_errors.get(cell.reference_key or ref.model, "")
                    fail([cell], f"{cell.analysis}: reference sketch unavailable {reason}".strip())
                    continue
            try:
                params = definition.params_model.model_validate_json(
                    cell.run_params_json or cell.params_json
                )
                values = definition.run(capture, params)
            except Exception as err:
                fail([cell], f"{cell.analysis}: {_one_line(err)}")
                continue
            result.cells.append(
                CellRow(
                    cell.key,
                    task.commit,
                    cell.analysis,
                    cell.version,
                    cell.params_json,
                    cell.params_hash,
                    cell.input_set_id,
                    device,
                    task.dtype,
                    time.perf_counter() - cell_started,
                )
            )
            result.metrics += [
                MetricRow(
                    cell.key, v.layer, v.metric, v.value, v.item, v.task, v.shots, v.task_seed
                )
                for v in values
            ]
        del capture
    result.seconds = time.perf_counter() - started
    return result

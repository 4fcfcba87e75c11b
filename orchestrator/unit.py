"""What travels between the driver and a worker: one unit's task (a checkpoint, its cells, the
token windows) and its result (rows, failures, sketches, timings).

Owns: those two dataclasses and the failure rows of cells that could not run. Must not: load
models or run analyses (``worker.py``), or write to the results store (the driver does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckptlab.analyses.capture import ReferenceSketch
from ckptlab.analyses.plugins import PluginCode
from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.plan import Cell, SketchRequest
from ckptlab.rows import CellRow, FailureRow, MetricRow


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
    sketches: list[SketchRequest] = field(default_factory=list)  # to take from this unit's passes
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

    def add_pass(self, rows: UnitResult, batch_size: int) -> None:
        """Take in one input set's pass: its rows, failures and sketches."""
        self.cells += rows.cells
        self.metrics += rows.metrics
        self.failures += rows.failures
        self.sketches |= rows.sketches
        self.sketch_errors |= rows.sketch_errors
        self.batch_size = min(self.batch_size or batch_size, batch_size)


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

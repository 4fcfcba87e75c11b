"""Reference sketches of cross-checkpoint analyses (CKA), on the driver's side.

A sketch is the reference checkpoint's hidden states at a seeded sample of positions of one
input set. It is gathered by the same streamed pass as every analysis: the reference
checkpoint's own unit carries a SketchRequest, runs first, and hands the sketch back; the
driver caches it (``$CKPTLAB_HOME/sketches/<key>.safetensors``) and shares it with every
other unit. A later run that adds checkpoints reads the cached sketch.

Owns: the sketch files (written whole or not at all) and which requests are still to make. Must
not: take a sketch (a unit's pass does, ``input_set_pass.py``), or import safetensors at module
level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ckptlab.analyses.capture import ReferenceSketch
from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.plan import Plan, SketchRequest
from ckptlab.orchestrator.unit import UnitResult, UnitTask


def sketch_path(sketch_dir: Path, key: str) -> Path:
    return sketch_dir / f"{key}.safetensors"


def save_sketch(path: Path, sketch: ReferenceSketch) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"positions": sketch.positions}
    tensors |= {f"layer_{k}": layer for k, layer in enumerate(sketch.layers)}
    metadata = {"reference_commit": sketch.reference_commit, "input_set_id": sketch.input_set_id}
    partial = path.with_suffix(".partial")
    save_file(tensors, partial, metadata=metadata)
    partial.rename(path)  # a sketch file is either complete or absent


def load_sketch(path: Path) -> ReferenceSketch:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
        layers = tuple(f.get_tensor(f"layer_{k}") for k in range(len(f.keys()) - 1))
        positions = f.get_tensor("positions")
    return ReferenceSketch(
        metadata["reference_commit"], metadata["input_set_id"], positions, layers
    )


def cached_sketches(plan: Plan, sketch_dir: Path) -> dict[str, ReferenceSketch]:
    return {
        key: load_sketch(sketch_path(sketch_dir, key))
        for key in plan.sketches
        if sketch_path(sketch_dir, key).exists()
    }


def sketch_requests(plan: Plan, have: dict) -> dict[CheckpointRef, list[SketchRequest]]:
    """The sketches still to make, by the reference checkpoint whose pass makes them."""
    requests: dict[CheckpointRef, list[SketchRequest]] = {}
    for key, request in plan.sketches.items():
        if key not in have:
            requests.setdefault(request.checkpoint, []).append(request)
    return requests


@dataclass
class RunSketches:
    """One run's reference sketches: those found cached, those its units made (saved as they
    arrive), and why any is missing (by sketch key: what the cells that read it fail with)."""

    folder: Path
    found: dict[str, ReferenceSketch]
    errors: dict[str, str] = field(default_factory=dict)

    def take(self, task: UnitTask, result: UnitResult) -> None:
        for key, sketch in result.sketches.items():
            save_sketch(sketch_path(self.folder, key), sketch)
            self.found[key] = sketch
        for key, error in result.sketch_errors.items():
            self.errors[key] = f"({task.checkpoint.label}: {error})"

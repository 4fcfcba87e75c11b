"""The Ray actor that runs units; import only where Ray is wanted."""

from __future__ import annotations

import ray
import torch

from ckptlab.orchestrator.worker import UnitResult, UnitTask, pick_device, run_unit


@ray.remote
class CheckpointWorker:
    def __init__(self, threads: int, want_gpu: bool):
        torch.set_num_threads(threads)
        self.device = pick_device(want_gpu)

    def run(self, task: UnitTask, reference_refs: dict) -> UnitResult:
        # Object refs nested in a dict are not resolved by Ray: fetch them here.
        references = {key: ray.get(ref) for key, ref in reference_refs.items()}
        return run_unit(task, self.device, references)

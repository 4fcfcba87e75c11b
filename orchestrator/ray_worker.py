"""The Ray actor that runs units; import only where Ray is wanted."""

from __future__ import annotations

import socket
import time

import ray
import torch

from ckptlab.home import hub_cache_dir
from ckptlab.orchestrator.prefetch import Prefetcher, snapshot_complete
from ckptlab.orchestrator.worker import UnitResult, UnitTask, pick_device, run_unit


def limit_gpu_memory(gib: float) -> None:
    """Cap what this worker's PyTorch may allocate on its GPU (the per-process fraction)."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))


@ray.remote
class CheckpointWorker:
    def __init__(
        self,
        threads: int,
        gpus: float,
        disk_budget_gib: float | None = None,
        memory_limit_gib: float | None = None,
    ):
        torch.set_num_threads(threads)
        self.device = pick_device(gpus > 0, gpus)
        if memory_limit_gib and self.device != "cpu":
            limit_gpu_memory(memory_limit_gib)
        self.cpu_memory_limit_gib = memory_limit_gib if self.device == "cpu" else None
        self.prefetcher = Prefetcher(disk_budget_gib)
        self.node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"

    def cached(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Which (repo, commit) this node's hub cache already holds."""
        cache = hub_cache_dir()
        return [k for k in keys if snapshot_complete(k[0], k[1], cache)]

    def run(
        self, task: UnitTask, reference_refs: dict, prefetch: UnitTask | None = None
    ) -> UnitResult:
        ref = task.checkpoint
        began, waiting = time.time(), time.perf_counter()
        # Its own checkpoint may still be arriving: a prefetch started during the last unit.
        prefetched = self.prefetcher.wait(ref.model, task.commit)
        waited = time.perf_counter() - waiting
        cached_before = prefetched is not None or snapshot_complete(
            ref.model, task.commit, hub_cache_dir()
        )
        if prefetch is not None:  # the next unit's download runs while this one computes
            nxt = prefetch.checkpoint
            if nxt.source == "hub":
                self.prefetcher.start(
                    nxt.model, nxt.revision, prefetch.commit, nxt.local_only, prefetch.weight_files
                )
        # Object refs nested in a dict are not resolved by Ray: fetch them here.
        references = {key: ray.get(r) for key, r in reference_refs.items()}
        result = run_unit(task, self.device, references, self.cpu_memory_limit_gib)
        result.node = self.node
        result.started_at = began  # the unit began when this worker took it
        result.fetch_seconds += waited
        result.seconds += waited
        if prefetched is not None:
            result.prefetch_started_at = prefetched.started_at
            result.prefetch_finished_at = prefetched.finished_at
        if ref.source == "hub" and not ref.local_only:
            self.prefetcher.record(ref.model, ref.revision, task.commit, cached_before)
            self.prefetcher.finished(ref.model, task.commit)
        return result

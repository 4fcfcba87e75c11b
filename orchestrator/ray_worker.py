"""The Ray actors: the workers that run units, and each node's download queue; import only
where Ray is wanted.

Owns: the two actor classes and a worker's GPU memory fraction. Must not: be imported before Ray
is wanted (it imports Ray at module level; ``executors.py`` imports it inside the Ray executor),
or hold a unit's logic (``worker.run_unit`` does).
"""

from __future__ import annotations

import socket
import time

import ray

from ckptlab.home import hub_cache_dir
from ckptlab.lazy import torch  # imported when the actor starts, not by the driver
from ckptlab.orchestrator.prefetch import (
    Download,
    DownloadQueue,
    Wanted,
    snapshot_complete,
    wanted,
)
from ckptlab.orchestrator.unit import UnitResult, UnitTask
from ckptlab.orchestrator.worker import pick_device, run_unit


def limit_gpu_memory(gib: float) -> None:
    """Cap what this worker's PyTorch may allocate on its GPU (the per-process fraction)."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))


@ray.remote(num_cpus=0, max_concurrency=64)  # workers wait on it while the driver queues
class NodeDownloads:
    """The node's ``DownloadQueue``: every worker on the node reads its checkpoints through
    it, and the driver queues them in the order the node's units will run."""

    def __init__(self, disk_budget_gib: float | None = None):
        self.queue = DownloadQueue(disk_budget_gib)

    def add(self, items: list[Wanted]) -> None:
        self.queue.add(items)

    def ready(self, item: Wanted) -> tuple[float, float] | None:
        """Once its download has ended: when it began and ended (None: nothing to fetch)."""
        download: Download | None = self.queue.ready(item)
        return None if download is None else (download.started_at, download.finished_at)

    def drop(self, repo: str, commit: str) -> None:
        self.queue.drop(repo, commit)

    def finished(self, repo: str, commit: str) -> None:
        self.queue.finished(repo, commit)


@ray.remote
class CheckpointWorker:
    def __init__(self, threads: int, gpus: float, memory_limit_gib: float | None = None):
        torch.set_num_threads(threads)
        self.device = pick_device(gpus > 0, gpus)
        if memory_limit_gib and self.device != "cpu":
            limit_gpu_memory(memory_limit_gib)
        self.cpu_memory_limit_gib = memory_limit_gib if self.device == "cpu" else None
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node = f"{socket.gethostname()}:{self.node_id[:8]}"

    def cached(self, keys: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
        """This worker's node, and which (repo, commit) its hub cache already holds."""
        cache = hub_cache_dir()
        return self.node_id, [k for k in keys if snapshot_complete(k[0], k[1], cache)]

    def run(self, task: UnitTask, reference_refs: dict, downloads=None) -> UnitResult:
        """One unit; ``downloads``: the node's ``NodeDownloads``, through which the unit's
        checkpoint arrives (queued by the driver, perhaps already there)."""
        ref = task.checkpoint
        began, waiting = time.time(), time.perf_counter()
        item = wanted(task, now=True)
        fetched = None
        if downloads is not None and item is not None:
            try:
                fetched = ray.get(downloads.ready.remote(item))
            except Exception:  # the queue's process died: the unit downloads it itself
                downloads = None
        waited = time.perf_counter() - waiting
        try:
            # Object refs nested in a dict are not resolved by Ray: fetch them here.
            references = {key: ray.get(r) for key, r in reference_refs.items()}
            result = run_unit(task, self.device, references, self.cpu_memory_limit_gib)
        finally:
            if downloads is not None and item is not None:  # evictable now, within budget
                downloads.finished.remote(ref.model, task.commit)
        result.node = self.node
        result.started_at = began  # the unit began when this worker took it
        result.fetch_seconds += waited
        result.seconds += waited
        if fetched is not None:
            result.prefetch_started_at, result.prefetch_finished_at = fetched
        return result

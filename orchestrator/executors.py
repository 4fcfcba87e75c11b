"""Backends decide only WHERE units run; the runner owns the lifecycle (skip what is done, run,
persist, mark done). Both yield (task, UnitResult or the exception that lost the unit)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace

from ckptlab.analyses.capture import ReferenceSketch
from ckptlab.orchestrator.cluster import choose_cluster, connect, describe
from ckptlab.orchestrator.worker import UnitResult, UnitTask, pick_device, run_unit
from ckptlab.spec import Resources

Outcome = tuple[UnitTask, UnitResult | Exception]
OnStart = Callable[[UnitTask], None]
References = dict[str, ReferenceSketch]


class InlineExecutor:
    """Runs units one after another in this process (debugging, tests of the lifecycle)."""

    def __init__(self, resources: Resources):
        self.device = pick_device(resources.gpus_per_worker > 0)
        self.description = f"inline: units run one by one in this process on {self.device}"

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def prepare(self, n_tasks: int, say: Callable[[str], None] = print) -> None:
        return None

    def pool_summary(self) -> str:
        return "1 worker (this process)"

    def run(
        self,
        tasks: list[UnitTask],
        on_start: OnStart = lambda t: None,
        references: References | None = None,
    ) -> Iterator[Outcome]:
        for task in tasks:
            on_start(task)
            try:
                yield task, run_unit(task, self.device, references)
            except Exception as err:  # run_unit records its own errors; this is a bug's path
                yield task, err


class ResourceError(RuntimeError):
    """The cluster cannot give what the spec's resources ask for."""


class RayExecutor:
    """One Ray actor per worker slot; each actor takes one unit (one checkpoint) at a time.

    Ray restarts a worker whose process died and retries its unit (``max_retries``); an
    exception inside a unit is recorded by the unit itself and never retried.
    """

    def __init__(
        self, resources: Resources, address: str | None = None, wait_for_workers: float = 0
    ):
        self.resources = resources
        self.wait_for_workers = wait_for_workers
        # Decided now, so that a bad --address or RAY_ADDRESS fails before anything runs.
        self.cluster = choose_cluster(address)
        self._started_ray = False
        self.description = ""
        self.actors: list = []

    def __enter__(self) -> RayExecutor:
        # Tokens are not forwarded: a runtime env is visible in Ray's state API. Local
        # workers inherit this process' environment; cluster nodes need their own HF_TOKEN.
        env = {"TOKENIZERS_PARALLELISM": "false"}
        env |= {k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ}
        self._started_ray = connect(self.cluster, env)
        self.description = describe(self.cluster)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()

    def prepare(self, n_tasks: int, say: Callable[[str], None] = print) -> None:
        """Size the worker pool, waiting (boundedly) for an autoscaling cluster to add the
        nodes one worker needs; ResourceError when none can hold one."""
        import ray

        r = self.resources
        deadline = time.monotonic() + self.wait_for_workers
        if self.wait_for_workers and not self._slots():
            from ray.autoscaler.sdk import request_resources

            bundle = {"CPU": r.cpus_per_worker} | (
                {"GPU": r.gpus_per_worker} if r.gpus_per_worker else {}
            )
            request_resources(bundles=[bundle] * (r.workers or 1))
            say(
                f"waiting up to {self.wait_for_workers:g}s for the cluster to add a node with "
                f"{bundle}"
            )
        while not self._slots() and time.monotonic() < deadline:
            time.sleep(5)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        slots = self._slots()
        if slots == 0:
            gpus = sum(n.get("GPU", 0) for n in nodes)
            if r.gpus_per_worker > 0 and gpus < r.gpus_per_worker:
                raise ResourceError(
                    f"resources.gpus_per_worker={r.gpus_per_worker} but the cluster has "
                    f"{gpus:g} GPUs (--wait-for-workers lets an autoscaling cluster add them)"
                )
            largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
            raise ResourceError(
                f"no node can hold one worker ({r.cpus_per_worker:g} CPU, "
                f"{r.gpus_per_worker:g} GPU): the largest has {largest.get('CPU', 0):g} CPU, "
                f"{largest.get('GPU', 0):g} GPU"
            )
        wanted = r.workers or slots
        self.n_workers = max(1, min(wanted, slots, n_tasks))

    def _slots(self) -> int:
        """Workers that fit the cluster, counted node by node: an actor needs its CPUs and
        GPUs on one node, and one that fits nowhere would wait forever."""
        import ray

        r = self.resources

        def fits(node: dict) -> int:
            slots = int(node.get("CPU", 0) // r.cpus_per_worker)
            if r.gpus_per_worker > 0:
                slots = min(slots, int(node.get("GPU", 0) // r.gpus_per_worker))
            return slots

        return sum(fits(n["Resources"]) for n in ray.nodes() if n.get("Alive"))

    def pool_summary(self) -> str:
        r = self.resources
        each = f"{r.cpus_per_worker:g} CPU" + (
            f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
        )
        return f"{self.n_workers} worker{'s' * (self.n_workers != 1)} ({each} each)"

    def _actors(self, wanted: int) -> list:
        """The worker pool, started once per executor and reused by every wave of units."""
        from ckptlab.orchestrator.ray_worker import CheckpointWorker

        r = self.resources
        while len(self.actors) < min(self.n_workers, wanted):
            self.actors.append(
                CheckpointWorker.options(
                    num_cpus=r.cpus_per_worker,
                    num_gpus=r.gpus_per_worker,
                    max_restarts=r.max_retries,
                    max_task_retries=r.max_retries,
                ).remote(threads=max(1, int(r.cpus_per_worker)), want_gpu=r.gpus_per_worker > 0)
            )
        return self.actors

    def run(
        self,
        tasks: list[UnitTask],
        on_start: OnStart = lambda t: None,
        references: References | None = None,
    ) -> Iterator[Outcome]:
        """Units on the pool, one per actor at a time; yields (task, result or the exception
        that lost it) as they finish."""
        import ray

        if not tasks:
            return
        # Each sketch goes into the object store once; actors read it from there (zero-copy
        # on a node) instead of receiving a copy with every task.
        stored = {key: ray.put(sketch) for key, sketch in (references or {}).items()}
        queue = deque(tasks)
        in_flight = {}

        def submit(actor) -> None:
            task = queue.popleft()
            on_start(task)
            wanted = {c.reference_key for c in task.cells if c.reference_key in stored}
            # The driver's hub path may not exist on a cluster's nodes: each finds its own.
            remote = replace(task, hub_dir=None)
            in_flight[actor.run.remote(remote, {key: stored[key] for key in wanted})] = (
                actor,
                task,
            )

        for actor in self._actors(len(tasks)):
            if queue:
                submit(actor)
        while in_flight:
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            actor, task = in_flight.pop(ready)
            try:
                yield task, ray.get(ready)
            except Exception as err:  # the worker died beyond its retries
                yield task, err
            if queue:
                submit(actor)

"""Backends decide only WHERE units run; the runner owns the lifecycle (skip what is done, run,
persist, mark done). Both yield (task, UnitResult or the exception that lost the unit)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator

from ckptlab.analyses.capture import ReferenceSketch
from ckptlab.orchestrator.cluster import choose_cluster, connect, describe
from ckptlab.orchestrator.worker import (
    SketchTask,
    UnitResult,
    UnitTask,
    pick_device,
    run_sketch,
    run_unit,
)
from ckptlab.spec import Resources

Outcome = tuple[UnitTask, UnitResult | Exception]
SketchOutcome = tuple[SketchTask, ReferenceSketch | Exception]
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

    def prepare(self, n_tasks: int) -> str:
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

    def run_sketches(self, tasks: list[SketchTask]) -> Iterator[SketchOutcome]:
        for task in tasks:
            try:
                yield task, run_sketch(task, self.device)
            except Exception as err:
                yield task, err


class ResourceError(RuntimeError):
    """The cluster cannot give what the spec's resources ask for."""


class RayExecutor:
    """One Ray actor per worker slot; each actor takes one unit (one checkpoint) at a time.

    Ray restarts a worker whose process died and retries its unit (``max_retries``); an
    exception inside a unit is recorded by the unit itself and never retried.
    """

    def __init__(self, resources: Resources, address: str | None = None):
        self.resources = resources
        # Decided now, so that a bad --address or RAY_ADDRESS fails before anything runs.
        self.cluster = choose_cluster(address)
        self._started_ray = False
        self.description = ""

    def __enter__(self) -> RayExecutor:
        # Tokens are not forwarded: a runtime env is visible in Ray's state API. Local
        # workers inherit this process' environment; cluster nodes need their own HF_TOKEN.
        env = {"TOKENIZERS_PARALLELISM": "false"}
        env |= {k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ}
        self._started_ray = connect(self.cluster, env)
        self.description = describe(self.cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()

    def prepare(self, n_tasks: int) -> str:
        """Size the worker pool; says what it is (or raises ResourceError)."""
        self.n_workers = self.worker_count(n_tasks)
        r = self.resources
        each = f"{r.cpus_per_worker:g} CPU" + (
            f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
        )
        return f"{self.n_workers} worker{'s' * (self.n_workers != 1)} ({each} each)"

    def worker_count(self, n_tasks: int) -> int:
        """Workers that fit the cluster, counted node by node: an actor needs its CPUs and
        GPUs on one node, and one that fits nowhere would wait forever."""
        import ray

        r = self.resources
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        gpus = sum(n.get("GPU", 0) for n in nodes)
        if r.gpus_per_worker > 0 and gpus < r.gpus_per_worker:
            raise ResourceError(
                f"resources.gpus_per_worker={r.gpus_per_worker} but the cluster has {gpus:g} GPUs"
            )

        def fits(node: dict) -> int:
            slots = int(node.get("CPU", 0) // r.cpus_per_worker)
            if r.gpus_per_worker > 0:
                slots = min(slots, int(node.get("GPU", 0) // r.gpus_per_worker))
            return slots

        slots = sum(fits(node) for node in nodes)
        if slots == 0:
            largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
            raise ResourceError(
                f"no node can hold one worker ({r.cpus_per_worker:g} CPU, "
                f"{r.gpus_per_worker:g} GPU): the largest has {largest.get('CPU', 0):g} CPU, "
                f"{largest.get('GPU', 0):g} GPU"
            )
        wanted = r.workers or slots
        return max(1, min(wanted, slots, n_tasks))

    def _map(self, items: list, submit_one, on_start=lambda item: None) -> Iterator[tuple]:
        """Run items on a pool of worker actors, one item per actor at a time; yields
        (item, result or the exception that lost it) as they finish."""
        import ray

        from ckptlab.orchestrator.ray_worker import CheckpointWorker

        if not items:
            return
        r = self.resources
        actors = [
            CheckpointWorker.options(
                num_cpus=r.cpus_per_worker,
                num_gpus=r.gpus_per_worker,
                max_restarts=r.max_retries,
                max_task_retries=r.max_retries,
            ).remote(threads=max(1, int(r.cpus_per_worker)), want_gpu=r.gpus_per_worker > 0)
            for _ in range(min(self.n_workers, len(items)))
        ]
        queue = deque(items)
        in_flight = {}

        def submit(actor) -> None:
            item = queue.popleft()
            on_start(item)
            in_flight[submit_one(actor, item)] = (actor, item)

        try:
            for actor in actors:
                if queue:
                    submit(actor)
            while in_flight:
                [ready], _ = ray.wait(list(in_flight), num_returns=1)
                actor, item = in_flight.pop(ready)
                try:
                    yield item, ray.get(ready)
                except Exception as err:  # the worker died beyond its retries
                    yield item, err
                if queue:
                    submit(actor)
        finally:
            for actor in actors:
                ray.kill(actor)

    def run(
        self,
        tasks: list[UnitTask],
        on_start: OnStart = lambda t: None,
        references: References | None = None,
    ) -> Iterator[Outcome]:
        import ray

        # Each sketch goes into the object store once; actors read it from there (zero-copy
        # on a node) instead of receiving a copy with every task.
        stored = {key: ray.put(sketch) for key, sketch in (references or {}).items()}

        def submit_one(actor, task: UnitTask):
            wanted = {c.reference_key for c in task.cells if c.reference_key in stored}
            return actor.run.remote(task, {key: stored[key] for key in wanted})

        yield from self._map(tasks, submit_one, on_start)

    def run_sketches(self, tasks: list[SketchTask]) -> Iterator[SketchOutcome]:
        yield from self._map(tasks, lambda actor, task: actor.sketch.remote(task))

"""Backends decide only WHERE units run; the runner owns the lifecycle (skip what is done, run,
persist, mark done). Both yield (task, UnitResult or the exception that lost the unit).

The ``Executor`` protocol is what the runner calls; ``InlineExecutor`` runs units one by one in
this process, ``RayExecutor`` on Ray actors sized per model (``placement.py``), with each node's
downloads queued ahead (``prefetch.py``).

Owns: the workers, their shapes and pools, which worker takes which unit, and the downloads
queued ahead. Must not: write results or log to MLflow (the runner does, with what ``run``
yields), or import Ray or torch at module level (``ray_worker.py`` is imported once Ray is
wanted).
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol

from ckptlab.analyses.capture import ReferenceSketch
from ckptlab.orchestrator.cluster import Boot, choose_cluster, describe
from ckptlab.orchestrator.placement import GPU_STEP, PlacementError, Shape, worker_shape
from ckptlab.orchestrator.prefetch import DownloadQueue, Wanted, wanted
from ckptlab.orchestrator.reaper import start_reaper
from ckptlab.orchestrator.unit import UnitResult, UnitTask
from ckptlab.orchestrator.worker import pick_device, run_unit
from ckptlab.spec import Resources

Outcome = tuple[UnitTask, UnitResult | Exception]
OnStart = Callable[[UnitTask], None]
References = dict[str, ReferenceSketch]


class Executor(Protocol):
    """Where units run. The runner owns the lifecycle and calls, in this order: ``warm_up``
    (maybe, while it plans), ``download_ahead``, ``with executor:``, ``prepare``,
    ``start_workers``, ``run`` (once per wave), and ``close`` (always, also when nothing ran)."""

    description: str  # one line: where units run

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc) -> None: ...

    def warm_up(self) -> None:
        """Start what takes seconds to start (a Ray), in the background."""

    def download_ahead(self, items: list[Wanted]) -> None:
        """Start downloading the run's first checkpoints where that is this machine."""

    def prepare(
        self,
        tasks_per_model: dict[str, int] | None = None,
        demand: Callable[[], dict[str, int]] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        """Size the workers; raises ResourceError (one line) when they cannot exist."""

    def start_workers(self, model: str | None = None) -> None:
        """Start the workers of ``model``'s units, without waiting for them."""

    def pool_summary(self) -> str: ...

    def run(
        self,
        tasks: list[UnitTask],
        on_start: OnStart = ...,
        references: References | None = None,
    ) -> Iterator[Outcome]:
        """Run the units; yield (task, its result or the exception that lost it) as each
        finishes."""

    def close(self) -> None:
        """Release what ``warm_up`` or ``__enter__`` started; a no-op the second time."""


class InlineExecutor:
    """Runs units one after another in this process (debugging, tests of the lifecycle)."""

    def __init__(self, resources: Resources):
        self.device = pick_device(
            resources.gpus_per_worker == "auto" or resources.gpus_per_worker > 0
        )
        self.description = f"inline: units run one by one in this process on {self.device}"

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def warm_up(self) -> None:
        return None

    def download_ahead(self, items: list[Wanted]) -> None:
        return None

    def close(self) -> None:
        return None

    def prepare(
        self, tasks_per_model=None, demand=None, say: Callable[[str], None] = print
    ) -> None:
        return None

    def start_workers(self, model: str | None = None) -> None:
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


ACTOR_START_S = 300.0  # how long a worker may take to start (imports, a GPU context)
EARLY_DOWNLOADS = 2  # per worker: what the driver downloads before the units start


class ResourceError(RuntimeError):
    """The cluster cannot give what the spec's resources ask for."""


class RayExecutor:
    """Ray actors, each taking one unit (one checkpoint) at a time.

    A worker's size follows its model (``placement``): units of small models share GPUs,
    large ones get whole GPUs. Units run grouped by worker size, one pool at a time, so a
    pool never waits for resources another holds. While an actor computes a unit, the next
    unit it will take is already downloading (``prefetch``), and a unit whose checkpoint a
    node's cache already holds goes to that node's actor first. Ray restarts a worker whose
    process died and retries its unit (``max_retries``); an exception inside a unit is
    recorded by the unit itself and never retried.
    """

    def __init__(
        self, resources: Resources, address: str | None = None, wait_for_workers: float = 0
    ):
        self.resources = resources
        self.wait_for_workers = wait_for_workers
        # Decided now, so that a bad --address or RAY_ADDRESS fails before anything runs.
        self.cluster = choose_cluster(address)
        self._boot: Boot | None = None
        self.description = ""
        self.shapes: dict[str, Shape] = {}  # model -> its workers' shape
        self.downloads: dict[str, object] = {}  # node id -> its NodeDownloads actor
        self._orders = itertools.count(1)  # the order units' checkpoints are queued in
        self._early: DownloadQueue | None = None  # the driver's, until the node's takes over
        self.pool_sizes: dict[Shape, int] = {}
        self.pools: dict[Shape, list] = {}

    def warm_up(self) -> None:
        """Start connecting to Ray now, on a thread (seconds for a private Ray), while the
        driver goes on planning; ``__enter__`` waits for it. Called again, it does nothing."""
        if self._boot is not None or self.cluster.source == "existing":
            return
        # Tokens are not forwarded: a runtime env is visible in Ray's state API. Local
        # workers inherit this process' environment; cluster nodes need their own HF_TOKEN.
        env = {"TOKENIZERS_PARALLELISM": "false"}
        env |= {k: os.environ[k] for k in ("HF_HUB_OFFLINE",) if k in os.environ}
        if self.cluster.private:  # its processes must not outlive this one, however it ends
            start_reaper()
        self._boot = Boot(self.cluster, env, then=self._start_workers_early)

    def _start_workers_early(self) -> None:
        """On the boot thread, once Ray is up: start the workers now when no model can change
        their shape (no GPU share to size to a model), so that their processes and imports
        (seconds) overlap the rest of planning; ``prepare`` then trims them to the units."""
        r = self.resources
        if r.gpus_per_worker == "auto" and any(n.get("GPU", 0) for n in self._nodes()):
            return
        shape = worker_shape(0, r.cpus_per_worker, r.gpus_per_worker, None, 0)
        slots = self._slots(shape)
        if slots:
            self.pool_sizes = {shape: min(r.workers or slots, slots)}
            self._pool(shape)

    def download_ahead(self, items: list[Wanted]) -> None:
        """On a private Ray (this machine is the node), start downloading the run's first
        checkpoints now, in this process, while Ray and the workers start; the node's queue
        takes over when the units start (a download under way finishes: the hub client's file
        lock makes the node's queue wait for it rather than fetch it again). Not with a disk
        budget: the node's queue alone counts what it holds."""
        r = self.resources
        if not (self.cluster.private and items and r.prefetch) or r.disk_budget_gib is not None:
            return
        # Its downloads are files fetched one by one on its own daemon thread: a Ctrl-C (or
        # an error) before the units start never waits for a download to end.
        self._early = DownloadQueue(None, per_file=True)
        self._early.add(items[: EARLY_DOWNLOADS * max(1, r.workers or os.cpu_count() or 1)])

    def __enter__(self) -> RayExecutor:
        self.warm_up()
        if self._boot is not None:
            try:
                self._boot.wait()  # a cluster that refuses us raises here
            except BaseException:
                self.close()
                raise
        self.description = describe(self.cluster)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        try:
            for shape in list(self.pools):
                self._stop_pool(shape)
            for queue in self.downloads.values():
                ray.kill(queue)
            self.downloads = {}
        finally:
            self.close()

    def close(self) -> None:
        """Stop the driver's downloads and shut down the Ray this executor started, a
        warm-up's included (a plan that then had nothing to run); a no-op the second time."""
        if self._early is not None:
            self._early.stop()
        boot, self._boot = self._boot, None
        if boot is None:
            return
        try:
            if boot.wait():
                import ray

                ray.shutdown()
        except Exception:  # it never started: the error was (or will be) reported by wait
            pass
        finally:
            boot.release()

    # ---------------------------------------------------------------- sizing the workers

    @staticmethod
    def _nodes() -> list[dict]:
        import ray

        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def _gpu_bytes(self) -> float | None:
        """One GPU's memory: the spec's resources.gpu_memory_gib, else read on a GPU node."""
        if self.resources.gpu_memory_gib:
            return self.resources.gpu_memory_gib * 2**30
        import ray

        @ray.remote(num_gpus=GPU_STEP, num_cpus=0)
        def gpu_memory() -> float | None:
            import torch

            return (
                torch.cuda.get_device_properties(0).total_memory
                if torch.cuda.is_available()
                else None
            )

        try:
            return ray.get(gpu_memory.remote(), timeout=120)
        except Exception:
            return None

    def _slots(self, shape: Shape) -> int:
        """Workers of ``shape`` that fit the cluster, counted node by node: an actor needs
        its CPUs and GPUs on one node, and one that fits nowhere would wait forever."""

        def fits(node: dict) -> int:
            slots = int(node.get("CPU", 0) // shape.cpus + 1e-9) if shape.cpus else 1 << 30
            gpus = node.get("GPU", 0)
            if 0 < shape.gpus < 1:  # a share must fit inside one GPU: Ray never splits one
                slots = min(slots, int(gpus + 1e-9) * int(1 / shape.gpus + 1e-9))
            elif shape.gpus >= 1:
                slots = min(slots, int(gpus // shape.gpus + 1e-9))
            return slots

        return sum(fits(node) for node in self._nodes())

    def prepare(
        self,
        tasks_per_model: dict[str, int] | None = None,
        demand: Callable[[], dict[str, int]] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        """Size every model's workers, waiting (boundedly) for an autoscaling cluster to add a
        node that can hold them; ResourceError (one line) when a model fits no node.
        ``demand()``: bytes one unit of each model needs, asked for only when GPU shares are
        sized to the model (it counts parameters on torch's meta device: seconds of imports
        in the driver); a CPU worker's shape is the spec's whatever the model."""
        r = self.resources
        tasks_per_model = tasks_per_model or {}
        gpu_total = sum(n.get("GPU", 0) for n in self._nodes())
        if (
            r.gpus_per_worker != "auto"
            and r.gpus_per_worker > gpu_total
            and not self.wait_for_workers
        ):
            raise ResourceError(
                f"resources.gpus_per_worker={float(r.gpus_per_worker)} but the cluster has "
                f"{gpu_total:g} GPUs (--wait-for-workers lets an autoscaling cluster add them)"
            )
        max_gpus = max((n.get("GPU", 0) for n in self._nodes()), default=0)
        gpu_bytes = self._gpu_bytes() if r.gpus_per_worker == "auto" and max_gpus else None
        if r.gpus_per_worker == "auto" and max_gpus and gpu_bytes is None:
            say(
                "note: the cluster declares GPUs that torch cannot see on their nodes (no "
                "CUDA?): workers run on CPUs; set resources.gpu_memory_gib or gpus_per_worker "
                "to place them on those GPUs"
            )
            max_gpus = 0
        if r.gpus_per_worker == "auto" and max_gpus and demand is not None:
            need_of = demand()
        else:
            need_of = dict.fromkeys(tasks_per_model, 0)
        try:
            self.shapes = {
                model: worker_shape(need, r.cpus_per_worker, r.gpus_per_worker, gpu_bytes,
                                    max_gpus)
                for model, need in need_of.items()
            }  # fmt: skip
        except PlacementError as err:
            raise ResourceError(str(err)) from None
        default = worker_shape(0, r.cpus_per_worker, r.gpus_per_worker, gpu_bytes, max_gpus)
        self.default_shape = default
        wanted = {default: 1} if not self.shapes else {}
        for model, shape in self.shapes.items():
            wanted[shape] = wanted.get(shape, 0) + tasks_per_model.get(model, 1)
        self._wait_for(list(wanted), say)
        self.pool_sizes = {}
        for shape, count in wanted.items():
            slots = self._slots(shape)
            if slots == 0:
                self._refuse(shape, need_of, gpu_bytes)
            self.pool_sizes[shape] = max(1, min(r.workers or slots, slots, count))

    def _wait_for(self, shapes: list[Shape], say: Callable[[str], None]) -> None:
        missing = [s for s in shapes if not self._slots(s)]
        if not (missing and self.wait_for_workers):
            return
        from ray.autoscaler.sdk import request_resources

        bundles = [{"CPU": s.cpus} | ({"GPU": s.gpus} if s.gpus else {}) for s in missing]
        request_resources(bundles=bundles)
        say(f"waiting up to {self.wait_for_workers:g}s for the cluster to add nodes for {bundles}")
        deadline = time.monotonic() + self.wait_for_workers
        while any(not self._slots(s) for s in missing) and time.monotonic() < deadline:
            time.sleep(5)

    def _refuse(self, shape: Shape, demand: dict[str, int], gpu_bytes: float | None) -> None:
        nodes = self._nodes()
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        models = [m for m, s in self.shapes.items() if s == shape]
        if models and shape.gpus > 1 and demand.get(models[0]):  # sized to the model
            gib = demand[models[0]] / 2**30
            per = f"{gpu_bytes / 2**30:.0f} GiB GPUs" if gpu_bytes else "GPUs"
            raise ResourceError(
                f"{models[0]} needs ~{gib:.1f} GiB per unit: {shape.gpus:g} {per} on one node, "
                f"and the largest node has {largest.get('GPU', 0):g}"
            )
        raise ResourceError(
            f"no node can hold one worker ({shape.describe()}): the largest has "
            f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU"
        )

    def start_workers(self, model: str | None = None) -> None:
        """Create the pool that ``model``'s units will run on, without waiting for it: its
        actor processes start and import (seconds) while the driver sets up the results DB
        and MLflow; ``run`` then finds them ready."""
        shape = self.shapes.get(model) if model else None
        shape = shape or getattr(self, "default_shape", None)
        if shape is not None:
            self._pool(shape)

    def pool_summary(self) -> str:
        sizes = ", ".join(
            f"{n} worker{'s' * (n != 1)} ({shape.describe()} each)"
            for shape, n in self.pool_sizes.items()
        )
        return sizes

    # ---------------------------------------------------------------- the pools

    def _pool(self, shape: Shape) -> list:
        """The workers of one shape, started once and reused by every wave of units; other
        shapes' workers are stopped first, so they never hold what this pool needs."""
        import ray

        from ckptlab.orchestrator.ray_worker import CheckpointWorker

        for other in [s for s in self.pools if s != shape]:
            self._stop_pool(other)
        only = self._only_node()
        if only is not None:  # one machine: its download queue starts with the workers
            self._downloads_on(only)
        r = self.resources
        pool = self.pools.setdefault(shape, [])
        while len(pool) > self.pool_sizes.get(shape, 1):  # started early, more than needed
            ray.kill(pool.pop())
        while len(pool) < self.pool_sizes.get(shape, 1):
            pool.append(
                CheckpointWorker.options(
                    num_cpus=shape.cpus,
                    num_gpus=shape.gpus,
                    max_restarts=r.max_retries,
                    max_task_retries=r.max_retries,
                ).remote(
                    threads=max(1, int(shape.cpus)),
                    gpus=shape.gpus,
                    memory_limit_gib=r.memory_limit_gib,
                )
            )
        return pool

    @staticmethod
    def _only_node() -> str | None:
        """The cluster's node id when it has exactly one (one machine), else None."""
        import ray

        alive = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
        return alive[0] if len(alive) == 1 else None

    def _downloads_on(self, node: str | None):
        """The node's download queue (``NodeDownloads``), started once per node and kept
        across pools: what it downloaded is what its disk budget counts."""
        if node is None:
            return None
        if node not in self.downloads:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from ckptlab.orchestrator.ray_worker import NodeDownloads

            self.downloads[node] = NodeDownloads.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                max_restarts=-1,
            ).remote(self.resources.disk_budget_gib)
        return self.downloads[node]

    def _stop_pool(self, shape: Shape) -> None:
        import ray

        for actor in self.pools.pop(shape, []):
            ray.kill(actor)

    def run(
        self,
        tasks: list[UnitTask],
        on_start: OnStart = lambda t: None,
        references: References | None = None,
    ) -> Iterator[Outcome]:
        """Units on the pools, one per actor at a time, each node's checkpoints queued on its
        one download link in the order its actors will take them (a unit's own first, then
        the next one each actor will take); yields (task, result or the exception that lost
        it) as they finish."""
        import ray

        if not tasks:
            return
        # Each sketch goes into the object store once; actors read it from there (zero-copy
        # on a node) instead of receiving a copy with every task.
        stored = {key: ray.put(sketch) for key, sketch in (references or {}).items()}
        groups: dict[Shape, list[UnitTask]] = {}
        for task in tasks:
            shape = self.shapes.get(task.checkpoint.model, getattr(self, "default_shape", None))
            groups.setdefault(shape or Shape(self.resources.cpus_per_worker, 0.0), []).append(task)
        for shape, group in groups.items():
            yield from self._run_pool(self._pool(shape), group, on_start, stored)

    def _run_pool(self, pool: list, tasks: list[UnitTask], on_start, stored) -> Iterator[Outcome]:
        import ray

        queue = deque(tasks)
        if self._early is not None:
            self._early.stop()
        only = self._only_node()
        if only is not None:
            # One machine: the first units' checkpoints start downloading now, in the order
            # the units will be taken, while the workers start (seconds of imports).
            per_actor = 2 if self.resources.prefetch else 1  # its first unit, and its next
            ahead = [wanted(t, order=next(self._orders)) for t in tasks[: per_actor * len(pool)]]
            if any(ahead):
                self._downloads_on(only).add.remote([item for item in ahead if item])
        # Where each checkpoint already is: a node's actor takes the units its cache holds.
        # This first call also tells which actors came up: one Ray cannot place is dropped.
        keys = [(t.checkpoint.model, t.commit) for t in tasks if t.checkpoint.source == "hub"]
        asked = {actor.cached.remote(keys): actor for actor in pool}
        ready, pending = ray.wait(list(asked), num_returns=len(asked), timeout=ACTOR_START_S)
        for ref in pending:
            ray.kill(asked[ref])
            pool.remove(asked[ref])
        if not pool:
            raise ResourceError(f"no worker started within {ACTOR_START_S:g}s")
        held, nodes = [], []
        refs_of = {actor: ref for ref, actor in asked.items()}
        for actor in pool:  # in pool order: held[i] is what actor i's node holds
            try:
                node, keys = ray.get(refs_of[actor])
            except Exception:  # a worker that died at start: Ray restarts it
                node, keys = None, []
            nodes.append(node)
            held.append(set(map(tuple, keys)))
        reserved: dict = {}  # actor index -> the task it downloads now and takes next
        in_flight = {}

        def key(task: UnitTask) -> tuple[str, str]:
            return task.checkpoint.model, task.commit

        def take(index: int) -> UnitTask | None:
            """The next unit for actor ``index``: one its node's cache holds, else one no
            other node holds, else the next in line."""
            if not queue:
                return None
            others = set().union(*(h for j, h in enumerate(held) if j != index))
            chosen = next((i for i, t in enumerate(queue) if key(t) in held[index]), None)
            if chosen is None:
                chosen = next((i for i, t in enumerate(queue) if key(t) not in others), 0)
            task = queue[chosen]
            del queue[chosen]
            return task

        def steal(index: int) -> UnitTask | None:
            """At the end, an idle actor takes a unit another is only downloading."""
            for other in list(reserved):
                if other != index:
                    task = reserved.pop(other)
                    downloads = self._downloads_on(nodes[other])
                    if nodes[other] != nodes[index] and downloads is not None:
                        downloads.drop.remote(*key(task))  # its own node fetches it now
                    return task
            return None

        def submit(index: int, task: UnitTask | None = None) -> None:
            task = task or reserved.pop(index, None) or take(index) or steal(index)
            if task is None:
                return
            upcoming = take(index) if self.resources.prefetch else None
            if upcoming is not None:
                reserved[index] = upcoming
            on_start(task)
            downloads = self._downloads_on(nodes[index])
            if downloads is not None:  # this unit's checkpoint first (the actor waits), then next
                items = [wanted(task, now=True, order=next(self._orders))]
                if upcoming is not None:
                    items.append(wanted(upcoming, order=next(self._orders)))
                if any(items):
                    downloads.add.remote([item for item in items if item])
            needed = {c.sketch_key for c in task.cells if c.sketch_key in stored}
            # The driver's hub path may not exist on a cluster's nodes: each finds its own.
            remote = replace(task, hub_dir=None)
            ref = pool[index].run.remote(remote, {k: stored[k] for k in needed}, downloads)
            in_flight[ref] = (index, task)

        # Every actor's first unit before any actor's next one: the order they will run in,
        # and the order the node's downloads were queued in above.
        firsts = [take(index) for index in range(len(pool))]
        for index, task in enumerate(firsts):
            if task is not None:
                submit(index, task)
        while in_flight:
            [ready], _ = ray.wait(list(in_flight), num_returns=1)
            index, task = in_flight.pop(ready)
            try:
                outcome = ray.get(ready)
            except Exception as err:  # the worker died beyond its retries
                outcome = err
            # The actor's next unit goes out BEFORE the runner persists this one (DuckDB and
            # MLflow writes, ~0.1-0.2 s a unit): the worker computes while the driver writes,
            # instead of idling through every persist.
            submit(index)
            early = self._early.downloads.get(key(task)) if self._early else None
            if isinstance(outcome, UnitResult) and early and early.finished_at and not early.error:
                # The driver downloaded it: the node's queue then found it, or only waited on
                # the hub client's file lock for the end of it. The download is the driver's.
                outcome.prefetch_started_at = early.started_at
                outcome.prefetch_finished_at = early.finished_at
            yield task, outcome

"""The driver computes the first units itself while its workers start.

A private Ray on this machine takes seconds to start, and each worker then seconds more to
import torch and transformers (measured on 2 cores: ``ray.init`` 4.0 s, a worker ready 4.7 s
after it). The driver is up as soon as the plan is made, so it runs units meanwhile, one at a
time on a thread of its own, from the same queue the workers will take from; it stops taking
them when the workers are up. Its units are ordinary units: the runner persists them like any
other (``units.node`` says "driver").

It runs only where that cannot hurt: CPU workers on this machine (no GPU to share with them),
no per-worker memory cap (the driver's process cannot be capped without capping the results
store), and a checkpoint whose weights are small beside the memory free now and already here
(cached, or brought by the run's own downloads: it never opens a download of its own beside
the node's one queue, whose order and disk budget are the node's).

Owns: which of the run's first units the driver takes, and their outcomes until the executor
yields them. Must not: schedule workers (``executors.py``) or persist results (``runner.py``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

from ckptlab.orchestrator.unit import UnitResult, UnitTask
from ckptlab.orchestrator.worker import run_unit

Outcome = tuple[UnitTask, UnitResult | Exception]

# A unit's weight bytes times this must fit in the memory available when the driver takes it:
# float16 files become float32 (2x) beside the workers' own copies, the activations and the
# analyses' states. Saving seconds of start-up is never worth swapping.
MEMORY_HEADROOM = 16
ARRIVAL_POLL_S = 0.1  # how often it looks for the weights of a unit that is downloading


def fits_in_memory(task: UnitTask) -> bool:
    """Whether the driver may hold this unit's model beside its workers' (size known)."""
    import psutil

    if task.weight_bytes is None:
        return False
    return task.weight_bytes * MEMORY_HEADROOM <= psutil.virtual_memory().available


class DriverLane:
    """Units run in this process, one at a time, while the workers start.

    ``share(tasks)`` hands it a wave's queue (the deque the executor will take from), ``stop``
    ends its taking (the unit under way finishes), and ``finished()`` gives the outcomes not
    yet handed on. The executor stops it before its own taking begins, so the two never take
    from the queue at once."""

    def __init__(
        self,
        tasks: list[UnitTask],
        references: dict,
        arrived: Callable[[UnitTask], bool | None] = lambda task: True,
    ):
        """``arrived(task)``: True when the unit's weights are on this machine, None while
        the run's downloads are bringing them (it waits), False when nothing will (it stops
        taking units: the workers' queue fetches them)."""
        self._arrived = arrived
        self._lock = threading.Lock()
        self._queue: deque[UnitTask] = deque()
        self._references = references
        self._claimed: set = set()  # checkpoints it took, in any wave
        self._outcomes: list[Outcome] = []
        self._outstanding = 0  # taken, and not yet handed on by finished()
        self._changed = threading.Condition(self._lock)
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.share(tasks, references)

    def share(self, tasks: list[UnitTask], references: dict) -> deque[UnitTask]:
        """The queue of ``tasks`` that the driver takes from until ``stop``: those it has not
        taken already (in an earlier call)."""
        with self._lock:
            self._queue = deque(t for t in tasks if t.checkpoint not in self._claimed)
            self._references = references
            if not self._stopped and self._queue and self._thread is None:
                self._thread = threading.Thread(
                    target=self._take_units, name="ckptlab-driver-units", daemon=True
                )
                self._thread.start()
            return self._queue

    def upcoming(self, count: int) -> list[UnitTask]:
        """The next ``count`` units of the shared queue (whoever takes them)."""
        with self._lock:
            return list(self._queue)[:count]

    def stop(self) -> None:
        """Take no more units; the one under way finishes and is handed on."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    @property
    def stopped(self) -> bool:
        with self._lock:
            return self._stopped

    @property
    def active(self) -> bool:
        """It may still take a unit, one runs, or an outcome waits for ``finished()``."""
        with self._lock:
            return self._thread is not None or self._outstanding > 0

    def wait(self, timeout: float) -> None:
        """Until an outcome is ready or it stops taking units (or ``timeout`` seconds)."""
        with self._changed:
            if not self._outcomes and self._thread is not None:
                self._changed.wait(timeout)

    def finished(self) -> Iterator[Outcome]:
        """The outcomes of the units it finished since the last call."""
        with self._lock:
            done, self._outcomes = self._outcomes, []
            self._outstanding -= len(done)
        yield from done

    def _take_units(self) -> None:
        """The thread: units one by one until stopped, out of units or at one it may not
        take. However it ends, it says so (``active`` turns false once its outcomes are
        handed on): the executor waits on it, and must never wait for a thread that died."""
        try:
            if gpu_visible():  # the workers will use the GPU: the driver holds no model
                self.stop()
            while (claimed := self._claim()) is not None:
                self._run(*claimed)
        finally:
            with self._changed:
                self._thread = None
                self._changed.notify_all()

    def _claim(self) -> tuple[UnitTask, dict] | None:
        """The queue's next unit, now the driver's, with its wave's sketches; None to stop
        taking (stopped, empty, too large, or its weights are not coming); waits while its
        weights are downloading."""
        with self._changed:
            while True:
                task = self._queue[0] if self._queue and not self._stopped else None
                try:
                    here = task is not None and fits_in_memory(task) and self._arrived(task)
                except Exception:  # a cache it cannot read: the workers' queue fetches it
                    here = False
                if here is None:  # on its way: look again soon, or when stopped
                    self._changed.wait(ARRIVAL_POLL_S)
                    continue
                if not here:
                    return None
                self._queue.popleft()
                self._claimed.add(task.checkpoint)
                self._outstanding += 1
                return task, self._references

    def _run(self, task: UnitTask, references: dict) -> None:
        """One unit; its outcome (a result, or what escaped run_unit) is always handed on."""
        try:
            outcome: UnitResult | Exception = run_unit(task, "cpu", references)
        except Exception as err:  # run_unit records its own errors: this is a bug's path
            outcome = err
        except BaseException as err:  # a plug-in's sys.exit(): that unit's, not the run's
            outcome = RuntimeError(f"{type(err).__name__}: {err}")
        with self._changed:
            self._outcomes.append((task, outcome))
            self._changed.notify_all()


def gpu_visible() -> bool:
    from ckptlab.lazy import torch

    return torch.cuda.is_available()

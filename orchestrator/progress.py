"""A run's progress on the console: one bar that advances per finished checkpoint, with the
cells done and an ETA; on anything but a terminal (CI logs, a Ray Job's log), one line per
finished checkpoint instead.

Owns: what the user sees while a run goes. Must not: touch results, MLflow or executors (the
runner tells it what finished).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class _RunEta(TimeRemainingColumn):
    """Time left at the run's average pace so far (elapsed / finished checkpoints). Rich's own
    estimate divides by the gaps between recent finishes, which a pool of workers finishing
    together makes far too short, and it needs two finishes to say anything."""

    def render(self, task: Task) -> Text:
        remaining = remaining_time(task.elapsed, task.completed, task.total)
        text = "-:--:--" if remaining is None else _clock(remaining)
        return Text(text, style="progress.remaining")


def remaining_time(elapsed: float | None, done: float, total: float | None) -> float | None:
    if total is not None and done >= total:
        return 0.0
    if not done or not elapsed or total is None:
        return None
    return elapsed * (total - done) / done


class RunProgress:
    """A run's progress, by checkpoint (unit). Units run on remote workers and report only when
    they finish, so there are no per-checkpoint bars: one bar advances per finished unit, with
    the cells those units held and an ETA, redrawn in place on a terminal. Anywhere else (CI
    logs, pipes, a Ray Job's log) nothing is redrawn: each finished unit's line carries the
    counts and the ETA, and a last line the totals."""

    def __init__(self, console: Console, name: str, units: int, cells: int):
        self.console, self.name = console, name
        self.units, self.cells = units, cells
        self.units_done = self.cells_done = 0
        self.live = console.is_terminal and not console.is_dumb_terminal
        self.started = time.perf_counter()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counts]} · ETA"),
            _RunEta(),
            TextColumn("·"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.bar = self.progress.add_task(name, total=units, counts=self.counts())

    def counts(self) -> str:
        return f"{self.units_done}/{self.units} checkpoints · {self.cells_done}/{self.cells} cells"

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if not self.live:  # the terminal keeps the finished bar; a log gets the totals
            seconds = time.perf_counter() - self.started
            self.console.print(
                f"{self.name}: {self.counts()} in {seconds:.1f}s", highlight=False, soft_wrap=True
            )

    def print(self, line: str, **kwargs) -> None:
        self.progress.console.print(line, soft_wrap=True, **kwargs)

    def unit_done(self, cells: int, line: str) -> None:
        """A unit finished (stored, failed or lost) with ``cells`` cells: its line, then the
        bar."""
        self.units_done += 1
        self.cells_done += cells
        self.progress.update(self.bar, advance=1, counts=self.counts())
        if not self.live:
            elapsed = time.perf_counter() - self.started
            remaining = remaining_time(elapsed, self.units_done, self.units)
            eta = f", ETA {_clock(remaining)}" if remaining else ""
            line += f"  ({self.units_done}/{self.units} checkpoints{eta})"
        self.print(line)

"""Ctrl-C that waits for the write in progress.

DuckDB's Python client checks for signals while a query runs and answers a SIGINT by aborting
the query (``RuntimeError: Query interrupted``, not ``KeyboardInterrupt``), so a Ctrl-C that
lands inside a unit's write transaction showed the user a traceback instead of the clean
"interrupted, run again to resume" stop. A unit's write is a few milliseconds: let it finish,
then stop.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_after_block() -> Iterator[None]:
    """Hold back SIGINT until the block ends, then raise ``KeyboardInterrupt`` (once, however
    many came). Only the main thread can own signal handlers; elsewhere this changes nothing,
    and so does a process where SIGINT is not Python's default handler (a caller's choice)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def is_ctrl_c(err: BaseException) -> bool:
    """A KeyboardInterrupt, or the error DuckDB raises for a SIGINT during a query."""
    return isinstance(err, KeyboardInterrupt) or (
        isinstance(err, RuntimeError) and str(err) == "Query interrupted"
    )

"""Ctrl-C that waits for the write in progress, and DuckDB's form of a Ctrl-C.

DuckDB's Python client checks for signals while a query runs and answers a SIGINT by aborting
the query with ``RuntimeError: Query interrupted`` (DuckDB 2.0, measured; not a
``KeyboardInterrupt``), so a Ctrl-C that lands inside a unit's write transaction showed the
user a traceback instead of the clean "interrupted, run again to resume" stop, and a broad
``except Exception`` around a read swallowed it. A unit's write is milliseconds: the first
Ctrl-C lets it finish, then stops; a second one stops at once (the write rolls back).

Owns: ``sigint_after_block`` and ``is_ctrl_c``. Must not: import DuckDB or a ckptlab module
(``results.py`` wraps its writes in it), or hold back more than the first Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

DUCKDB_INTERRUPTED = "Query interrupted"


@contextmanager
def sigint_after_block() -> Iterator[None]:
    """Hold back the first SIGINT until the block ends, then raise ``KeyboardInterrupt``
    (also when the block raised: that error stays attached as its context). Only the main
    thread owns signal handlers; elsewhere this changes nothing, and so does a process whose
    SIGINT handler is not Python's default (someone else's choice)."""
    previous = signal.getsignal(signal.SIGINT)
    if (
        threading.current_thread() is not threading.main_thread()
        or previous is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []

    def hold(signum, frame) -> None:
        received.append(signum)
        if len(received) > 1:  # Ctrl-C again: the user does not want to wait
            raise KeyboardInterrupt
        sys.stderr.write("finishing the write in progress (Ctrl-C again to abort it)\n")

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if len(received) == 1:
            raise KeyboardInterrupt


def is_ctrl_c(err: BaseException) -> bool:
    """A KeyboardInterrupt, or the error DuckDB raises for a SIGINT during a query."""
    return isinstance(err, KeyboardInterrupt) or (
        isinstance(err, RuntimeError) and str(err) == DUCKDB_INTERRUPTED
    )

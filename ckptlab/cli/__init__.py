"""``ckptlab``: validate, schema, plan, run, submit, jobs, query, prompts, sync, analyses,
suites, pico build, report, export.

Each module registers its commands on the one typer app of ``ckptlab.cli.app``, in the order of
these imports, which is the order ``ckptlab --help`` lists them.

Owns: which command modules there are, and the script's quick end (``script``). Must not: import
``orchestrator/``, the results store or anything heavy at module level: each command imports
what it needs when it runs (tests/test_cli_imports.py).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

from ckptlab.cli.app import app

__all__ = ["app", "main", "script"]

from ckptlab.cli import runs, jobs, results, catalog  # noqa: F401, I001
from ckptlab.cli import report  # noqa: F401
from ckptlab.cli import export  # noqa: F401


def main() -> None:  # pragma: no cover
    """The CLI in this process: `ckptlab.cli.main()` from Python returns through SystemExit."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


def script() -> None:  # pragma: no cover
    """The `ckptlab` script (and `python -m ckptlab`). Once the command is done and every exit
    handler registered while it ran has run (Ray's shutdown, MLflow's, temporary folders'),
    the process ends at once: the interpreter's own teardown (freeing torch, transformers and
    Ray modules object by object) took 2.5 to 5 s after a run on 2 cores (bench/overhead.py,
    "exit"), for nothing anyone reads. The results DB is closed after each write and the
    streams are flushed here. Only the script does this: a Python caller of ``main`` keeps its
    own exit."""
    exit_code = 1
    atexit.register(lambda: _end_now(exit_code))  # runs after every handler registered later
    try:
        main()
    except SystemExit as done:  # a Ctrl-C too: the CLI turns it into exit code 130
        exit_code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        raise


def _end_now(code: int) -> None:
    logging.shutdown()  # its exit handler was registered before ours: it would run after
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)

"""``ckptlab``: validate, plan, run, submit, jobs, query, prompts, analyses, pico build,
report, export.

Each module registers its commands on the one typer app of ``ckptlab.cli.app``, in the order
of these imports, which is the order ``ckptlab --help`` lists them.
"""

from __future__ import annotations

import os

from ckptlab.cli.app import app

__all__ = ["app", "main"]

from ckptlab.cli import runs, jobs, results, catalog  # noqa: F401, I001
from ckptlab.cli import report  # noqa: F401
from ckptlab.cli import export  # noqa: F401


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()

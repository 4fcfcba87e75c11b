"""What every benchmark section shares: the machine line, the date and a markdown table.

Each benchmark module has ``run(smoke: bool = False) -> str`` returning its BENCHMARKS.md
section (starting with ``## ``) and a ``main()`` that prints it; ``bench/run_all.py`` calls
every ``run`` in turn and writes BENCHMARKS.md. ``smoke`` = tiny sizes, for the CI test that
checks the benchmark produces its table (never a speed).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Sequence


def machine() -> str:
    """`2 CPU cores (AMD EPYC 7B13), 24 GiB, torch 2.13.0+cpu` (+ the GPU when one is used)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    line = f"{cores} CPU cores ({cpu}){memory}, torch {torch.__version__}"
    if torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name(0)}"
    return line


def today() -> str:
    return dt.date.today().isoformat()


def provenance(command: str) -> str:
    """The line under each section's title: date, machine and the command that regenerates it."""
    return f"Measured {today()} on {machine()} with `{command}`."


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats keep whatever formatting the caller gave them as strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)

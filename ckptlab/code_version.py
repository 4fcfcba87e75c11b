"""Which ckptlab code is running: the package version, plus the git commit of a checkout, or
the version recorded when the code was shipped to a cluster by ``ckptlab submit``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ckptlab

# Written into a shipped copy of the package (``ckptlab submit``): that copy has no git.
SHIPPED_VERSION_FILE = "_shipped_code_version.txt"


def code_version() -> str:
    here = Path(ckptlab.__file__).resolve().parent
    shipped = here / SHIPPED_VERSION_FILE
    if shipped.is_file():
        return shipped.read_text().strip()
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{ckptlab.__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return ckptlab.__version__

"""Which ckptlab code is running: the package version, plus the git commit of a checkout, or
the version recorded when the code was shipped to a cluster by ``ckptlab submit``.

Owns: ``code_version`` and the file a shipped copy records its version in. Must not: import
an analysis or anything above layer 0 of tests/test_layout.py (``ckptlab --version`` reads it),
or fail where git is missing: the version is then the package's alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import ckptlab

# Written into a shipped copy of the package (``ckptlab submit``): that copy has no git.
SHIPPED_VERSION_FILE = "_shipped_code_version.txt"


def shipped(version: str) -> str:
    """The version a shipped copy reports: ``0.1.0+gabc123.shipped``."""
    return f"{version}{'.' if '+' in version else '+'}shipped"


def _source_folders() -> list[str]:
    """The folders the running package's modules come from (three in an editable install),
    found without importing them (`ckptlab --version` imports no analysis)."""
    import importlib.util

    return sorted(
        {
            str(Path(folder).resolve())
            for name in ("ckptlab", "ckptlab.analyses", "ckptlab.orchestrator")
            for folder in importlib.util.find_spec(name).submodule_search_locations
        }
    )


def code_version() -> str:
    here = Path(ckptlab.__file__).resolve().parent
    shipped_file = here / SHIPPED_VERSION_FILE
    if shipped_file.is_file():
        return shipped_file.read_text().strip()
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        # Untracked files count: a shipped copy carries every file of these folders.
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", *_source_folders()],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{ckptlab.__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return ckptlab.__version__

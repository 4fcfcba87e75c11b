"""Where ckptlab keeps its local state.

Everything defaults under ``$CKPTLAB_HOME`` (default ``~/.cache/ckptlab``):

- ``hub/``          a standard Hugging Face hub cache (the pico suite is published here)
- ``results.duckdb`` the default results database
- ``mlflow.db`` + ``mlartifacts/`` the default MLflow tracking store (artifacts beside it)

Owns: ``$CKPTLAB_HOME`` and the default paths under it, ``NotCached`` and ``hub_downloads_off``.
Must not: create a file or folder when a path is asked for, or import huggingface_hub at module
level (every command imports this module).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class NotCached(ValueError):
    """Data a spec names on the hub that is not in the local cache while downloads are off."""


@contextlib.contextmanager
def hub_downloads_off() -> Iterator[None]:
    """huggingface_hub offline for the duration (it reads HF_HUB_OFFLINE per call, from its
    constants): what is cached is read, nothing is downloaded or looked up online."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def ckptlab_home() -> Path:
    return Path(os.environ.get("CKPTLAB_HOME", Path.home() / ".cache" / "ckptlab")).expanduser()


def hub_cache_dir() -> Path:
    """The hub cache ckptlab reads checkpoints from. HF_HUB_CACHE wins when a user sets it."""
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return ckptlab_home() / "hub"


def default_db_path() -> Path:
    return ckptlab_home() / "results.duckdb"


def default_tracking_uri() -> str:
    """MLflow's own MLFLOW_TRACKING_URI where it is set (a cluster's head pod sets it for every
    job's driver), else a SQLite store beside the results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ckptlab_home() / 'mlflow.db'}"

"""Publish a model as a revision of a repo in a local Hugging Face hub cache.

The layout is the one ``snapshot_download`` and ``from_pretrained`` resolve offline:
``models--ORG--NAME/refs/<revision>`` holds a 40-hex commit id (no trailing newline: one breaks
snapshot_download) and ``snapshots/<commit>/`` holds the files. The commit id is a content hash
of the files, so identical payloads get identical ids.

Owns: writing a revision in the hub cache's layout (``publish_revision``) and listing the
published ones. Must not: write to a remote hub, or write a revision's ref before its files are
complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from ckptlab import weights
from ckptlab.hub import cached_commit, content_commit_id
from ckptlab.weights import repo_cache_folder


def snapshot_folder(hub_dir: Path, repo: str, revision: str) -> Path:
    """The snapshot folder a published revision names (its refs file -> snapshots/<commit>)."""
    commit = cached_commit(repo, revision, hub_dir)
    if commit is None:
        raise FileNotFoundError(f"{repo}@{revision} is not in {hub_dir}")
    return weights.snapshot_folder(hub_dir, repo, commit)


def publish_revision(hub_dir: Path, repo: str, revision: str, model, tokenizer, metadata: dict):
    hf_logging.disable_progress_bar()
    root = repo_cache_folder(hub_dir, repo)
    (root / "snapshots").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        staging = Path(tmp) / "files"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "pico_build.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        commit = content_commit_id(staging)
        target = root / "snapshots" / commit
        if not target.exists():
            shutil.move(staging, target)
    # The ref is written last: a revision is visible only once its files are complete.
    (root / "refs" / revision).write_text(commit)
    return commit


def published_revisions(hub_dir: Path, repo: str) -> set[str]:
    refs = repo_cache_folder(hub_dir, repo) / "refs"
    return {p.name for p in refs.iterdir()} if refs.is_dir() else set()

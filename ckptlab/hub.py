"""Checkpoints through the real Hugging Face hub code path.

``snapshot_download(repo, revision=...)`` then ``from_pretrained(folder)``: the same calls fetch
``EleutherAI/pythia-160m@step1000`` on a machine with hub access and ``pico/pico-s@step100``
from the local cache offline. Only safetensors weights are fetched unless a spec opts in to
pickled ``.bin`` files (loaded with ``weights_only``); remote code is never trusted by default.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

SAFE_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model"]
PICKLE_PATTERNS = ["*.bin"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(RuntimeError):
    pass


def content_commit_id(folder: Path) -> str:
    """A 40-hex id of a folder's files (names + contents): identical payloads, identical ids."""
    digest = hashlib.sha1()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def fetch_snapshot(
    repo: str, revision: str, cache_dir: Path, *, local_only: bool, allow_pickle: bool = False
) -> tuple[Path, str]:
    """Download (or find in the cache) one revision; returns (folder, resolved commit sha)."""
    from huggingface_hub import snapshot_download

    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        folder = snapshot_download(
            repo_id=repo,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=local_only or hub_offline(),
        )
    except Exception as err:  # huggingface_hub raises several types; all mean "not available"
        raise CheckpointError(f"{repo}@{revision}: {type(err).__name__}: {err}") from None
    folder = Path(folder)
    return folder, folder.name  # snapshots/<commit sha>


def resolve_commits(
    repo: str, revisions: list[str], cache_dir: Path, *, local_only: bool
) -> dict[str, str | CheckpointError]:
    """revision -> commit sha, without downloading weights. One API call per repo online;
    offline, the refs of the local cache."""
    if not (local_only or hub_offline()):
        from huggingface_hub import HfApi

        try:
            refs = HfApi().list_repo_refs(repo)
        except Exception as err:
            error = CheckpointError(f"{repo}: cannot list revisions: {type(err).__name__}: {err}")
            return dict.fromkeys(revisions, error)
        known = {ref.name: ref.target_commit for ref in [*refs.branches, *refs.tags]}
        return {
            rev: known.get(rev)
            or (rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None)  # a commit id names itself
            or CheckpointError(f"{repo}@{rev}: no such revision")
            for rev in revisions
        }
    resolved: dict[str, str | CheckpointError] = {}
    for rev in revisions:
        try:
            resolved[rev] = fetch_snapshot(repo, rev, cache_dir, local_only=True)[1]
        except CheckpointError as err:
            resolved[rev] = err
    return resolved


def local_checkpoint(root: Path, revision: str) -> tuple[Path, str]:
    folder = root / revision
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no config.json)")
    return folder, content_commit_id(folder)


def load_model(
    folder: Path,
    dtype: str,
    device: str,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise CheckpointError(
            f"{folder}: no safetensors weights; set loading.allow_pickle_weights to load .bin"
        )
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=DTYPES[dtype],
        trust_remote_code=trust_remote_code,
        use_safetensors=has_safetensors,
    )
    return model.to(device).eval()


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    tokenizer.model_max_length = 1 << 40  # we cut windows ourselves; silence length warnings
    return tokenizer

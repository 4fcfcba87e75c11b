"""Checkpoints through the real Hugging Face hub code path.

``snapshot_download(repo, revision=...)`` then ``from_pretrained(folder)``: the same calls fetch
``EleutherAI/pythia-160m@step1000`` on a machine with hub access and ``pico/pico-s@step100``
from the local cache offline. Exactly the weight files the plan chose are fetched (one layout:
safetensors first, pickled ``.bin`` files loaded with ``weights_only`` unless a spec refuses
them; ``ckptlab.weights``); remote code is never trusted by default.

Owns: fetching a revision (``fetch_snapshot``), resolving revisions to commits, loading the
model and tokenizer, and ``CheckpointError``. Must not: choose a revision's weight files
(``weights.py`` and the plan do), evict from the cache (``orchestrator/prefetch.py``), or import
transformers or huggingface_hub at module level (the planner imports this module).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

from ckptlab.errors import one_line
from ckptlab.lazy import torch
from ckptlab.weights import remember_refs, remembered_refs, repo_cache_folder

# Everything but weights: what planning reads (the tokenizer, the config).
TOKENIZER_PATTERNS = ["*.json", "tokenizer*", "*.txt", "*.model", "*.tiktoken"]
SAFE_PATTERNS = [*TOKENIZER_PATTERNS, "*.safetensors"]
PICKLE_PATTERNS = ["*.bin"]
REMOTE_CODE_PATTERNS = ["*.py"]  # a repo's own modeling code, fetched only when trusted
DTYPES = ("float32", "bfloat16", "float16")  # resources.dtype: torch's dtype of that name


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resolved or fetched. ``reason`` is one line without the
    checkpoint's name, so that many checkpoints failing alike can be reported as one."""

    def __init__(self, label: str, reason: str):
        self.label = label
        self.reason = reason
        super().__init__(f"{label}: {reason}")


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
    repo: str,
    revision: str,
    cache_dir: Path,
    *,
    local_only: bool,
    allow_pickle: bool = False,
    weights: bool = True,
    remote_code: bool = False,
    weight_files: tuple[str, ...] | None = None,
) -> tuple[Path, str]:
    """Download (or find in the cache) one revision; returns (folder, resolved commit sha).
    ``weights=False`` fetches only the tokenizer and config files (planning); the repo's
    ``*.py`` files only with ``remote_code`` (a spec's ``loading.trust_remote_code``).
    ``weight_files`` (the plan's layout of the revision) names exactly the weight files to
    fetch: one format, never both a revision's safetensors and its pickles."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # ckptlab reports progress per checkpoint itself

    if not weights:
        patterns = TOKENIZER_PATTERNS
    elif weight_files is not None:
        patterns = [*TOKENIZER_PATTERNS, *weight_files]
    else:
        patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    if remote_code:
        patterns = patterns + REMOTE_CODE_PATTERNS
    offline = local_only or hub_offline()
    try:
        folder = snapshot_download(
            repo_id=repo,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{repo}@{revision}", not_cached_reason(offline)) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo}@{revision}", "no such revision") from None
    except Exception as err:  # huggingface_hub raises several types; all mean "not available"
        raise CheckpointError(f"{repo}@{revision}", one_line(err, 300, first=True)) from None
    folder = Path(folder)
    return folder, folder.name  # snapshots/<commit sha>


def not_cached_reason(offline: bool) -> str:
    """Why a file or revision is missing when the cache is all there is."""
    if offline:
        return "not in the local hub cache (offline: HF_HUB_OFFLINE=1)"
    return "not in the local hub cache, and the hub is unreachable"


def cached_commit(repo: str, revision: str, cache_dir: Path) -> str | None:
    """The commit a revision names in the local hub cache, read from its refs file (the
    cache's documented layout: models--org--name/refs/<revision>), or None."""
    storage = repo_cache_folder(cache_dir, repo)
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision if (storage / "snapshots" / revision).is_dir() else None
    ref = storage / "refs" / revision
    if not ref.is_file():
        return None
    commit = ref.read_text().strip()
    return commit if (storage / "snapshots" / commit).is_dir() else None


def resolve_commits(
    repo: str, revisions: list[str], cache_dir: Path, *, local_only: bool
) -> dict[str, str | CheckpointError]:
    """revision -> commit sha, without downloading weights. One API call per repo online;
    offline, the refs of the local cache."""
    if not (local_only or hub_offline()):
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            refs = HfApi().list_repo_refs(repo)
        except RepositoryNotFoundError:
            return {r: CheckpointError(f"{repo}@{r}", "no such repo") for r in revisions}
        except Exception as err:
            reason = f"cannot list revisions: {one_line(err, 300, first=True)}"
            return {r: CheckpointError(f"{repo}@{r}", reason) for r in revisions}
        known = {ref.name: ref.target_commit for ref in [*refs.branches, *refs.tags]}
        remember_refs(repo, known)
        return {
            rev: known.get(rev)
            or (rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None)  # a commit id names itself
            or CheckpointError(f"{repo}@{rev}", "no such revision")
            for rev in revisions
        }
    offline = local_only or hub_offline()
    # The hub cache's refs first; then the hub's last listing, kept by an online plan: a
    # revision never downloaded (a duplicate a run skipped) still has its commit offline.
    remembered = remembered_refs(repo)
    return {
        rev: cached_commit(repo, rev, cache_dir)
        or remembered.get(rev)
        or CheckpointError(f"{repo}@{rev}", not_cached_reason(offline))
        for rev in revisions
    }


def local_checkpoint(root: Path, revision: str) -> tuple[Path, str]:
    folder = root / revision
    if not (folder / "config.json").is_file():
        raise CheckpointError(str(folder), "not a checkpoint folder (no config.json)")
    return folder, content_commit_id(folder)


def load_model(
    folder: Path,
    dtype: str,
    device: str,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = True,
):
    """A checkpoint's model, from the layout its folder holds (``ckptlab.weights``):
    safetensors first; pickled ``.bin`` files (single or sharded) only with ``allow_pickle``,
    read with ``torch.load(weights_only=True)``, which refuses any pickle that would call
    anything but tensor and container constructors."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ckptlab.weights import WeightsError, layout_of_folder

    hf_logging.disable_progress_bar()
    try:
        layout = layout_of_folder(folder, allow_pickle)
    except WeightsError as err:
        raise CheckpointError(str(folder), str(err)) from None
    options = {
        "dtype": getattr(torch, dtype),
        "trust_remote_code": trust_remote_code,
        "use_safetensors": not layout.pickled,
        "weights_only": True,  # a pickle may hold tensors and containers, never a call
    }
    if device == "auto":  # several GPUs for one model: its layers spread across them
        options["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    except pickle.UnpicklingError as err:
        names = ", ".join(f.path for f in layout.files)
        raise CheckpointError(str(folder), _refused_pickle(names, err)) from None
    return model.eval() if device == "auto" else model.to(device).eval()


def _refused_pickle(names: str, err: Exception) -> str:
    """One line for a pickle that ``weights_only=True`` refused, naming what it would call."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(
        r"[Uu]nsupported global:? ([\w.]+)", str(err)
    )
    what = f"would call {found.group(1)}" if found else "holds more than tensors"
    return (
        f"pickled weights refused: {names} {what} when unpickled; torch.load(weights_only="
        "True) loads only tensors and plain containers"
    )


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    tokenizer.model_max_length = 1 << 40  # we cut windows ourselves; silence length warnings
    return tokenizer

"""A revision's weight files, known before any of them is downloaded.

The hub's tree listing gives every file's size and, for LFS files, its sha256: enough to say
how a revision stores its weights (one or several safetensors or pickle files), whether they are
complete, how many bytes a run will download, and which revisions repeat another's weights
(public suites do: Pythia #205/#206, OLMo #915). Listings are keyed by commit sha, which never
changes what it names, so they are cached for good (``$CKPTLAB_HOME/hub-metadata``); offline
they come from the local hub cache, whose blobs are named by the same sha256.

The layouts are the four transformers loads, by its own file names:
``model.safetensors``, ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``,
``pytorch_model.bin``, ``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json``.
Safetensors win when a revision has both; pickles load only with ``weights_only``.

Owns: ``WeightLayout`` and ``choose_layout`` (which files load), the listing cache and the
remembered refs. Must not: download a weight file (``hub.fetch_snapshot`` does), or import
huggingface_hub at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ckptlab.errors import one_line

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
_SAFE_SHARD = re.compile(r"model-(\d+)-of-(\d+)\.safetensors")
_PICKLE_SHARD = re.compile(r"pytorch_model-(\d+)-of-(\d+)\.bin")
# Listings fetched at once: the hub answers each in tens of milliseconds, so a 1,540-revision
# plan is latency-bound, not bandwidth-bound.
LISTING_THREADS = 16


@dataclass(frozen=True)
class RepoFile:
    """One top-level file of a revision: its size and content digest (LFS sha256; a git blob
    id, prefixed ``git:``, for the rare weight file not stored in LFS)."""

    path: str
    size: int
    sha256: str | None


@dataclass(frozen=True)
class WeightLayout:
    """The files a revision's weights are loaded from, and how they are stored."""

    format: str  # safetensors | safetensors-sharded | pickle | pickle-sharded
    files: tuple[RepoFile, ...]  # the weight files, in name order
    index: str | None = None  # the shard index a sharded layout needs

    @property
    def names(self) -> tuple[str, ...]:
        """What to download: the weight files and the index."""
        return tuple(f.path for f in self.files) + ((self.index,) if self.index else ())

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str | None:
        """One sha256 over the weight files' own (name order): equal digests, equal weights,
        whether the files were listed on the hub or found in a downloaded folder."""
        if any(f.sha256 is None for f in self.files):
            return None
        combined = hashlib.sha256()
        for f in self.files:
            combined.update(f"{f.path}:{f.sha256}\n".encode())
        return combined.hexdigest()

    @property
    def pickled(self) -> bool:
        return self.format.startswith("pickle")


class WeightsError(ValueError):
    """A revision whose weights cannot be loaded as listed; ``str(err)`` is one line."""


def _complete_shards(names: set[str], pattern: re.Pattern) -> tuple[list[str], list[str]]:
    """(the shards of a complete ``-0000k-of-0000n`` set, the names missing from the most
    nearly complete set when none is complete). A stale set beside the current one (2 shards
    next to 3) is never mixed in: shards are grouped by their total."""
    sets: dict[int, dict[int, str]] = {}
    for name in names:
        found = pattern.fullmatch(name)
        if found:
            sets.setdefault(int(found.group(2)), {})[int(found.group(1))] = name
    complete = [total for total, shards in sets.items() if len(shards) == total]
    if complete:
        shards = sets[max(complete)]
        return [shards[k] for k in sorted(shards)], []
    if not sets:
        return [], []
    total, shards = max(sets.items(), key=lambda item: len(item[1]))
    example = next(iter(shards.values()))
    width = len(pattern.fullmatch(example).group(1))
    stem, suffix = example.split("-")[0], example.rsplit(".", 1)[1]
    missing = [f"{stem}-{k:0{width}d}-of-{total:0{width}d}.{suffix}"
               for k in range(1, total + 1) if k not in shards]  # fmt: skip
    return [], missing


def _sharded(files: dict[str, RepoFile], kind: str, pattern, index: str) -> WeightLayout | None:
    shards, missing = _complete_shards(set(files), pattern)
    if missing:
        raise WeightsError(f"weight shards missing: {', '.join(missing)}")
    if not shards:
        return None
    if index not in files:
        raise WeightsError(f"{len(shards)} weight shards but no {index}")
    return WeightLayout(f"{kind}-sharded", tuple(files[n] for n in shards), index)


def choose_layout(files: dict[str, RepoFile], allow_pickle: bool) -> WeightLayout:
    """How to load a revision listed as ``files`` (top-level name -> file), in transformers'
    own order: model.safetensors, the safetensors shards, then (only when ``allow_pickle``)
    pytorch_model.bin and its shards. A layout that is incomplete gives way to the next one;
    when none loads, the one-line WeightsError says why."""
    if SAFE_SINGLE in files:
        return WeightLayout("safetensors", (files[SAFE_SINGLE],))
    incomplete: WeightsError | None = None
    try:
        safe = _sharded(files, "safetensors", _SAFE_SHARD, SAFE_INDEX)
        if safe is not None:
            return safe
    except WeightsError as err:
        incomplete = err
    pickles = sorted(n for n in files if n == PICKLE_SINGLE or _PICKLE_SHARD.fullmatch(n))
    if pickles and not allow_pickle:
        shown = ", ".join(pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise incomplete or WeightsError(
            f"only pickled weights ({shown}), refused by loading.allow_pickle_weights: false "
            "(set it true to load them with torch's weights_only unpickler)"
        )
    if PICKLE_SINGLE in files:
        return WeightLayout("pickle", (files[PICKLE_SINGLE],))
    try:
        sharded = _sharded(files, "pickle", _PICKLE_SHARD, PICKLE_INDEX)
    except WeightsError as err:
        raise incomplete or err from None
    if sharded is not None:
        return sharded
    if incomplete is not None:
        raise incomplete
    return _no_weights(files)


def _no_weights(files: dict[str, RepoFile]) -> WeightLayout:
    other = sorted(n for n in files if n.endswith((".safetensors", ".bin", ".pt", ".pth")))
    besides = f" (it has {', '.join(other[:3])}, which transformers does not load)" if other else ""
    raise WeightsError(
        f"no weight files: neither {SAFE_SINGLE}, model-*-of-*.safetensors, {PICKLE_SINGLE} "
        f"nor pytorch_model-*-of-*.bin{besides}"
    )


def layout_of_folder(folder: Path, allow_pickle: bool) -> WeightLayout:
    """The layout of a checkpoint folder (a local checkpoint, or a downloaded snapshot)."""
    return choose_layout(folder_files(folder, digests=False), allow_pickle)


# ---------------------------------------------------------------------- listing revisions


def folder_files(folder: Path, digests: bool = True) -> dict[str, RepoFile]:
    """Top-level files of a folder. In a hub cache each is a link to its blob, which is named
    by the file's sha256 (LFS) or git blob id: the digest is read from the name, nothing is
    hashed. A plain weight file (a hand-laid cache) is hashed when ``digests``."""
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file():
            continue
        blob = path.resolve().name
        sha256 = None
        if re.fullmatch(r"[0-9a-f]{64}", blob):
            sha256 = blob
        elif digests and path.name.endswith((".safetensors", ".bin")):
            with path.open("rb") as f:
                sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        found[path.name] = RepoFile(path.name, path.stat().st_size, sha256)
    return found


def _from_hub(repo: str, commit: str) -> dict[str, RepoFile]:
    """One revision's top-level files, from the hub's tree listing (sizes and LFS sha256)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile as HubFile

    files = {}
    for entry in HfApi().list_repo_tree(repo, revision=commit, recursive=False):
        if isinstance(entry, HubFile) and "/" not in entry.path:
            sha256 = entry.lfs.sha256 if entry.lfs is not None else f"git:{entry.blob_id}"
            files[entry.path] = RepoFile(entry.path, entry.size, sha256)
    return files


def metadata_dir() -> Path:
    from ckptlab.home import ckptlab_home

    return ckptlab_home() / "hub-metadata"


class ListingCache:
    """Per repo, one JSON file: revision listings by commit (a commit's files never change,
    so an entry is never stale) and the branch -> commit map of the last online listing, which
    resolves revisions offline that the hub cache never downloaded (a duplicate a run skipped).
    A file that cannot be read is rebuilt."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else metadata_dir()
        self.repos: dict[str, dict] = {}

    def _path(self, repo: str) -> Path:
        return self.root / f"models--{repo.replace('/', '--')}.json"

    def _repo(self, repo: str) -> dict:
        if repo not in self.repos:
            try:
                raw = json.loads(self._path(repo).read_text())
                commits = {
                    commit: {name: RepoFile(name, size, sha) for name, size, sha in rows}
                    for commit, rows in raw["commits"].items()
                }
                self.repos[repo] = {"commits": commits, "refs": dict(raw["refs"])}
            except (OSError, ValueError, TypeError, KeyError):
                self.repos[repo] = {"commits": {}, "refs": {}}
        return self.repos[repo]

    def get(self, repo: str) -> dict[str, dict[str, RepoFile]]:
        """commit -> its top-level files."""
        return self._repo(repo)["commits"]

    def refs(self, repo: str) -> dict[str, str]:
        """branch or tag -> commit, as the hub last listed them."""
        return self._repo(repo)["refs"]

    def save(self, repo: str) -> None:
        entry = self._repo(repo)
        raw = {
            "refs": entry["refs"],
            "commits": {
                commit: [[f.path, f.size, f.sha256] for f in files.values()]
                for commit, files in entry["commits"].items()
            },
        }
        path = self._path(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(raw, separators=(",", ":")))
        temporary.replace(path)  # atomic: a concurrent plan reads the old file or the new


def remember_refs(repo: str, refs: dict[str, str]) -> None:
    """Keep a repo's online listing of branches for offline plans."""
    cache = ListingCache()
    if cache.refs(repo) != refs:
        cache.refs(repo).clear()
        cache.refs(repo).update(refs)
        cache.save(repo)


def remembered_refs(repo: str) -> dict[str, str]:
    """The branch -> commit map the last online listing of a repo gave (empty if none)."""
    return ListingCache().refs(repo)


def repo_cache_folder(hub_dir: Path, repo: str) -> Path:
    """A repo's folder in a hub cache (its refs/, snapshots/ and blobs/)."""
    return Path(hub_dir) / f"models--{repo.replace('/', '--')}"


def snapshot_folder(hub_dir: Path, repo: str, commit: str) -> Path:
    return repo_cache_folder(hub_dir, repo) / "snapshots" / commit


def list_revisions_files(
    wanted: list[tuple[str, str]],
    hub_dir: Path,
    *,
    online: bool,
    cache: ListingCache | None = None,
) -> dict[tuple[str, str], dict[str, RepoFile] | str]:
    """(repo, commit) -> its top-level files, or why they are unknown (one line). Cached
    listings first, then the hub (``online``: concurrently, then cached), else the local hub
    cache's snapshot (offline: what was downloaded)."""
    cache = cache or ListingCache()
    found: dict[tuple[str, str], dict[str, RepoFile] | str] = {}
    to_ask: list[tuple[str, str]] = []
    for repo, commit in dict.fromkeys(wanted):
        listed = cache.get(repo).get(commit)
        if listed is not None:
            found[(repo, commit)] = listed
        elif online:
            to_ask.append((repo, commit))
        else:
            # Plain files (a hand-laid cache) are not hashed here: planning stays fast on
            # big caches; the worker hashes what it loads (checkpoints.weights_sha256).
            local = folder_files(snapshot_folder(hub_dir, repo, commit), digests=False)
            found[(repo, commit)] = local or "not in the local hub cache (offline)"
    if to_ask:
        with ThreadPoolExecutor(LISTING_THREADS, thread_name_prefix="hub-listing") as pool:
            answers = pool.map(lambda key: _ask(*key), to_ask)
            for key, answer in zip(to_ask, answers, strict=True):
                found[key] = answer
                if isinstance(answer, dict):
                    cache.get(key[0])[key[1]] = answer
        for repo in {repo for repo, _ in to_ask}:
            cache.save(repo)
    return found


def _ask(repo: str, commit: str) -> dict[str, RepoFile] | str:
    try:
        return _from_hub(repo, commit)
    except Exception as err:  # huggingface_hub raises several types: each is a reason
        return f"cannot list the revision's files: {one_line(err, 260, first=True)}"


def format_bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"

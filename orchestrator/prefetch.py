"""Prefetch and a disk budget, per worker: while a unit computes, the checkpoint of the unit
the worker takes next is already downloading; downloads this worker made are evicted once
their unit is done when the budget is exceeded. Eviction only ever touches ckptlab's own hub
cache (``$CKPTLAB_HOME/hub``, never a user's ``HF_HUB_CACHE``), never a checkpoint still in
use, and never one that was in the cache before this worker downloaded it."""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ckptlab.home import ckptlab_home, hub_cache_dir
from ckptlab.hub import CheckpointError, fetch_snapshot, hub_offline


def snapshot_complete(repo: str, commit: str, cache_dir: Path) -> bool:
    """Whether the cache holds the revision's config and every weight shard."""
    folder = Path(cache_dir) / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    if not (folder / "config.json").is_file():
        return False
    if (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file():
        return True
    # Sharded: some index whose shards are all here (a revision's other format's index comes
    # with the config files, its shards do not).
    for index in folder.glob("*.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        if shards and all((folder / shard).is_file() for shard in shards):
            return True
    return False


def managed_cache() -> bool:
    """ckptlab evicts only from the hub cache it owns: a user's HF_HUB_CACHE is theirs."""
    return "HF_HUB_CACHE" not in os.environ and hub_cache_dir() == ckptlab_home() / "hub"


@dataclass
class Download:
    repo: str
    revision: str
    commit: str
    future: Future
    started_at: float
    bytes: int = 0
    finished_at: float | None = None
    done: bool = False  # its unit finished: it may be evicted


class Prefetcher:
    def __init__(self, budget_gib: float | None, allow_pickle: bool = False):
        self.budget = budget_gib * 2**30 if budget_gib else None
        self.allow_pickle = allow_pickle
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.downloads: dict[tuple[str, str], Download] = {}

    def start(
        self,
        repo: str,
        revision: str,
        commit: str,
        local_only: bool,
        weight_files: tuple[str, ...] | None = None,
    ) -> None:
        """Begin downloading a revision in the background, if it is not cached and fits;
        ``weight_files``: the plan's layout of it (exactly those are fetched)."""
        key = (repo, commit)
        cache = hub_cache_dir()
        if local_only or hub_offline() or key in self.downloads:
            return
        if snapshot_complete(repo, commit, cache):
            return
        size = self._size(repo, commit)
        if self.budget is not None:
            self.evict(keep={key})
            if self.held() + size > self.budget:
                return  # over budget: the unit downloads it itself when it runs
        download = Download(repo, revision, commit, None, time.time(), size)  # type: ignore[arg-type]

        def fetch() -> None:
            try:
                fetch_snapshot(repo, revision, cache, local_only=False,
                               allow_pickle=self.allow_pickle,
                               weight_files=weight_files)  # fmt: skip
            finally:
                download.finished_at = time.time()

        download.future = self.pool.submit(fetch)
        self.downloads[key] = download

    def wait(self, repo: str, commit: str) -> Download | None:
        """Block until a prefetch of this revision has finished; None if there was none."""
        download = self.downloads.get((repo, commit))
        if download is None:
            return None
        with contextlib.suppress(CheckpointError):  # the unit fetches again, records it
            download.future.result()
        return download

    def record(self, repo: str, revision: str, commit: str, cached_before: bool) -> None:
        """A unit downloaded its own checkpoint: track it for eviction."""
        key = (repo, commit)
        if key not in self.downloads and not cached_before:
            self.downloads[key] = Download(repo, revision, commit, _done(), time.time(),
                                           self._size(repo, commit))  # fmt: skip

    def finished(self, repo: str, commit: str) -> None:
        download = self.downloads.get((repo, commit))
        if download is not None:
            download.done = True
        self.evict(keep=set())

    def held(self) -> int:
        return sum(d.bytes for d in self.downloads.values())

    def evict(self, keep: set) -> list[str]:
        """Delete this worker's finished downloads, oldest first, while over budget."""
        if self.budget is None or not managed_cache():
            return []
        from huggingface_hub import scan_cache_dir

        evicted = []
        for key, download in list(self.downloads.items()):
            if self.held() <= self.budget:
                break
            if not download.done or key in keep:
                continue
            scan_cache_dir(hub_cache_dir()).delete_revisions(download.commit).execute()
            del self.downloads[key]
            evicted.append(f"{download.repo}@{download.revision}")
        return evicted

    @staticmethod
    def _size(repo: str, commit: str) -> int:
        """The revision's weight and config bytes, from the hub's metadata."""
        from huggingface_hub import HfApi

        try:
            info = HfApi().model_info(repo, revision=commit, files_metadata=True)
        except Exception:
            return 0
        return sum(s.size or 0 for s in info.siblings or [])


def _done() -> Future:
    future: Future = Future()
    future.set_result(None)
    return future

"""One node's checkpoint downloads: one queue, one link, a disk budget.

Every download of a node goes through its ``DownloadQueue`` (held by one ``NodeDownloads``
actor per node): one at a time, each with the node's whole bandwidth, in the order the
driver says the node's units will run. A unit's own checkpoint goes before any unit's next
one, so the first compute starts after one download, not after every worker's first download
shared one link. While units compute, the queue downloads the units they take next, ahead
of them within the disk budget. Downloads whose units are done are evicted, oldest first,
once the budget is exceeded; eviction only ever touches ckptlab's own hub cache
(``$CKPTLAB_HOME/hub``, never a user's ``HF_HUB_CACHE``), never a checkpoint still in use,
and never one that was in the cache before the queue downloaded it.

Owns: ``DownloadQueue`` (its order, one download at a time, the disk budget, eviction) and
``Wanted``. Must not: evict from a cache ckptlab does not own (``managed_cache``), a checkpoint
in use or one cached before it came, or load a model.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ckptlab.home import ckptlab_home, hub_cache_dir
from ckptlab.hub import CheckpointError, fetch_snapshot, hub_offline
from ckptlab.weights import snapshot_folder


def snapshot_complete(repo: str, commit: str, cache_dir: Path) -> bool:
    """Whether the cache holds the revision's config and every weight shard."""
    folder = snapshot_folder(cache_dir, repo, commit)
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


@dataclass(frozen=True)
class Wanted:
    """A checkpoint a unit of this node will read; ``now``: a worker is about to wait for it."""

    repo: str
    revision: str
    commit: str
    weight_files: tuple[str, ...] | None = None  # the plan's layout: exactly these files
    allow_pickle: bool = False
    now: bool = False
    order: int = 0  # the driver's: the order of the node's units

    @property
    def key(self) -> tuple[str, str]:
        return self.repo, self.commit


def wanted(task, now: bool = False, order: int = 0) -> Wanted | None:
    """What a unit (``UnitTask``) downloads, if anything: a hub checkpoint that may be
    fetched (not one restricted to the cache)."""
    ref = task.checkpoint
    if ref.source != "hub" or ref.local_only or task.commit is None:
        return None
    return Wanted(ref.model, ref.revision, task.commit, task.weight_files, task.allow_pickle,
                  now, order)  # fmt: skip


@dataclass
class Download:
    wanted: Wanted
    urgent: bool = False  # a worker waits for it: the disk budget does not hold it back
    bytes: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    done: bool = False  # its unit finished: it may be evicted
    finished: threading.Event = field(default_factory=threading.Event)


class DownloadQueue:
    def __init__(self, budget_gib: float | None, per_file: bool = False):
        """``per_file``: fetch a checkpoint's weight files one by one on the queue's own
        (daemon) thread, not through the hub client's pool of threads, which the process'
        exit would wait for (the driver's queue: a Ctrl-C must not wait for a download)."""
        self.budget = budget_gib * 2**30 if budget_gib else None
        self.per_file = per_file
        self.downloads: dict[tuple[str, str], Download] = {}  # in the order they were queued
        self.changed = threading.Condition()
        self.stopped = False
        threading.Thread(target=self._download_in_order, name="downloads", daemon=True).start()

    def add(self, wanted: list[Wanted]) -> None:
        """Queue checkpoints; they download in the driver's ``order`` (the order this
        node's units will read them: calls may arrive out of order). One a worker waits for
        (``now``) goes before everything not yet started."""
        for item in wanted:
            with self.changed:
                download = self.downloads.get(item.key)
                if download is not None:  # queued already: it may become urgent, or earlier
                    download.urgent = download.urgent or item.now
                    if 0 < item.order < download.wanted.order:  # 0: a worker's, no order
                        download.wanted = replace(download.wanted, order=item.order)
                    self.changed.notify_all()
                    continue
            if hub_offline() or snapshot_complete(item.repo, item.commit, hub_cache_dir()):
                continue
            if self.per_file and not item.weight_files:
                continue  # the weight files are unknown: the node's queue fetches it
            size = self._size(item.repo, item.commit) if self.budget is not None else 0
            with self.changed:
                download = self.downloads.setdefault(item.key, Download(item, bytes=size))
                download.urgent = download.urgent or item.now
                self.changed.notify_all()

    def ready(self, wanted: Wanted) -> Download | None:
        """Block until the queue's download of this checkpoint has ended (queued first if it
        was not); None when there was nothing to download. A failed download is left to the
        unit, which fetches again and records why."""
        self.add([replace(wanted, now=True)])
        with self.changed:
            download = self.downloads.get(wanted.key)
        if download is None:
            return None
        download.finished.wait()
        return download

    def stop(self) -> None:
        """Start no new download (the one under way finishes): another queue takes over."""
        with self.changed:
            self.stopped = True
            self.changed.notify_all()

    def drop(self, repo: str, commit: str) -> None:
        """Its unit went to another node: forget the download if it has not started, else
        let it be evicted once it has ended (no unit here will read it)."""
        with self.changed:
            download = self.downloads.get((repo, commit))
            if download is not None and download.started_at is None:
                del self.downloads[(repo, commit)]
            elif download is not None:
                download.done = True

    def finished(self, repo: str, commit: str) -> None:
        """A unit that read this checkpoint is done with it: over the budget, the oldest
        such downloads are evicted now."""
        with self.changed:
            download = self.downloads.get((repo, commit))
            if download is not None:
                download.done = True
            self._evict(keep=set())
            self.changed.notify_all()

    # ------------------------------------------------------------------ the one link

    def _next(self) -> Download | None:
        """The next download to start: urgent ones first, then the driver's order; one that
        does not fit the budget waits for an eviction (an urgent one never waits)."""
        waiting = [d for d in self.downloads.values() if d.started_at is None]
        if not waiting or self.stopped:
            return None
        head = min(waiting, key=lambda d: (not d.urgent, d.wanted.order))
        if self.budget is None or head.urgent:
            return head
        self._evict(keep={head.wanted.key})
        return head if self._held() + head.bytes <= self.budget else None

    def _evict(self, keep: set) -> list[str]:
        """``_delete`` that never stops the queue: a cache that cannot be scanned or deleted
        from now (a file gone meanwhile, a permission) keeps its files this time."""
        try:
            return self._delete(keep)
        except Exception:
            return []

    def _download_in_order(self) -> None:
        while True:
            with self.changed:
                download = self._next()
                while download is None:
                    if self.stopped:
                        return
                    self.changed.wait()
                    download = self._next()
                download.started_at = time.time()
            item = download.wanted
            try:
                if self.per_file:
                    _fetch_files(item)
                else:
                    fetch_snapshot(item.repo, item.revision, hub_cache_dir(), local_only=False,
                                   allow_pickle=item.allow_pickle,
                                   weight_files=item.weight_files)  # fmt: skip
            except CheckpointError as err:
                download.error = err.reason
            except Exception as err:  # never let the queue's thread die
                download.error = f"{type(err).__name__}: {err}"
            with self.changed:
                download.finished_at = time.time()
                download.finished.set()
                self.changed.notify_all()

    # ------------------------------------------------------------------ the disk budget

    def _held(self) -> int:
        return sum(d.bytes for d in self.downloads.values() if d.started_at is not None)

    def _delete(self, keep: set) -> list[str]:
        """Delete finished downloads whose units are done, oldest first, while over budget."""
        if self.budget is None or not managed_cache():
            return []
        from huggingface_hub import scan_cache_dir

        evicted = []
        for key, download in list(self.downloads.items()):
            if self._held() <= self.budget:
                break
            if not download.done or download.finished_at is None or key in keep:
                continue
            scan_cache_dir(hub_cache_dir()).delete_revisions(download.wanted.commit).execute()
            del self.downloads[key]
            evicted.append(f"{download.wanted.repo}@{download.wanted.revision}")
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


def _fetch_files(item: Wanted) -> None:
    """A checkpoint's weight files, one by one on this thread."""
    from huggingface_hub import hf_hub_download

    for name in item.weight_files or ():
        hf_hub_download(item.repo, name, revision=item.commit, cache_dir=hub_cache_dir())

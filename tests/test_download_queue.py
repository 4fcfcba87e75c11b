"""A node's download queue without Ray or a hub: the order downloads start in (a unit that
waits now first, then the driver's order, whatever order the calls arrive in), one at a time,
the disk budget holding back what is only ahead, and a dropped entry never fetched."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from ckptlab.orchestrator import prefetch
from ckptlab.orchestrator.prefetch import DownloadQueue, Wanted


@pytest.fixture
def fetches(monkeypatch, tmp_path):
    """Replace the hub fetch with one that records (name, start, end) and takes 0.1 s; the
    first fetch waits for ``gate`` so that the test can queue everything first."""
    monkeypatch.setenv("CKPTLAB_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    record: list[tuple[str, float, float]] = []
    gate = threading.Event()

    def fetch(repo, revision, cache, **kwargs):
        gate.wait(5)
        began = time.monotonic()
        time.sleep(0.1)
        record.append((revision, began, time.monotonic()))

    monkeypatch.setattr(prefetch, "fetch_snapshot", fetch)
    monkeypatch.setattr(DownloadQueue, "_size", staticmethod(lambda repo, commit: 100))
    return record, gate


def item(revision: str, order: int, now: bool = False) -> Wanted:
    return Wanted("org/model", revision, f"sha-{revision}", now=now, order=order)


def wait_for(record: list, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(record) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_waited_for_first_then_the_drivers_order_one_at_a_time(fetches):
    record, gate = fetches
    queue = DownloadQueue(None)
    queue.add([item("z", 0)])  # the link is busy with z (held at the gate) while we queue
    while queue.downloads[("org/model", "sha-z")].started_at is None:
        time.sleep(0.01)
    # The driver's calls may arrive out of order (a threaded actor): its numbers decide.
    queue.add([item("c", 3), item("d", 4)])
    queue.add([item("a", 1), item("b", 2)])
    queue.add([item("d", 4, now=True)])  # a worker waits for d now
    gate.set()
    wait_for(record, 5)
    assert [name for name, _, _ in record] == ["z", "d", "a", "b", "c"]
    for (_, _, end), (_, start, _) in itertools.pairwise(record):
        assert start >= end  # one link: never two at once


def test_ready_returns_once_its_download_ended(fetches):
    record, gate = fetches
    queue = DownloadQueue(None)
    gate.set()
    download = queue.ready(item("a", 0))
    assert [name for name, _, _ in record] == ["a"]
    assert download.finished_at >= download.started_at
    assert queue.ready(item("a", 0)) is download  # already there: no second fetch
    assert len(record) == 1


def test_the_budget_holds_back_what_is_ahead_but_not_what_a_worker_waits_for(fetches, monkeypatch):
    record, gate = fetches
    monkeypatch.setattr(prefetch, "managed_cache", lambda: False)  # nothing can be evicted
    queue = DownloadQueue(150 / 2**30)  # room for one 100-byte download
    queue.add([item("a", 1), item("b", 2)])
    gate.set()
    wait_for(record, 1)
    time.sleep(0.3)
    assert [name for name, _, _ in record] == ["a"]  # b would exceed the budget: it waits
    queue.ready(item("b", 2))  # its unit runs now: it downloads, budget or not
    assert [name for name, _, _ in record] == ["a", "b"]


def test_a_dropped_download_is_never_fetched(fetches):
    record, gate = fetches
    queue = DownloadQueue(None)
    queue.add([item("a", 1), item("b", 2)])
    queue.drop("org/model", "sha-b")
    gate.set()
    wait_for(record, 1)
    time.sleep(0.3)
    assert [name for name, _, _ in record] == ["a"]


def test_a_queued_download_a_worker_now_waits_for_goes_first(fetches, monkeypatch):
    record, gate = fetches
    queue = DownloadQueue(None)
    queue.add([item("z", 0)])
    while queue.downloads[("org/model", "sha-z")].started_at is None:
        time.sleep(0.01)
    queue.add([item("a", 1), item("b", 2)])
    # The cache now says b is complete (another process fetched it): b is queued here all
    # the same, and the worker that waits for it must not wait behind a.
    monkeypatch.setattr(prefetch, "snapshot_complete", lambda *args: True)
    waiter = threading.Thread(target=queue.ready, args=(item("b", 2),))
    waiter.start()
    while not queue.downloads[("org/model", "sha-b")].urgent:
        time.sleep(0.01)
    gate.set()
    waiter.join(5)
    assert [name for name, _, _ in record][:2] == ["z", "b"]


def test_a_dropped_download_under_way_may_be_evicted_once_it_ends(fetches):
    _, gate = fetches
    queue = DownloadQueue(None)
    queue.add([item("a", 1)])
    while queue.downloads[("org/model", "sha-a")].started_at is None:
        time.sleep(0.01)
    queue.drop("org/model", "sha-a")  # its unit went to another node
    assert queue.downloads[("org/model", "sha-a")].done
    gate.set()


def test_a_cache_that_cannot_be_evicted_from_never_stops_the_queue(fetches, monkeypatch):
    record, gate = fetches

    def broken(self, keep):
        raise OSError("a file vanished during the scan")

    monkeypatch.setattr(DownloadQueue, "_delete", broken)
    queue = DownloadQueue(150 / 2**30)
    gate.set()
    queue.ready(item("a", 1))
    queue.finished("org/model", "sha-a")  # eviction fails: the queue goes on
    queue.ready(item("b", 2))
    assert [name for name, _, _ in record] == ["a", "b"]


def test_the_drivers_queue_skips_a_checkpoint_whose_files_it_does_not_know(fetches):
    _, gate = fetches
    queue = DownloadQueue(None, per_file=True)
    queue.add([item("a", 1)])  # no weight_files: the node's queue will fetch it
    assert queue.downloads == {}
    gate.set()

"""A node's downloads and the disk budget, against a throttled hub of our own: one download
at a time in the order the units run, a worker's next checkpoint downloading while it
computes (the recorded timings overlap), two workers sharing one link without splitting it,
and a disk budget that evicts finished downloads from ckptlab's own cache, never from a
user's."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptlab.pico.publish import snapshot_folder
from ckptlab.results import ResultStore

from fake_hub import FakeHub

pytestmark = pytest.mark.slow

CKPTLAB = str(Path(sys.executable).parent / "ckptlab")
REVISIONS = ["step0", "step4", "step16", "step64", "step100"]
SPEC = f"""
name: prefetch
models: [{{repo: remote/pico-s, revisions: {REVISIONS}}}]
input_sets: [{{name: prose, builtin: pydoc_topics, num_sequences: 8, seq_len: 64}}]
analyses: [{{name: saturation}}, {{name: linearity}}, {{name: neuron_entropy}}]
resources: {{workers: 1, gpus_per_worker: 0}}
"""


@pytest.fixture(scope="module")
def hub(pico_hub):
    folders = {r: snapshot_folder(pico_hub, "pico/pico-s", r) for r in REVISIONS}
    with FakeHub() as server:
        server.add_model("remote/pico-s", folders)
        weights = (folders["step0"] / "model.safetensors").stat().st_size
        server.bytes_per_second = weights / 1.5  # each checkpoint takes ~1.5 s to download
        yield server


def run(hub: FakeHub, home: Path, spec: str, cwd: Path, **env_extra) -> subprocess.CompletedProcess:
    (cwd / "spec.yaml").write_text(spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
            "CKPTLAB_HOME": str(home), **env_extra}  # fmt: skip
    return subprocess.run(
        [CKPTLAB, "run", "spec.yaml"], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def units(home: Path):
    return (
        ResultStore(home / "results.duckdb")
        .query(
            "SELECT revision, epoch(started_at) AS started, epoch(finished_at) AS finished,"
            " epoch(prefetch_started_at) AS p_start, epoch(prefetch_finished_at) AS p_end,"
            " fetch_seconds, compute_seconds, cells FROM units ORDER BY started_at"
        )
        .to_dicts()
    )


def test_the_next_checkpoint_downloads_while_this_one_computes(hub, tmp_path):
    home = tmp_path / "home"
    done = run(hub, home, SPEC, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = units(home)
    assert [r["cells"] for r in rows] == [3] * len(REVISIONS)
    assert all(r["p_start"] is not None for r in rows)  # every download went through the queue
    first, *later = rows
    assert first["p_end"] - first["p_start"] > 1.0  # nothing could be there before the run
    # The driver downloads only the first few before the units start: the rest while they run.
    assert sum(u["p_start"] > first["started"] for u in later) >= 2, rows
    for previous, unit in zip(rows, later, strict=False):
        # One link: a download starts once the one before it has ended, in the units' order.
        assert unit["p_start"] >= previous["p_end"] - 0.01, (previous, unit)
        # Its download began before the previous unit finished...
        assert unit["p_start"] < previous["finished"], unit
        # ...and the unit waited for nothing but the rest of it (a link slower than compute
        # makes a unit wait for some of its download; never for more).
        assert unit["p_end"] - unit["p_start"] > 1.0, unit
        assert unit["fetch_seconds"] <= max(0.0, unit["p_end"] - unit["started"]) + 0.3, unit


def test_two_workers_share_one_link_one_download_at_a_time(hub, tmp_path):
    """Both workers' first checkpoints do not split the node's link: no two downloads
    overlap, and the two workers' first units get the first two downloads."""
    hub.shared_link = True
    try:
        home = tmp_path / "home"
        spec = SPEC.replace("workers: 1, gpus_per_worker: 0", "workers: 2, cpus_per_worker: 1, "
                            "gpus_per_worker: 0")  # fmt: skip
        done = run(hub, home, spec, tmp_path)
    finally:
        hub.shared_link = False
    assert done.returncode == 0, done.stdout + done.stderr
    rows = units(home)
    assert [r["cells"] for r in rows] == [3] * len(REVISIONS)
    spans = sorted((r["p_start"], r["p_end"]) for r in rows)
    # One at a time, so each has the whole link (the first also pays the queue's first
    # requests, so it is not compared with the others).
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01, spans
    assert min(end - start for start, end in spans) > 1.0  # ~1.5 s each at the throttle
    # The two workers' first units were the first two downloads, ahead of their next ones.
    by_download = sorted(rows, key=lambda r: r["p_start"])
    assert {r["revision"] for r in rows[:2]} == {r["revision"] for r in by_download[:2]}, rows


def test_a_disk_budget_evicts_finished_downloads_from_ckptlabs_own_cache(hub, tmp_path):
    weights = 0.7 * 2**20  # one pico-s revision: ~0.66 MB of safetensors
    spec = SPEC.replace(
        "gpus_per_worker: 0}", f"gpus_per_worker: 0, disk_budget_gib: {2 * weights / 2**30}}}"
    )
    home = tmp_path / "home"
    done = run(hub, home, spec, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ResultStore(home / "results.duckdb").query("SELECT count(*) FROM cells").item() == 15
    kept = list((home / "hub" / "models--remote--pico-s" / "snapshots").glob("*/model.safetensors"))
    assert 1 <= len(kept) <= 2  # the budget holds two revisions; the rest were evicted

    # A user's own cache is never evicted from.
    user_cache = tmp_path / "user-hf-cache"
    again = run(hub, tmp_path / "home2", spec, tmp_path, HF_HUB_CACHE=str(user_cache))
    assert again.returncode == 0, again.stdout + again.stderr
    kept = list((user_cache / "models--remote--pico-s" / "snapshots").glob("*/model.safetensors"))
    assert len(kept) == len(REVISIONS)

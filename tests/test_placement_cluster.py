"""Placement on a real loopback cluster with a fake-GPU node: small checkpoints pack several
to a GPU, a model that fits no node is refused before anything runs, and a unit goes to the
node whose cache already holds its checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ckptlab.pico.publish import snapshot_folder
from ckptlab.results import ResultStore

from fake_hub import FakeHub
from loopback_cluster import CKPTLAB, LoopbackCluster, cluster_env

pytestmark = pytest.mark.slow

# Node b will hold step16 and step64; the six others are node a's to download.
REVISIONS = ["step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64"]
HELD_BY_B = ["step16", "step64"]


@pytest.fixture(scope="module")
def hub(pico_hub):
    folders = {r: snapshot_folder(pico_hub, "pico/pico-s", r) for r in REVISIONS}
    with FakeHub() as server:
        server.add_model("remote/pico-s", folders)
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pico_hub, hub, ckptlab_home):
    """A head without CPUs, node a (1 CPU, 2 fake GPUs) and node b (1 CPU), each node with a
    hub cache of its own; node a's also holds the pico suite. The driver (this machine's
    `ckptlab run`) plans from the test session's home."""
    root = tmp_path_factory.mktemp("nodes")
    homes = {name: root / name for name in ("a", "b")}
    for home in homes.values():
        (home / "hub").mkdir(parents=True)
    for repo in pico_hub.glob("models--pico--*"):
        shutil.copytree(repo, homes["a"] / "hub" / repo.name, symlinks=True)
    env = cluster_env("disabled", None, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0",
                      HF_HUB_DISABLE_TELEMETRY="1", CKPTLAB_HOME=str(ckptlab_home))  # fmt: skip
    nodes = [
        {"num_cpus": 1, "num_gpus": 2, "resources": json.dumps({"node_a": 1})},
        {"num_cpus": 1, "num_gpus": 0, "resources": json.dumps({"node_b": 1})},
    ]
    envs = [{"CKPTLAB_HOME": str(homes["a"])}, {"CKPTLAB_HOME": str(homes["b"])}]
    with LoopbackCluster(env, head_cpus=0, workers=nodes, worker_envs=envs) as running:
        running.homes = homes
        yield running


def node_of(cluster: LoopbackCluster) -> dict[str, str]:
    """node id -> a or b."""
    found = {}
    for node in cluster.state("nodes"):
        for name in ("a", "b"):
            if f"node_{name}" in node["resources_total"]:
                found[node["node_id"]] = name
    return found


def ckptlab(cluster: LoopbackCluster, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CKPTLAB, *args, "--address", cluster.gcs], env=cluster.env, cwd=cwd,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


PACKED = """
name: packed
models: [{suite: pico, sizes: [xs, s], steps: [0, 4, 64, 100]}]
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 32}]
analyses: [{name: saturation}, {name: anisotropy}]
resources: {gpus_per_worker: auto, gpu_memory_gib: 16, cpus_per_worker: 0.25}
"""


def test_small_checkpoints_share_a_gpu(cluster, tmp_path):
    (tmp_path / "spec.yaml").write_text(PACKED)
    db = tmp_path / "r.duckdb"
    done = ckptlab(cluster, ["run", "spec.yaml", "--db", str(db)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # pico needs far less than an eighth of a GPU: 4 workers (the CPUs of node a allow 4).
    assert "4 workers (0.25 CPU, 0.125 GPU each)" in done.stdout
    assert ResultStore(db).query("SELECT count(*) FROM cells").item() == 8 * 2
    drivers = [j for j in cluster.state("jobs") if j["type"] == "DRIVER"]
    job = max(drivers, key=lambda j: j["start_time"] or 0)  # this run's driver
    actors = cluster.state("actors", "class_name=CheckpointWorker", f"job_id={job['job_id']}")
    assert len(actors) == 4
    assert {node_of(cluster)[a["node_id"]] for a in actors} == {"a"}
    assert all(a["required_resources"].get("GPU") == 0.125 for a in actors)


def test_a_model_that_fits_no_node_is_refused_before_anything_runs(cluster, tmp_path, pico_hub):
    """A 13B-shaped config on 16 GiB GPUs (its weights are pico-s's: placement reads the
    config alone, before anything loads): ~55 GiB in float32 needs 4 GPUs on one node, and
    the largest has 2."""
    big = tmp_path / "big" / "step1000"
    source = snapshot_folder(pico_hub, "pico/pico-s", "step0")
    shutil.copytree(source, big)
    config = json.loads((big / "config.json").read_text())
    config |= {"hidden_size": 4096, "num_hidden_layers": 64, "num_attention_heads": 32,
               "intermediate_size": 16384}  # fmt: skip
    (big / "config.json").write_text(json.dumps(config))
    (tmp_path / "spec.yaml").write_text(
        f"name: big\nmodels: [{{path: {big.parent}}}]\n"
        "input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 32}]\n"
        "analyses: [{name: saturation}]\n"
        "resources: {gpus_per_worker: auto, gpu_memory_gib: 16, cpus_per_worker: 0.25}\n"
    )
    db = tmp_path / "never.duckdb"
    done = ckptlab(cluster, ["run", "spec.yaml", "--db", str(db)], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join((done.stdout + done.stderr).split())
    assert f"{big.parent} needs ~" in message and "GiB per unit" in message
    assert "the largest node has 2" in message
    assert not db.exists()


AFFINITY = f"""
name: affinity
models: [{{repo: remote/pico-s, revisions: {REVISIONS}}}]
input_sets: [{{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 32}}]
analyses: [{{name: saturation}}]
resources: {{gpus_per_worker: 0, cpus_per_worker: 1, workers: 2, prefetch: false}}
"""


def test_a_unit_goes_to_the_node_that_holds_its_checkpoint(cluster, tmp_path):
    # Node b's cache already holds two revisions; node a's holds none of them.
    code = (
        "import sys; from huggingface_hub import snapshot_download as s\n"
        "for r in sys.argv[2:]: s('remote/pico-s', revision=r, cache_dir=sys.argv[1])"
    )
    fetch = subprocess.run(
        [str(Path(CKPTLAB).parent / "python"), "-c", code, str(cluster.homes["b"] / "hub"),
         "step16", "step64"],
        env=cluster.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert fetch.returncode == 0, fetch.stderr
    (tmp_path / "spec.yaml").write_text(AFFINITY)
    db = tmp_path / "r.duckdb"
    done = ckptlab(cluster, ["run", "spec.yaml", "--db", str(db)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = ResultStore(db).query("SELECT revision, node FROM units ORDER BY started_at").rows()
    nodes = node_of(cluster)
    where = {rev: nodes[next(n for n in nodes if n[:8] in node)] for rev, node in ran}
    assert sorted(where) == sorted(REVISIONS)
    on = {name: [rev for rev, _ in ran if where[rev] == name] for name in ("a", "b")}
    # b's first unit is the first one its cache holds.
    assert on["b"][0] == "step16"
    # An idle actor takes a unit another node holds only when nothing else is left (better
    # than idling). So step64 is b's second unit, or a's last one after a took all six that
    # no node held: a loaded machine can let a finish six units before b finishes its first
    # (seen in CI). Timing decides which; the rule holds either way.
    if where["step64"] == "b":
        assert on["b"][:2] == HELD_BY_B
    else:
        assert on["a"][-1] == "step64"
        assert sorted(on["a"][:-1]) == sorted(set(REVISIONS) - set(HELD_BY_B))

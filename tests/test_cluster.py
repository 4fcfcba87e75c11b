"""Runs on a real Ray cluster: `ray start` nodes on loopback, one declaring a fake GPU.

- `ckptlab submit --wait` runs the spec as a Ray Job whose workers are the cluster's, GPU
  requests land on the GPU node, and the rows equal a local run's; the code and the spec's
  files travel in the runtime env, the token does not.
- A plain `ray job submit -- ckptlab run ...` uses the cluster too (RAY_ADDRESS).
- `ckptlab run --address` takes HOST:PORT and ray://; `ckptlab jobs` lists, reports, logs.
- Token auth on and off.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from ckptlab.code_version import code_version, shipped
from ckptlab.results import ResultStore

from loopback_cluster import CKPTLAB, RAY, LoopbackCluster, cluster_env

pytestmark = pytest.mark.slow

TOKEN = "canary-ray-token-0123456789abcdef0123456789abcdef"
SPEC = """
name: on-cluster
models:
  - suite: pico
    sizes: [xs, s]
    steps: [0, 4, 64, 100]
input_sets:
  - {name: prose, builtin: pydoc_topics, num_sequences: 4, seq_len: 32}
  - {name: mine, file: data/corpus.txt, num_sequences: 3, seq_len: 24}
analyses:
  - name: saturation
  - name: anisotropy
  - name: singular_entropy
resources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0.5}
"""
N_CELLS = 8 * (2 + 2 + 1)  # 8 checkpoints x (saturation, anisotropy per input set + weights)


def run(args: list[str], env: dict, cwd: Path, timeout: float = 300):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory, pico_hub, ckptlab_home) -> Path:
    """A user's project folder: the spec, the text file it names, and folders named like
    ckptlab's own packages that must never shadow them."""
    root = tmp_path_factory.mktemp("project")
    (root / "spec.yaml").write_text(SPEC)
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text(
        "\n".join(f"line {i}: the quick brown fox {i * 7 % 13} jumps" for i in range(400))
    )
    for name in ("analyses", "orchestrator"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name}/ was imported')\n"
        )
    return root


def metric_rows(db: Path) -> dict[tuple, float]:
    frame = ResultStore(db).query("SELECT cell_key, layer, metric, value FROM metrics")
    return {(k, layer, m): v for k, layer, m, v in frame.iter_rows()}


def assert_same_rows(db: Path, reference: dict[tuple, float]) -> None:
    rows = metric_rows(db)
    assert len(rows) == len(reference) > 0
    assert rows.keys() == reference.keys()  # the same cells: same commits, tokens, params
    for key, value in reference.items():
        assert math.isclose(rows[key], value, rel_tol=1e-6, abs_tol=1e-9), key


@pytest.fixture(scope="module")
def local_rows(project, ckptlab_home, tmp_path_factory) -> dict[tuple, float]:
    """The same spec run here, in this process' way (no cluster, no GPU)."""
    db = tmp_path_factory.mktemp("local") / "r.duckdb"
    env = cluster_env("disabled", None, CKPTLAB_HOME=str(ckptlab_home), HF_HUB_OFFLINE="1")
    done = run(
        [CKPTLAB, "run", "spec.yaml", "--db", str(db), "--executor", "inline",
         "--tracking-uri", f"sqlite:///{db.parent / 'm.db'}"],
        env,
        project,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert ResultStore(db).query("SELECT count(*) FROM cells").item() == N_CELLS
    return metric_rows(db)


@pytest.fixture(scope="module")
def token_cluster(pico_hub, ckptlab_home):
    env = cluster_env("token", TOKEN, CKPTLAB_HOME=str(ckptlab_home), HF_HUB_OFFLINE="1")
    gpu_node = {"num_cpus": 2, "num_gpus": 1}
    with LoopbackCluster(env, head_cpus=1, workers=[gpu_node], client_server=True) as cluster:
        yield cluster


def job_of(cluster: LoopbackCluster, submission_id: str) -> dict:
    [job] = [j for j in cluster.state("jobs") if j["submission_id"] == submission_id]
    return job


def assert_ran_on_the_gpu_node(cluster: LoopbackCluster, job_id: str) -> None:
    [gpu_node] = [n["node_id"] for n in cluster.state("nodes") if n["resources_total"].get("GPU")]
    actors = cluster.state("actors", "class_name=CheckpointWorker", f"job_id={job_id}")
    assert len(actors) == 2  # resources.workers
    assert {a["node_id"] for a in actors} == {gpu_node}  # each asked for 0.5 GPU


def test_submit_runs_the_spec_on_the_cluster(token_cluster, project, local_rows, tmp_path):
    db = tmp_path / "cluster.duckdb"
    done = run(
        [CKPTLAB, "submit", "spec.yaml", "--address", token_cluster.dashboard, "--db", str(db),
         "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--wait", "--report"],
        token_cluster.env,
        project,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "entrypoint: python -m ckptlab run spec.yaml" in out and " --report" in out
    assert "SUCCEEDED" in out and "carried: data/corpus.txt" in out
    # The job's driver attached to this cluster through the RAY_ADDRESS Ray gave it.
    assert "(from RAY_ADDRESS): 2 nodes, 3 CPU, 1 GPU" in " ".join(out.split())
    submission_id = next(w for w in done.stdout.split() if w.startswith("ckptlab-on-cluster-"))
    job = job_of(token_cluster, submission_id)
    assert job["status"] == "SUCCEEDED"
    assert_ran_on_the_gpu_node(token_cluster, job["job_id"])
    assert_same_rows(db, local_rows)
    # The shipped copy of this very code ran the job, not the cluster's install.
    assert ResultStore(db).query("SELECT code_version FROM runs").item() == shipped(code_version())
    # The token travelled in neither the runtime env nor anything printed.
    assert TOKEN not in json.dumps(job) and TOKEN not in out
    # --report: the job rendered the report into its MLflow parent run.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    parent_id = ResultStore(db).query("SELECT mlflow_run_id FROM runs").item()
    report = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert "report/index.html" in report and any(p.endswith(".png") for p in report)


def test_plain_ray_job_submit_uses_the_cluster(token_cluster, project, local_rows, tmp_path):
    db = tmp_path / "plain.duckdb"
    done = run(
        [RAY, "job", "submit", "--address", token_cluster.dashboard, "--working-dir", ".",
         "--submission-id", "plain-ray-job", "--",
         "ckptlab", "run", "spec.yaml", "--db", str(db),
         "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        token_cluster.env,
        project,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job = job_of(token_cluster, "plain-ray-job")
    assert job["status"] == "SUCCEEDED", job
    assert_ran_on_the_gpu_node(token_cluster, job["job_id"])
    # The working dir holds the user's own analyses/ and orchestrator/: never imported.
    assert_same_rows(db, local_rows)


def test_run_attaches_through_ray_client(token_cluster, project, local_rows, tmp_path):
    db = tmp_path / "client.duckdb"
    address = f"ray://127.0.0.1:{token_cluster.client_port}"
    done = run(
        [CKPTLAB, "run", "spec.yaml", "--address", address, "--db", str(db),
         "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        token_cluster.env,
        project,
    )  # fmt: skip
    # The client server's own logs say why a connection failed.
    assert done.returncode == 0, done.stdout + done.stderr + token_cluster.logs("ray_client*")
    assert f"Ray cluster {address} (from --address)" in done.stdout
    assert_same_rows(db, local_rows)


TINY = """
name: tiny-job
models: [{suite: pico, sizes: [xs], steps: [100]}]
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 16}]
analyses: [{name: saturation}]
"""


def test_jobs_commands(token_cluster, project, tmp_path):
    env, address = token_cluster.env, ["--address", token_cluster.dashboard]
    (tmp_path / "tiny.yaml").write_text(TINY)
    submitted = run(
        [CKPTLAB, "submit", "tiny.yaml", *address, "--db", str(tmp_path / "t.duckdb")],
        env,
        tmp_path,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = next(w for w in submitted.stdout.split() if w.startswith("ckptlab-tiny-job-"))
    assert f"ckptlab jobs logs {job_id} --follow" in submitted.stdout
    followed = run([CKPTLAB, "jobs", "logs", job_id, "--follow", *address], env, tmp_path)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "cells computed" in followed.stdout and f"job {job_id}: SUCCEEDED" in followed.stdout
    listed = run([CKPTLAB, "jobs", "list", *address], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and "tiny-job" in listed.stdout
    status = run([CKPTLAB, "jobs", "status", job_id, *address], env, tmp_path)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    logs = run([CKPTLAB, "jobs", "logs", job_id, *address], env, tmp_path)
    assert logs.returncode == 0 and "cells computed" in logs.stdout
    stop = run([CKPTLAB, "jobs", "stop", job_id, *address], env, tmp_path)
    assert stop.returncode == 0 and "already ended" in stop.stdout
    missing = run([CKPTLAB, "jobs", "status", "no-such-job", *address], env, tmp_path)
    assert missing.returncode == 1 and "no job 'no-such-job'" in missing.stderr


def test_a_wrong_token_is_one_clear_line(token_cluster, project):
    env = {**token_cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}
    done = run([CKPTLAB, "jobs", "list", "--address", token_cluster.dashboard], env, project)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "token" in done.stderr and "not-the-token" not in done.stderr


@pytest.fixture(scope="module")
def open_cluster(pico_hub, ckptlab_home):
    env = cluster_env("disabled", None, CKPTLAB_HOME=str(ckptlab_home), HF_HUB_OFFLINE="1")
    with LoopbackCluster(env, head_cpus=2, workers=[{"num_cpus": 1, "num_gpus": 1}]) as cluster:
        yield cluster


def test_submit_without_token_auth(open_cluster, project, local_rows, tmp_path):
    db = tmp_path / "open.duckdb"
    done = run(
        [CKPTLAB, "submit", "spec.yaml", "--address", open_cluster.dashboard, "--db", str(db),
         "--wait"],
        open_cluster.env,
        project,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_rows(db, local_rows)


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_run_attaches_to_an_existing_cluster(open_cluster, project, local_rows, tmp_path, how):
    db = tmp_path / "attached.duckdb"
    args = [CKPTLAB, "run", "spec.yaml", "--db", str(db)]
    env = dict(open_cluster.env)
    if how == "--address":
        args += ["--address", open_cluster.gcs]
    else:
        env["RAY_ADDRESS"] = open_cluster.gcs

    def drivers() -> int:
        return len([j for j in open_cluster.state("jobs") if j["type"] == "DRIVER"])

    before = drivers()
    done = run(args, env, project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Ray cluster {open_cluster.gcs} (from {how})" in done.stdout
    assert_same_rows(db, local_rows)
    assert drivers() == before + 1  # the run was a driver of that cluster, not a private Ray


def test_submit_with_the_clusters_own_install(open_cluster, project, local_rows, tmp_path):
    db = tmp_path / "image.duckdb"
    done = run(
        [CKPTLAB, "submit", "spec.yaml", "--address", open_cluster.dashboard, "--db", str(db),
         "--code", "image", "--wait"],
        open_cluster.env,
        project,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--expect-version" in done.stdout  # the job checks the cluster's version
    submission_id = next(w for w in done.stdout.split() if w.startswith("ckptlab-on-cluster-"))
    assert "py_modules" not in job_of(open_cluster, submission_id)["runtime_env"]
    assert_same_rows(db, local_rows)


def test_a_worker_that_fits_no_node_is_refused_before_anything_runs(open_cluster, tmp_path):
    """2 CPUs + 1 GPU exist in the cluster, but on different nodes: no worker can run."""
    (tmp_path / "big.yaml").write_text(
        TINY + "resources: {cpus_per_worker: 2, gpus_per_worker: 1}\n"
    )
    db = tmp_path / "never.duckdb"
    done = run(
        [CKPTLAB, "run", "big.yaml", "--address", open_cluster.gcs, "--db", str(db)],
        open_cluster.env,
        tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no node can hold one worker (2 CPU, 1 GPU)" in " ".join(done.stderr.split())
    assert not db.exists()

"""Plug-ins on a real `ray start` cluster (loopback): a file and a package that exist only in
the user's project folder, submitted with `ckptlab submit --wait`, run on workers that never
saw them; the rows equal a local run's, cell keys included (so the code hashes match)."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest

from ckptlab.results import ResultStore

from loopback_cluster import CKPTLAB, LoopbackCluster, cluster_env

pytestmark = pytest.mark.slow
TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "your-own-analysis.md"


def tutorial_code() -> str:
    return re.search(r"```python\n(.*?)```", TUTORIAL.read_text(), re.S).group(1)


SPEC = """
name: plugins-on-cluster
plugins: [metrics/mean_norm.py, maxnorm]
models:
  - suite: pico
    sizes: [xs]
    steps: [0, 64, 100]
input_sets:
  - {name: prose, builtin: pydoc_topics, num_sequences: 4, seq_len: 32}
analyses:
  - name: mean_norm
  - name: max_norm
  - name: anisotropy
resources: {workers: 1, cpus_per_worker: 1}
"""
PACKAGE = '''
"""A user's package of metrics, next to the spec, installed nowhere."""

import torch

from ckptlab.analysis import MetricValue, Need, Reducer, analysis

from maxnorm.helpers import largest


@analysis(name="max_norm", version=1, needs={Need.HIDDEN_STATES})
class MaxNorm(Reducer):
    """Largest L2 norm of a token vector per layer: max_i ||h_i^k||."""

    def __init__(self, params, context):
        super().__init__(params, context)
        self.best = []

    def update(self, batch):
        layers = batch.require("hidden_states")
        norms = [largest(torch.linalg.vector_norm(h, dim=-1)) for h in layers]
        self.best = norms if not self.best else [max(a, b) for a, b in zip(self.best, norms)]

    def finalize(self):
        return [MetricValue("max_norm", v, layer=k) for k, v in enumerate(self.best)]
'''


def run(args: list[str], env: dict, cwd: Path, timeout: float = 300):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def metric_rows(db: Path) -> dict[tuple, float]:
    frame = ResultStore(db).query("SELECT cell_key, layer, metric, value FROM metrics")
    return {(k, layer, m): v for k, layer, m, v in frame.iter_rows()}


def test_submit_carries_plugins_to_workers_that_never_saw_them(
    tmp_path_factory, pico_hub, ckptlab_home
):
    project = tmp_path_factory.mktemp("plugin-project")
    (project / "spec.yaml").write_text(SPEC)
    (project / "metrics").mkdir()
    (project / "metrics" / "mean_norm.py").write_text(tutorial_code())
    (project / "maxnorm").mkdir()
    (project / "maxnorm" / "__init__.py").write_text(PACKAGE)
    (project / "maxnorm" / "helpers.py").write_text(
        "def largest(norms):\n    return float(norms.max())\n"
    )
    env = cluster_env("disabled", None, CKPTLAB_HOME=str(ckptlab_home), HF_HUB_OFFLINE="1")

    local = project / "local.duckdb"
    done = run(
        [CKPTLAB, "run", "spec.yaml", "--db", str(local),
         "--tracking-uri", f"sqlite:///{project / 'local-mlflow.db'}"],
        env,
        project,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    reference = metric_rows(local)
    analyses = ResultStore(local).query("SELECT DISTINCT analysis FROM cells").to_series()
    assert sorted(analyses) == ["anisotropy", "max_norm", "mean_norm"]

    # The cluster's nodes start in another folder: the project is on no worker's path.
    with LoopbackCluster(env, head_cpus=1, workers=[{"num_cpus": 2}]) as cluster:
        db = tmp_path_factory.mktemp("cluster") / "cluster.duckdb"
        done = run(
            [CKPTLAB, "submit", "spec.yaml", "--address", cluster.dashboard, "--db", str(db),
             "--tracking-uri", f"sqlite:///{db.parent / 'm.db'}", "--wait"],
            cluster.env,
            project,
        )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    carried = next(line for line in out.splitlines() if "carried:" in line)
    assert "metrics/mean_norm.py" in carried and "maxnorm" in carried, out[:3000]
    rows = metric_rows(db)
    assert rows.keys() == reference.keys() and len(rows) > 0  # same cells, same code hashes
    for key, value in reference.items():
        assert math.isclose(rows[key], value, rel_tol=1e-6, abs_tol=1e-9), key

"""specs/seeds.yaml's analyses together on the pico build: one shared pass, consistent
numbers across analyses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ckptlab.analyses.registry import registered_analyses
from ckptlab.results import ResultStore

from test_pipeline import run

SEEDS = Path(__file__).parent.parent / "specs" / "seeds.yaml"


def shipped() -> set[str]:
    """The shipped analyses (not the test plug-ins other tests of this session loaded)."""
    return {name for name, d in registered_analyses().items() if d.shipped}


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory, pico_hub, ray_session):
    spec = yaml.safe_load(SEEDS.read_text())
    spec["models"][0].update(sizes=["xs", "s"], steps=[0, 64, 100])  # what the fixture built
    spec["input_sets"][0].update(num_sequences=8, seq_len=64)
    icl = next(e for e in spec["analyses"] if e["name"] == "icl")
    icl["params"]["n_test"] = 8
    for entry in spec["analyses"]:
        if entry["name"] == "neuron_entropy":
            entry["params"]["per_neuron"] = True
    root = tmp_path_factory.mktemp("seeds")
    db = root / "r.duckdb"
    uri = f"sqlite:///{root / 'm.db'}"
    _plan, summary = run(spec, db, uri, pico_hub)
    return db, summary, uri


def test_seeds_spec_covers_every_registered_analysis():
    names = {a["name"] for a in yaml.safe_load(SEEDS.read_text())["analyses"]}
    assert names == shipped()


def test_every_analysis_runs_in_the_pipeline(seeds_run):
    db, summary, _ = seeds_run
    assert summary.cells_failed == 0, summary.failures
    store = ResultStore(db)
    per_analysis = dict(
        store.query(
            "SELECT analysis, count(*) FROM results"
            " WHERE analysis NOT IN ('dispersion', 'neuron_entropy') GROUP BY 1"
        ).rows()
    )
    n_checkpoints, layers = 2 * 3, 2  # pico xs and s: 2 blocks, hidden_states 0..2
    assert per_analysis == {
        "saturation": n_checkpoints * 2,
        "anisotropy": n_checkpoints * (layers + 2),
        "singular_entropy": n_checkpoints * 6,
        "linearity": n_checkpoints * layers * 2,
        "logit_lens": n_checkpoints * (layers + 1),
        "head_rank_proxy": n_checkpoints * (7 + 1),
        "intrinsic_dimension": n_checkpoints * (layers + 1) * 2,
        "cka": n_checkpoints * (layers + 1),
        "icl": n_checkpoints * 2 * 3 * 9,  # 2 tasks x 3 shot counts x 9 metrics
        "block_ablation": n_checkpoints * (1 + 2 * layers),  # intact + skip/linear per block
        # mc: acc, acc_norm, their stderrs, n_docs; cloze: acc, its stderr, perplexity, n_docs
        "lm_eval": n_checkpoints * (5 + 4),
    }
    assert set(per_analysis) == shipped() - {"dispersion", "neuron_entropy"}
    # dispersion: every layer, plus cluster rows whose number depends on the text.
    clusters = store.query(
        "SELECT step, model, max(value) FILTER (metric = 'num_clusters') AS n,"
        " count(*) FILTER (metric = 'dispersion') AS layers,"
        " count(*) FILTER (metric LIKE 'cluster_%') AS distances"
        " FROM results WHERE analysis = 'dispersion' GROUP BY ALL"
    )
    assert clusters.height == n_checkpoints
    for _, _, n, n_layers, distances in clusters.iter_rows():
        assert n_layers == layers + 1 and distances == (2 if n >= 2 else 0)


def test_readouts_agree_with_the_model_cross_entropy(seeds_run):
    db, _, _ = seeds_run
    frame = ResultStore(db).query(
        "SELECT model, step, metric, layer, value FROM results WHERE metric IN "
        "('cross_entropy', 'logit_lens_cross_entropy', 'cross_entropy_full_rank',"
        " 'cross_entropy_rank_64')"
    )
    values = {(m, s, metric, layer): v for m, s, metric, layer, v in frame.iter_rows()}
    for model in ("pico/pico-xs", "pico/pico-s"):
        for step in (0, 64, 100):
            ce = values[(model, step, "cross_entropy", None)]
            # Three routes to the same number: the model's own CE, the lens at the last layer,
            # and the head proxy at full rank (and at r = 64 >= d_model for both sizes).
            assert values[(model, step, "logit_lens_cross_entropy", 2)] == pytest.approx(
                ce, rel=1e-5
            )
            assert values[(model, step, "cross_entropy_full_rank", None)] == pytest.approx(
                ce, rel=1e-5
            )
            assert values[(model, step, "cross_entropy_rank_64", None)] == pytest.approx(
                ce, rel=1e-4
            )


def test_neuron_entropy_rows_per_block_and_per_neuron(seeds_run):
    from mlflow import MlflowClient

    db, summary, uri = seeds_run
    store = ResultStore(db)
    neurons = store.query(
        "SELECT model, layer, value FROM results WHERE metric = 'neurons' ORDER BY ALL"
    )
    expected = {"pico/pico-s": 4 * 64, "pico/pico-xs": 4 * 32}  # d_mlp = 4 d_model
    assert neurons.height == 2 * 3 * 2  # models x steps x blocks
    assert set(neurons["layer"]) == {1, 2}
    assert all(v == expected[m] for m, _, v in neurons.iter_rows())
    per_neuron = store.query(
        "SELECT model, step, layer, count(*) AS n, min(item) AS lo, max(item) AS hi,"
        " max(value) AS top FROM results WHERE metric = 'token_entropy' GROUP BY ALL"
    )
    for model, _, _, n, lo, hi, top in per_neuron.iter_rows():
        assert 0 <= lo <= hi < expected[model] and n <= expected[model]
        assert top <= np.log(512) + 1e-9  # at most ln(vocab)
    # Per-neuron rows stay in DuckDB: MLflow gets the layer summaries only.
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(summary.mlflow_run_id)
    [child, *_] = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    keys = set(child.data.metrics)
    assert "token_entropy_mean/layer_1" in keys and "token_entropy/layer_1" not in keys

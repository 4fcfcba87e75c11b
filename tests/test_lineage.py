"""MLflow naming: metric keys and flattened spec params."""

from __future__ import annotations

import pytest

from ckptlab.lineage import (
    Value,
    artifact_root_for,
    flatten,
    metric_key,
    mlflow_metrics,
    mlflow_step,
)
from ckptlab.spec import parse_spec


def test_metric_keys():
    assert metric_key("anisotropy", "anisotropy", "anisotropy", 3, None) == "anisotropy/layer_3"
    assert metric_key("saturation", "saturation", "cross_entropy", None, None) == "cross_entropy"
    assert (
        metric_key("ani-nofirst", "anisotropy", "anisotropy", 0, "prose")
        == "prose/ani-nofirst/anisotropy/layer_0"
    )
    assert metric_key("x", "x", "a:b", None, None) == "a_b"  # MLflow rejects ':'


def test_flatten_keys_list_entries_by_label_then_name():
    spec = parse_spec(
        {
            "name": "t",
            "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0]}],
            "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "seq_len": 64}],
            "analyses": [
                {"name": "anisotropy"},
                {"name": "anisotropy", "label": "nofirst", "params": {"drop_first_position": True}},
            ],
        }
    )
    params = flatten(spec.model_dump(mode="json"))
    assert params["input_sets.prose.seq_len"] == "64"
    assert params["analyses.anisotropy.name"] == "anisotropy"
    assert params["analyses.nofirst.params.drop_first_position"] == "true"
    assert params["models.pico.sizes"] == "xs"  # typed, flat: no Python reprs
    assert "storage.db" not in params  # None is no param


def test_local_sqlite_store_keeps_artifacts_beside_it(tmp_path, monkeypatch):
    assert artifact_root_for("sqlite:////data/ml/mlflow.db") == "file:///data/ml/mlartifacts"
    assert artifact_root_for("http://127.0.0.1:5000") is None
    # A relative store (`--tracking-uri sqlite:///m.db`) is relative to the working directory.
    monkeypatch.chdir(tmp_path)
    assert artifact_root_for("sqlite:///m.db") == (tmp_path / "mlartifacts").as_uri()


def test_the_default_tracking_uri_is_mlflows_own_variable_else_sqlite(monkeypatch):
    from ckptlab.cli.app import tracking_of
    from ckptlab.home import ckptlab_home

    raw = {
        "name": "t",
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0]}],
        "input_sets": [{"name": "prose", "builtin": "pydoc_topics"}],
        "analyses": [{"name": "anisotropy"}],
    }
    spec = parse_spec(raw)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_of(spec, None) == f"sqlite:///{ckptlab_home() / 'mlflow.db'}"
    # A cluster's head pod sets it (infra/kuberay/raycluster.yaml); a flag or the spec wins.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ckptlab-mlflow:5000")
    assert tracking_of(spec, None) == "http://ckptlab-mlflow:5000"
    assert tracking_of(spec, "http://other:5000") == "http://other:5000"
    spec = parse_spec({**raw, "storage": {"tracking_uri": "sqlite:////data/m.db"}})
    assert tracking_of(spec, None) == "sqlite:////data/m.db"


def test_mlflow_gets_one_key_per_metric_and_icl_accuracy_averaged_over_seeds():
    values = [
        Value("anisotropy", "anisotropy", "anisotropy", 1, "prose", 0.5),
        Value("saturation", "saturation", "cross_entropy", None, "prose", 3.25),
    ]
    for seed, accuracy in enumerate([0.25, 0.5, 1.0]):
        for shots in (0, 4):
            values.append(
                Value(
                    "icl", "icl", "accuracy", None, None, accuracy + shots, "category", shots, seed
                )
            )
            values.append(Value("icl", "icl", "n_prompts", None, None, 64, "category", shots, seed))
            values.append(
                Value("icl", "icl", "chance_accuracy", None, None, 0.1, "category", shots, seed)
            )
    keys = mlflow_metrics(values, multi_input=False)
    assert keys == {
        "anisotropy/layer_1": 0.5,
        "cross_entropy": 3.25,
        "category/accuracy/shots_0": pytest.approx((0.25 + 0.5 + 1.0) / 3),
        "category/accuracy/shots_4": pytest.approx((4.25 + 4.5 + 5.0) / 3),
    }
    assert "prose/cross_entropy" in mlflow_metrics(values, multi_input=True)


def test_the_mlflow_step_axis_stays_monotonic_across_restarting_stages():
    from ckptlab.orchestrator.checkpoints import CheckpointRef

    def ref(suite, step, tokens=None, stage=None):
        return CheckpointRef("m", f"r{step}", step, "hub", True, suite, None, None, tokens, stage)

    assert mlflow_step(ref("pythia", 143000, tokens=143000 * 2**21)) == 143000
    # OLMo 2: stage 2 restarts at step 0 after 3896B tokens; the axis is millions of tokens.
    end_of_stage1 = ref("olmo2", 928646, tokens=3_896_000_000_000, stage="stage1")
    stage2 = ref("olmo2", 1000, tokens=3_896_000_000_000 + 4_000_000_000, stage="stage2")
    assert mlflow_step(end_of_stage1) == 3_896_000 < mlflow_step(stage2) == 3_900_000
    # Tokens unknown (CrystalCoder's phases): stage x 10^7 + step.
    assert mlflow_step(ref("crystalcoder", 5, stage="phase2")) == 2 * 10**7 + 5

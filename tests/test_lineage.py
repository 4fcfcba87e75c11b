"""MLflow naming: metric keys and flattened spec params."""

from __future__ import annotations

from ckptlab.lineage import artifact_root_for, flatten, metric_key
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
    assert params["analyses.nofirst.params.drop_first_position"] == "True"
    assert params["models.0.sizes"] == "['xs']"


def test_local_sqlite_store_keeps_artifacts_beside_it(tmp_path, monkeypatch):
    assert artifact_root_for("sqlite:////data/ml/mlflow.db") == "file:///data/ml/mlartifacts"
    assert artifact_root_for("http://127.0.0.1:5000") is None
    # A relative store (`--tracking-uri sqlite:///m.db`) is relative to the working directory.
    monkeypatch.chdir(tmp_path)
    assert artifact_root_for("sqlite:///m.db") == (tmp_path / "mlartifacts").as_uri()

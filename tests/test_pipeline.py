"""End to end on the pico build: spec -> real local Ray -> DuckDB + MLflow, then recomputed
from the stored tokens and the checkpoint with independent float64 code."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from mlflow import MlflowClient
from polars.testing import assert_frame_equal
from rich.console import Console
from transformers import AutoModelForCausalLM

from ckptlab.orchestrator.executors import RayExecutor
from ckptlab.orchestrator.runner import make_plan, run_plan
from ckptlab.results import ResultStore
from ckptlab.spec import parse_spec

from reference import gram_mean_pairwise_cosine, naive_cross_entropy, naive_singular_entropy

STEPS = [0, 4, 32, 100]
SPEC = {
    "name": "e2e",
    "description": "Two pico sizes over early training.",
    "models": [{"suite": "pico", "sizes": ["xs", "s"], "steps": STEPS}],
    "input_sets": [
        {
            "name": "prose",
            "builtin": "pydoc_topics",
            "split": "heldout",
            "num_sequences": 6,
            "seq_len": 32,
            "seed": 1,
        },
        {
            "name": "code",
            "builtin": "stdlib_code",
            "split": "heldout",
            "num_sequences": 4,
            "seq_len": 48,
            "seed": 2,
        },
    ],
    "analyses": [{"name": "saturation"}, {"name": "anisotropy"}, {"name": "singular_entropy"}],
    "resources": {"batch_size": 4, "workers": 2},
}
N_CHECKPOINTS = 2 * len(STEPS)
N_LAYERS = 2  # pico xs and s both have 2 blocks: hidden_states 0..2
# Per checkpoint: saturation (2 metrics) and anisotropy (3 layers + pre-norm) per input set,
# singular_entropy (6 metrics) once: it reads weights only.
CELLS_PER_CHECKPOINT = 2 + 2 + 1
ROWS_PER_CHECKPOINT = 2 * 2 + 2 * (N_LAYERS + 1 + 1) + 6


def run(spec_dict: dict, db: Path, uri: str, hub: Path):
    spec = parse_spec(spec_dict)
    plan = make_plan(spec, db, hub)
    summary = run_plan(
        plan,
        yaml.safe_dump(spec_dict),
        db,
        uri,
        hub,
        RayExecutor(spec.resources),
        Console(file=io.StringIO()),
        report_to_mlflow=True,  # the figures in MLflow, as `ckptlab run --report`
    )
    return plan, summary


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, pico_hub, ray_session):
    root = tmp_path_factory.mktemp("e2e")
    db, uri = root / "results.duckdb", f"sqlite:///{root / 'mlflow.db'}"
    plan, summary = run(SPEC, db, uri, pico_hub)
    return db, uri, plan, summary


def count(db: Path, sql: str) -> int:
    return ResultStore(db).query(sql).item()


def test_exact_row_counts(first_run):
    db, _, plan, summary = first_run
    assert plan.total_cells == N_CHECKPOINTS * CELLS_PER_CHECKPOINT == plan.missing_cells
    assert summary.cells_computed == N_CHECKPOINTS * CELLS_PER_CHECKPOINT
    assert summary.cells_failed == 0 and not summary.failures
    assert count(db, "SELECT count(*) FROM cells") == N_CHECKPOINTS * CELLS_PER_CHECKPOINT
    assert count(db, "SELECT count(*) FROM results") == N_CHECKPOINTS * ROWS_PER_CHECKPOINT
    assert count(db, "SELECT count(*) FROM checkpoints") == N_CHECKPOINTS
    assert count(db, "SELECT count(DISTINCT commit_sha) FROM checkpoints") == N_CHECKPOINTS
    # Both sizes share the suite's tokenizer, so each input set is one content id.
    assert count(db, "SELECT count(*) FROM input_sets") == 2
    assert count(db, "SELECT count(*) FROM inputs") == 6 + 4
    assert (
        count(db, "SELECT count(*) FROM results WHERE layer IS NULL AND analysis = 'anisotropy'")
        == 0
    )
    assert count(db, "SELECT count(*) FROM runs WHERE status = 'finished'") == 1


def test_stored_values_equal_a_recomputation_from_stored_tokens(first_run, pico_hub):
    db, *_ = first_run
    store = ResultStore(db)
    rows = store.query("SELECT * FROM results")
    inputs = {
        input_set_id: np.array([r for r in group.sort("seq_index")["token_ids"].to_list()])
        for (input_set_id,), group in store.query("SELECT * FROM inputs").group_by("input_set_id")
    }
    checked = 0
    for (model, revision), group in rows.group_by(["model", "revision"]):
        net = AutoModelForCausalLM.from_pretrained(
            model, revision=revision, cache_dir=pico_hub, local_files_only=True
        ).eval()
        value = {
            (r["analysis"], r["metric"], r["layer"], r["input_set_id"]): r["value"]
            for r in group.iter_rows(named=True)
        }
        head = net.get_output_embeddings().weight.detach().numpy()
        kl, h = naive_singular_entropy(head)
        assert value[("singular_entropy", "singular_entropy", None, None)] == pytest.approx(
            kl, rel=1e-6
        )
        assert value[("singular_entropy", "spectral_entropy", None, None)] == pytest.approx(
            h, rel=1e-6
        )
        for input_set_id, tokens in inputs.items():
            with torch.no_grad():
                out = net(input_ids=torch.from_numpy(tokens), output_hidden_states=True)
            ce = naive_cross_entropy(out.logits.numpy(), tokens)
            key = ("saturation", "cross_entropy", None, input_set_id)
            assert value[key] == pytest.approx(ce, rel=1e-5)
            for layer, hidden in enumerate(out.hidden_states):
                pooled = hidden.reshape(-1, hidden.shape[-1]).numpy()
                expected = gram_mean_pairwise_cosine(pooled)
                stored = value[("anisotropy", "anisotropy", layer, input_set_id)]
                assert stored == pytest.approx(expected, abs=1e-5)
                checked += 1
    assert checked == N_CHECKPOINTS * 2 * (N_LAYERS + 1)


def test_cross_entropy_falls_over_training(first_run):
    db, *_ = first_run
    ce = ResultStore(db).query(
        "SELECT model, step, value FROM results WHERE metric = 'cross_entropy' "
        "AND input_set = 'prose' ORDER BY model, step"
    )
    for (_model,), group in ce.group_by("model"):
        values = dict(zip(group["step"], group["value"], strict=True))
        assert values[100] < values[4] < values[0] + 1e-3
        assert values[0] == pytest.approx(np.log(512), abs=0.05)  # an untrained model is uniform


def test_mlflow_lineage(first_run, tmp_path):
    db, uri, _plan, summary = first_run
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("e2e")
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.info.experiment_id == experiment.experiment_id
    assert parent.data.tags["ckptlab.run_id"] == summary.run_id
    assert parent.data.tags["ckptlab.spec_hash"] == parse_spec(SPEC).spec_hash()
    assert parent.data.tags["version.torch"] == torch.__version__
    assert parent.data.params["resources.batch_size"] == "4"
    assert parent.data.params["input_sets.prose.seq_len"] == "32"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == [
        "pico/pico-s",
        "pico/pico-xs",
    ]
    stored = ResultStore(db).query(
        "SELECT model, revision, step, commit_sha, metric, layer, input_set, value FROM results"
    )
    for child in children:
        model = child.data.tags["ckptlab.model"]
        mine = stored.filter(stored["model"] == model)
        for key, metric, layer, input_set in [
            ("prose/cross_entropy", "cross_entropy", None, "prose"),
            ("code/anisotropy/layer_2", "anisotropy", 2, "code"),
            ("singular_entropy", "singular_entropy", None, None),
        ]:
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == STEPS, key  # one point per checkpoint
            for point in history:
                row = mine.filter(
                    (mine["step"] == point.step)
                    & (mine["metric"] == metric)
                    & (mine["layer"].is_null() if layer is None else mine["layer"] == layer)
                    & (
                        mine["input_set"].is_null()
                        if input_set is None
                        else mine["input_set"] == input_set
                    )
                )
                assert row.height == 1 and point.value == pytest.approx(row["value"].item())
        # Commits: one table per model run, not a tag per revision.
        table = client.download_artifacts(child.info.run_id, "checkpoints.csv", str(tmp_path))
        logged = pl.read_csv(table, schema_overrides={"commit": pl.String})
        assert set(logged["weight_format"]) == {"safetensors"}  # pico: one model.safetensors
        assert logged["duplicate_of"].is_null().all()
        assert child.data.tags["ckptlab.weight_format"] == "safetensors"
        logged = logged.drop("tokens_seen", "weight_format", "duplicate_of")
        expected = mine.select("revision", "step", pl.col("commit_sha").alias("commit")).unique()
        assert_frame_equal(logged.sort("step"), expected.sort("step"))
        assert child.data.tags["ckptlab.checkpoints"] == str(len(STEPS))
        assert not any(tag.startswith("commit.") for tag in child.data.tags)
    # The parent: the run's summary as metrics, typed flat params, the description.
    assert parent.data.metrics["cells_computed"] == summary.cells_computed
    assert parent.data.metrics["cells_failed"] == 0
    assert parent.data.params["models.pico.sizes"] == "xs, s"
    assert parent.data.tags["mlflow.note.content"] == SPEC["description"]
    # The report's figures and page, as the parent's artifacts.
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/index.html" in report
    assert sum(path.endswith(".png") for path in report) >= 3


def test_second_run_adds_nothing(first_run, pico_hub):
    db, uri, *_ = first_run
    before = count(db, "SELECT count(*) FROM metrics")
    plan, summary = run(SPEC, db, uri, pico_hub)
    assert not plan.todo and summary.nothing_to_do
    assert count(db, "SELECT count(*) FROM metrics") == before
    assert count(db, "SELECT count(*) FROM runs") == 1


def test_changed_parameter_recomputes_only_its_cells(first_run, pico_hub):
    db, uri, *_ = first_run
    changed = {
        **SPEC,
        "analyses": [
            {"name": "saturation"},
            {"name": "anisotropy", "params": {"drop_first_position": True}},
            {"name": "singular_entropy"},
        ],
    }
    before_rows = count(db, "SELECT count(*) FROM metrics")
    before_cells = ResultStore(db).query("SELECT cell_key, run_id FROM cells")
    plan, summary = run(changed, db, uri, pico_hub)
    missing = [c for u in plan.units for c in u.missing]
    assert len(missing) == N_CHECKPOINTS * 2  # anisotropy x 2 input sets, nothing else
    assert {c.analysis for c in missing} == {"anisotropy"}
    assert summary.cells_computed == len(missing)
    assert count(db, "SELECT count(*) FROM metrics") == before_rows + len(missing) * (N_LAYERS + 2)
    after = ResultStore(db).query("SELECT cell_key, run_id FROM cells")
    untouched = before_cells.join(after, on="cell_key", suffix="_after")
    assert untouched.height == before_cells.height
    assert (untouched["run_id"] == untouched["run_id_after"]).all()
    # The new cells hold a different, real number: position 0 dropped.
    dropped = (
        ResultStore(db)
        .query(
            "SELECT value FROM results WHERE analysis = 'anisotropy' AND metric = 'anisotropy' "
            "AND layer = 0 AND model = 'pico/pico-s' AND step = 100 AND input_set = 'prose' "
            "AND params_json LIKE '%true%'"
        )
        .item()
    )
    tokens = np.array(
        ResultStore(db)
        .query(
            "SELECT token_ids FROM inputs JOIN input_sets USING (input_set_id) "
            "WHERE name = 'prose' ORDER BY seq_index"
        )["token_ids"]
        .to_list()
    )
    net = AutoModelForCausalLM.from_pretrained(
        "pico/pico-s", revision="step100", cache_dir=pico_hub, local_files_only=True
    )
    with torch.no_grad():
        embeddings = net(input_ids=torch.from_numpy(tokens), output_hidden_states=True)
    h0 = embeddings.hidden_states[0][:, 1:, :].reshape(-1, 64).numpy()
    assert dropped == pytest.approx(gram_mean_pairwise_cosine(h0), abs=1e-5)


def mlflow_curves(uri: str, experiment: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """model run name -> metric key -> its (step, value) points, as MLflow holds them."""
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == len(children) + 1  # one parent run
    return {
        child.data.tags["mlflow.runName"]: {
            key: sorted(
                (m.step, m.value) for m in client.get_metric_history(child.info.run_id, key)
            )
            for key in child.data.metrics
        }
        for child in children
    }


def test_sync_logs_what_the_live_run_logged(first_run, pico_hub, tmp_path):
    """A run whose spec covers cells an earlier run computed logs them too (whole curves);
    `ckptlab sync` of that run into another MLflow store logs the very same points."""
    from ckptlab.orchestrator.executors import InlineExecutor
    from ckptlab.sync import sync

    db = tmp_path / "r.duckdb"
    shutil.copyfile(first_run[0], db)
    spec_dict = {
        **SPEC,
        "name": "resync",
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 4]}],
        "analyses": [{"name": "saturation"}, {"name": "dispersion"}],
    }
    spec = parse_spec(spec_dict)
    plan = make_plan(spec, db, pico_hub)
    live = f"sqlite:///{tmp_path / 'live.db'}"
    summary = run_plan(
        plan, yaml.safe_dump(spec_dict), db, live, pico_hub, InlineExecutor(spec.resources),
        Console(file=io.StringIO()),
    )  # fmt: skip
    # saturation is stored from the first run; dispersion is new.
    assert (summary.cells_cached, summary.cells_computed) == (2 * 2, 2 * 2)
    synced = f"sqlite:///{tmp_path / 'synced.db'}"
    assert sync(ResultStore(db), synced, [summary.run_id]) == [summary.run_id]
    curves = mlflow_curves(live, "resync")
    assert sorted(curves) == ["pico/pico-xs"]
    assert "prose/cross_entropy" in curves["pico/pico-xs"]  # a stored cell's metric
    assert all([s for s, _ in points] == [0, 4] for points in curves["pico/pico-xs"].values())
    assert mlflow_curves(synced, "resync") == curves


def test_failing_checkpoints_are_recorded_and_the_others_finish(tmp_path, pico_hub, ray_session):
    from huggingface_hub import snapshot_download

    local = tmp_path / "local-run"
    for step in (4, 8):
        folder = snapshot_download(
            "pico/pico-xs", revision=f"step{step}", cache_dir=pico_hub, local_files_only=True
        )
        shutil.copytree(folder, local / f"step{step}")
    (local / "step8" / "model.safetensors").write_bytes(b"not a safetensors file")
    spec = {
        "name": "faulty",
        "models": [{"path": str(local)}, {"repo": "pico/pico-xs", "revisions": ["step999"]}],
        "input_sets": [
            {"name": "prose", "builtin": "pydoc_topics", "num_sequences": 2, "seq_len": 16}
        ],
        "analyses": [{"name": "saturation"}, {"name": "singular_entropy"}],
    }
    db, uri = tmp_path / "r.duckdb", f"sqlite:///{tmp_path / 'm.db'}"
    _plan, summary = run(spec, db, uri, pico_hub)
    assert summary.cells_computed == 2  # step4: saturation + singular_entropy
    assert summary.cells_failed == 2 + 2  # step8 and the unresolvable step999: both cells each
    failures = ResultStore(db).query("SELECT revision, analysis, error FROM failures")
    by_revision = {r: list(g["error"]) for (r,), g in failures.group_by("revision")}
    assert set(by_revision) == {"step8", "step999"}
    assert all(e.startswith("load:") for e in by_revision["step8"])
    assert all(e.startswith("resolve:") and "step999" in e for e in by_revision["step999"])
    assert count(db, "SELECT count(*) FROM results WHERE revision = 'step4'") == 2 + 6
    # The failures are retried on the next run; the good checkpoint is not recomputed.
    again = make_plan(parse_spec(spec), db, pico_hub)
    assert sorted(u.checkpoint.revision for u in again.todo) == ["step8", "step999"]


def test_too_few_gpus_fails_before_anything_is_written(tmp_path, pico_hub, ray_session):
    from ckptlab.orchestrator.executors import ResourceError

    spec = {**SPEC, "resources": {"gpus_per_worker": 1}}
    db = tmp_path / "r.duckdb"
    with pytest.raises(ResourceError, match=r"gpus_per_worker=1.0 but the cluster has 0 GPUs"):
        run(spec, db, f"sqlite:///{tmp_path / 'm.db'}", pico_hub)
    assert not db.exists() and not (tmp_path / "m.db").exists()

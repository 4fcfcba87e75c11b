"""Linear CKA against the Gram (HSIC) form; invariances; the cross-checkpoint pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from ckptlab.analyses.capture import Capture, ReferenceSketch, sample_positions
from ckptlab.analyses.cka import CKAParams, cka, linear_cka
from ckptlab.results import ResultStore
from ckptlab.spec import SpecError

from reference import hsic_linear_cka
from test_pipeline import run


@pytest.mark.parametrize(("n", "d1", "d2", "seed"), [(10, 3, 3, 0), (80, 12, 5, 1), (40, 60, 7, 2)])
def test_equals_the_gram_form(n, d1, d2, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1)) + 1.0
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + rng.normal(size=(n, d2))
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        hsic_linear_cka(x, y), abs=1e-9
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), sx=st.floats(1e-3, 1e3), sy=st.floats(1e-3, 1e3))
def test_invariant_to_rotation_and_isotropic_scaling(seed, sx, sy):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 4))
    y[:, :2] += x[:, :2]
    q1, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    q2, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    base = linear_cka(torch.from_numpy(x), torch.from_numpy(y))
    moved = linear_cka(torch.from_numpy(sx * x @ q1), torch.from_numpy(sy * y @ q2))
    assert moved == pytest.approx(base, abs=1e-9)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(3 * x + 1)) == pytest.approx(
        1, abs=1e-12
    )


def test_the_analysis_reads_the_sketch_positions():
    rng = np.random.default_rng(0)
    hidden = tuple(torch.from_numpy(rng.normal(size=(3, 10, 4))) for _ in range(3))
    positions = sample_positions(30, 12, seed=1)
    assert len(positions) == 12 and np.all(np.diff(positions) > 0)
    reference_layers = tuple(rng.normal(size=(12, 4)).astype(np.float32) for _ in range(3))
    sketch = ReferenceSketch("c", "i", positions, reference_layers)
    rows = cka(Capture(hidden_states=hidden, reference=sketch), CKAParams(max_tokens=12))
    for row in rows:
        x = hidden[row.layer].reshape(-1, 4).numpy()[positions].astype(np.float32)
        assert row.value == pytest.approx(hsic_linear_cka(x, reference_layers[row.layer]), abs=1e-6)


SPEC = {
    "name": "cka",
    "models": [{"suite": "pico", "sizes": ["xs", "s"], "steps": [0, 32, 100]}],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 4, "seq_len": 32}],
    "analyses": [{"name": "cka", "params": {"max_tokens": 1000}}],  # all 128 tokens
}


@pytest.fixture(scope="module")
def cka_run(tmp_path_factory, pico_hub, ray_session):
    root = tmp_path_factory.mktemp("cka")
    db, uri = root / "r.duckdb", f"sqlite:///{root / 'm.db'}"
    plan, summary = run(SPEC, db, uri, pico_hub)
    return db, uri, plan, summary


def test_reference_is_one_and_values_equal_an_independent_recomputation(cka_run, pico_hub):
    db, _, plan, summary = cka_run
    assert summary.cells_failed == 0, summary.failures
    assert len(plan.sketches) == 2  # one sketch per model (same input set), computed once
    store = ResultStore(db)
    rows = store.query("SELECT model, step, layer, value, params_json FROM results")
    assert rows.height == 2 * 3 * 3  # models x steps x layers 0..2
    tokens = torch.tensor(
        store.query("SELECT token_ids FROM inputs ORDER BY seq_index")["token_ids"].to_list()
    )

    def hidden(model: str, step: int):
        net = AutoModelForCausalLM.from_pretrained(
            model, revision=f"step{step}", cache_dir=pico_hub, local_files_only=True
        )
        with torch.no_grad():
            return [
                h.reshape(-1, h.shape[-1]).numpy()
                for h in net(input_ids=tokens, output_hidden_states=True).hidden_states
            ]

    for model in ("pico/pico-xs", "pico/pico-s"):
        reference = hidden(model, 100)
        for step in (0, 32, 100):
            mine = hidden(model, step)
            for layer in range(3):
                [[value, params]] = (
                    rows.filter(
                        (rows["model"] == model) & (rows["step"] == step) & (rows["layer"] == layer)
                    )
                    .select("value", "params_json")
                    .rows()
                )
                assert '"reference_revision":"step100"' in params
                expected = 1.0 if step == 100 else hsic_linear_cka(mine[layer], reference[layer])
                assert value == pytest.approx(expected, abs=1e-5)


def test_new_checkpoints_reuse_the_cached_sketch(cka_run, pico_hub, ckptlab_home):
    db, uri, plan, _ = cka_run
    sketches = {p: p.stat().st_mtime_ns for p in (ckptlab_home / "sketches").glob("*.safetensors")}
    assert {p.stem for p in sketches} >= set(plan.sketches)
    more = {**SPEC, "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 4, 32, 100]}]}
    plan2, summary = run(more, db, uri, pico_hub)
    assert [u.checkpoint.step for u in plan2.todo] == [4]
    assert summary.cells_computed == 1 and summary.metric_rows == 3  # layers 0..2
    for path, mtime in sketches.items():
        assert path.stat().st_mtime_ns == mtime  # read from the cache, not recomputed


def test_a_changed_reference_recomputes_every_checkpoint(cka_run, pico_hub):
    db, uri, *_ = cka_run
    other = {**SPEC, "analyses": [{"name": "cka", "params": {"max_tokens": 1000, "reference": 32}}]}
    _plan, summary = run(other, db, uri, pico_hub)
    assert summary.cells_computed == 2 * 3 * 1 and summary.cells_failed == 0
    values = ResultStore(db).query(
        "SELECT step, value FROM results WHERE params_json LIKE '%step32%' AND layer = 2"
    )
    assert sorted(v for s, v in values.rows() if s == 32) == pytest.approx([1.0, 1.0])
    with pytest.raises(SpecError, match=r"analyses\[0\].params.reference: step 7 is not among"):
        bad = {**SPEC, "analyses": [{"name": "cka", "params": {"reference": 7}}]}
        run(yaml.safe_load(yaml.safe_dump(bad)), db, uri, pico_hub)

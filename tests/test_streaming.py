"""Streaming analyses: the same rows whatever the batch size (one batch = the old whole-capture
computation), the linearity accumulators against the exact float64 SVD, and a failing reducer
that fails its own cell only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from huggingface_hub import snapshot_download
from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Batch, ReferenceSketch, sample_positions
from ckptlab.analyses.linearity import PairQR, linearity_score
from ckptlab.analyses.registry import _REGISTRY, MetricValue, Need, Reducer, analysis
from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.plan import Cell, SketchRequest
from ckptlab.orchestrator.unit import UnitTask
from ckptlab.orchestrator.worker import run_unit

from reference import naive_linearity

# Every analysis that reads the pass, with params that exercise its state.
STREAMED = {
    "saturation": "{}",
    "anisotropy": '{"drop_first_position":true}',
    "dispersion": '{"layers":"all","cluster_ngram":2,"task_token_ids":[5,7,9,11],'
    '"reference_token_ids":[2,3,4,30,31]}',
    "linearity": "{}",
    "logit_lens": "{}",
    "head_rank_proxy": '{"ranks":[1,4,16]}',
    "intrinsic_dimension": '{"max_points":40,"seed":3}',
    "neuron_entropy": '{"top_k":6,"bins":5,"per_neuron":true}',
    "cka": '{"max_tokens":50,"seed":1}',
}


@pytest.fixture(scope="module")
def checkpoint(pico_hub):
    folder = snapshot_download(
        "pico/pico-s", revision="step64", cache_dir=pico_hub, local_files_only=True
    )
    return CheckpointRef("pico/pico-s", "step64", 64, "hub", local_only=True), folder


def unit(checkpoint, pico_hub, cells, batch_size, tokens, sketches=(), references=None):
    ref, folder = checkpoint
    task = UnitTask(
        ref,
        folder.rsplit("/", 1)[1],
        cells,
        {"set": tokens},
        pico_hub,
        "float32",
        batch_size,
        False,
        False,
        sketches=list(sketches),
    )
    return run_unit(task, "cpu", references)


def cell(name: str, params: str, sketch_key: str | None = None) -> Cell:
    return Cell(f"key-{name}", name, name, 1, params, "h", "set", "set-id", sketch_key)


def rows_by_cell(result) -> dict[str, dict[tuple, float]]:
    rows: dict[str, dict[tuple, float]] = {}
    for m in result.metrics:
        rows.setdefault(m.cell_key, {})[(m.metric, m.layer, m.item)] = m.value
    return rows


def test_every_analysis_gives_the_same_rows_whatever_the_batch_size(checkpoint, pico_hub):
    tokens = np.random.default_rng(0).integers(0, 60, size=(7, 24))  # small vocab: repeats
    sketch_request = SketchRequest("sketch", "set", "set-id", 50, 1)
    cells = [cell(n, p, "sketch" if n == "cka" else None) for n, p in STREAMED.items()]
    # The reference's own unit: it makes the sketch and reads it (CKA with itself = 1).
    whole = unit(checkpoint, pico_hub, cells, 7, tokens, [sketch_request])
    assert not whole.failures, whole.failures
    one_by_one = unit(checkpoint, pico_hub, cells, 1, tokens, [sketch_request])
    three = unit(checkpoint, pico_hub, cells, 3, tokens, references=whole.sketches)
    assert not one_by_one.failures and not three.failures
    expected = rows_by_cell(whole)
    assert set(expected) == {c.key for c in cells}
    for other in (one_by_one, three):
        got = rows_by_cell(other)
        for key, rows in expected.items():
            assert got[key].keys() == rows.keys(), key
            for facet, value in rows.items():
                assert math.isclose(got[key][facet], value, rel_tol=1e-9, abs_tol=1e-9), (
                    key,
                    facet,
                )
    assert all(v == pytest.approx(1.0) for v in expected["key-cka"].values())
    # The sketch is the hidden states at the seeded positions, equal across batchings.
    positions = sample_positions(7 * 24, 50, 1)
    for made in (whole.sketches["sketch"], one_by_one.sketches["sketch"]):
        assert np.array_equal(made.positions, positions)
        assert made.reference_commit == checkpoint[1].rsplit("/", 1)[1]
    sketches = (whole.sketches["sketch"].layers, one_by_one.sketches["sketch"].layers)
    for a, b in zip(*sketches, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cka_against_another_checkpoint_reads_the_shared_sketch(checkpoint, pico_hub):
    tokens = np.random.default_rng(1).integers(0, 512, size=(4, 16))
    layers = tuple(np.random.default_rng(2).normal(size=(20, 64)).astype(np.float32)
                   for _ in range(3))  # fmt: skip
    sketch = ReferenceSketch("other", "set-id", sample_positions(64, 20, 0), layers)
    result = unit(
        checkpoint, pico_hub, [cell("cka", '{"max_tokens":20}', "k")], 3, tokens, (), {"k": sketch}
    )
    assert not result.failures
    assert len(result.metrics) == 3 and all(0 <= m.value <= 1 for m in result.metrics)


@pytest.mark.parametrize(("n", "d", "batch"), [(64, 8, 5), (30, 40, 4), (200, 16, 1), (9, 3, 9)])
def test_linearity_accumulators_equal_the_exact_svd(n, d, batch):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * np.linspace(0.01, 10, d) + 3.0  # uneven scales, offset
    y = np.tanh(x @ rng.normal(size=(d, d))) + 0.3 * rng.normal(size=(n, d))
    pair = PairQR()
    for start in range(0, n, batch):
        pair.add(
            torch.from_numpy(x[start : start + batch]), torch.from_numpy(y[start : start + batch])
        )
    score, removed = pair.scores()
    exact = linearity_score(torch.from_numpy(x), torch.from_numpy(y))
    assert score == pytest.approx(exact, abs=1e-10)
    assert score == pytest.approx(naive_linearity(x, y), abs=1e-10)
    assert removed == pytest.approx(naive_linearity(x, y - x), abs=1e-10)


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    when: str = "update"


@pytest.fixture
def failing_analysis():
    @analysis(name="test_failing", version=1, needs={Need.HIDDEN_STATES}, params=FailParams)
    class Failing(Reducer[FailParams]):
        """fails = on purpose (2024)"""

        def __init__(self, params, context):
            super().__init__(params, context)
            if params.when == "init":
                raise RuntimeError("broken at init")

        def update(self, batch: Batch) -> None:
            if self.params.when == "update":
                raise RuntimeError("broken at update")

        def finalize(self) -> list[MetricValue]:
            if self.params.when == "finalize":
                raise RuntimeError("broken at finalize")
            return [MetricValue("fine", 1.0)]

    yield
    del _REGISTRY["test_failing"]


@pytest.mark.parametrize("when", ["init", "update", "finalize"])
def test_a_failing_reducer_fails_its_own_cell_only(checkpoint, pico_hub, failing_analysis, when):
    tokens = np.random.default_rng(0).integers(0, 512, size=(4, 16))
    cells = [
        cell("saturation", "{}"),
        Cell("key-bad", "test_failing", "test_failing", 1, f'{{"when":"{when}"}}', "h", "set",
             "set-id"),
        cell("anisotropy", '{"drop_first_position":false}'),
    ]  # fmt: skip
    result = unit(checkpoint, pico_hub, cells, 2, tokens)
    [failure] = result.failures
    assert failure.analysis == "test_failing" and f"broken at {when}" in failure.error
    assert {c.cell_key for c in result.cells} == {"key-saturation", "key-anisotropy"}
    assert {m.cell_key for m in result.metrics} == {"key-saturation", "key-anisotropy"}

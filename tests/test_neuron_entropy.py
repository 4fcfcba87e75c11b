"""neuron_entropy against per-neuron loops and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ckptlab.analyses.neuron_entropy as module
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.neuron_entropy import (
    NeuronEntropyParams,
    neuron_entropy,
    semantic_entropy,
    token_entropy,
)


def naive_token_entropy(acts: np.ndarray, ids: np.ndarray, k: int) -> float:
    mass: dict[int, float] = {}
    for t in range(len(ids)):
        mass[ids[t]] = mass.get(ids[t], 0.0) + max(acts[t, k], 0.0)
    total = sum(mass.values())
    if total == 0:
        return math.nan
    return -sum(m / total * math.log(m / total) for m in mass.values() if m > 0)


def naive_semantic_entropy(acts, ids, emb, k, top_k, bins) -> float:
    order = np.argsort(-acts[:, k], kind="stable")[:top_k]
    chosen = [t for t in order if acts[t, k] > 0]
    sims = []
    for a in range(len(chosen)):
        for b in range(a + 1, len(chosen)):
            ta, tb = ids[chosen[a]], ids[chosen[b]]
            if ta != tb:
                u, v = emb[ta], emb[tb]
                sims.append(float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))
    if not sims:
        return math.nan
    counts = np.zeros(bins)
    for s in sims:
        counts[min(int((s + 1) / 2 * bins), bins - 1)] += 1  # equal bins on [-1, 1]
    q = counts[counts > 0] / counts.sum()
    return float(-(q * np.log2(q)).sum())


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(60, 9)) - 0.3
    acts[:, 4] = -np.abs(acts[:, 4])  # a dead neuron
    ids = rng.integers(0, 7, size=60)
    emb = rng.normal(size=(7, 5))
    return acts, ids, emb


def test_token_entropy_equals_the_loop(data, monkeypatch):
    acts, ids, _ = data
    monkeypatch.setattr(module, "NEURON_CHUNK", 4)  # 9 neurons: three chunks
    got = token_entropy(torch.from_numpy(acts), torch.from_numpy(ids)).numpy()
    for k in range(acts.shape[1]):
        expected = naive_token_entropy(acts, ids, k)
        if math.isnan(expected):
            assert math.isnan(got[k])
        else:
            assert got[k] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("top_k", "bins"), [(5, 4), (12, 10), (60, 3)])
def test_semantic_entropy_equals_the_loop(data, monkeypatch, top_k, bins):
    acts, ids, emb = data
    monkeypatch.setattr(module, "NEURON_CHUNK", 4)  # several chunks
    got = semantic_entropy(
        torch.from_numpy(acts), torch.from_numpy(ids), torch.from_numpy(emb), top_k, bins
    ).numpy()
    for k in range(acts.shape[1]):
        expected = naive_semantic_entropy(acts, ids, emb, k, top_k, bins)
        if math.isnan(expected):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(expected, abs=1e-9), k


def test_closed_forms():
    ids = torch.tensor([0, 1, 2, 3] * 5)
    acts = torch.zeros(20, 3, dtype=torch.float64)
    acts[ids == 2, 0] = 1.0  # fires on one token type only
    acts[:, 1] = 1.0  # fires equally on 4 types
    h = token_entropy(acts, ids)
    assert h[0] == pytest.approx(0.0, abs=1e-12)
    assert h[1] == pytest.approx(math.log(4), abs=1e-12)
    assert math.isnan(h[2])  # dead


def test_layer_summaries_and_per_neuron_rows(data):
    acts, ids, emb = data
    capture = Capture(
        input_ids=torch.from_numpy(ids).view(3, 20),
        mlp_activations=(torch.from_numpy(acts).view(3, 20, 9),) * 2,
        input_embedding_weight=torch.from_numpy(emb),
    )
    rows = neuron_entropy(capture, NeuronEntropyParams(top_k=8, bins=5, per_neuron=True))
    by_key = {(r.metric, r.layer, r.item): r.value for r in rows}
    tok = [naive_token_entropy(acts, ids, k) for k in range(9)]
    alive = [v for v in tok if not math.isnan(v)]
    for layer in (1, 2):
        assert by_key[("dead_neurons", layer, None)] == 1
        assert by_key[("neurons", layer, None)] == 9
        assert by_key[("token_entropy_mean", layer, None)] == pytest.approx(np.mean(alive))
        assert by_key[("token_entropy_p50", layer, None)] == pytest.approx(np.median(alive))
        assert by_key[("token_entropy", layer, 0)] == pytest.approx(tok[0])
        assert ("token_entropy", layer, 4) not in by_key  # the dead neuron has no row

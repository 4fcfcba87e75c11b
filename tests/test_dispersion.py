"""dispersion against O(N^2) loops; dispersion = 1 - within-chunk anisotropy (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlab.analyses.anisotropy import mean_pairwise_cosine
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.dispersion import DispersionParams, dispersion


def cos(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def naive_within(vectors) -> float:
    n = len(vectors)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return sum(1 - cos(vectors[i], vectors[j]) for i, j in pairs) / len(pairs)


def naive_between(a, b) -> float:
    return sum(1 - cos(x, y) for x in a for y in b) / (len(a) * len(b))


def _capture(seed=0, seq=4, pos=12, d=5, layers=2, vocab=6):
    rng = np.random.default_rng(seed)
    hidden = tuple(
        torch.from_numpy(rng.normal(size=(seq, pos, d)) + 0.5) for _ in range(layers + 1)
    )
    ids = torch.from_numpy(rng.integers(0, vocab, size=(seq, pos)))
    return Capture(hidden_states=hidden, input_ids=ids)


def test_dispersion_per_chunk_every_layer():
    capture = _capture()
    rows = dispersion(capture, DispersionParams(layers="all"))
    values = {r.layer: r.value for r in rows if r.metric == "dispersion"}
    for k, h in enumerate(capture.hidden_states):
        expected = np.mean([naive_within(chunk) for chunk in h.numpy()])
        assert values[k] == pytest.approx(expected, abs=1e-9)


def test_gap_and_its_parts():
    capture = _capture(seed=1)
    params = DispersionParams(task_token_ids=[0, 1], reference_token_ids=[2])
    rows = {r.metric: r.value for r in dispersion(capture, params)}
    flat = capture.hidden_states[-1].reshape(-1, 5).numpy()
    ids = capture.input_ids.reshape(-1).numpy()
    task, ref = flat[np.isin(ids, [0, 1])], flat[ids == 2]
    assert rows["dispersion_within_task"] == pytest.approx(naive_within(task), abs=1e-9)
    assert rows["dispersion_between"] == pytest.approx(naive_between(task, ref), abs=1e-9)
    assert rows["dispersion_gap"] == pytest.approx(
        naive_within(task) + naive_between(task, ref), abs=1e-9
    )


def test_continuation_clusters():
    # A small vocabulary makes 2-token continuations repeat.
    capture = _capture(seed=2, vocab=3)
    n = 2
    rows = {r.metric: r.value for r in dispersion(capture, DispersionParams(cluster_ngram=n))}
    ids = capture.input_ids.numpy()
    flat = capture.hidden_states[-1].reshape(-1, 5).numpy()
    groups: dict = {}
    for s in range(ids.shape[0]):
        for t in range(ids.shape[1] - n):
            groups.setdefault(tuple(ids[s, t + 1 : t + 1 + n]), []).append(s * ids.shape[1] + t)
    clusters = [flat[m] for m in groups.values() if len(m) >= 2]
    assert rows["num_clusters"] == len(clusters) > 2
    assert rows["cluster_within"] == pytest.approx(
        np.mean([naive_within(c) for c in clusters]), abs=1e-9
    )
    pairs = [
        1 - cos(x, y)
        for a in range(len(clusters))
        for b in range(len(clusters))
        if a != b
        for x in clusters[a]
        for y in clusters[b]
    ]
    assert rows["cluster_between"] == pytest.approx(np.mean(pairs), abs=1e-9)


def test_no_repeated_continuation_means_no_cluster_distances():
    capture = _capture(seed=3, vocab=10_000)
    rows = {r.metric: r.value for r in dispersion(capture, DispersionParams())}
    assert rows["num_clusters"] == 0 and "cluster_within" not in rows


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), seq=st.integers(1, 4), pos=st.integers(2, 20))
def test_dispersion_is_one_minus_within_chunk_anisotropy(seed, seq, pos):
    capture = _capture(seed=seed, seq=seq, pos=pos)
    [row] = [r for r in dispersion(capture, DispersionParams()) if r.metric == "dispersion"]
    h = capture.hidden_states[-1]
    assert row.value == pytest.approx(
        np.mean([1 - mean_pairwise_cosine(chunk) for chunk in h]), abs=1e-12
    )
    assert row.value == pytest.approx(np.mean([naive_within(c) for c in h.numpy()]), abs=1e-9)

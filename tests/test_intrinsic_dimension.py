"""TwoNN against the textbook computation; points on a known subspace (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ckptlab.analyses.intrinsic_dimension as module
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.intrinsic_dimension import (
    IntrinsicDimensionParams,
    intrinsic_dimension,
    twonn_dimension,
)


def textbook_twonn(points: np.ndarray, fit_fraction: float = 0.9) -> float:
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    mu = []
    for i in range(n):
        distances = sorted(np.linalg.norm(x[j] - x[i]) for j in range(n) if j != i)
        mu.append(distances[1] / distances[0])
    mu = np.sort(mu)
    keep = max(1, int(n * fit_fraction))
    f = np.arange(1, n + 1) / n
    xs, ys = np.log(mu[:keep]), -np.log(1 - f[:keep])
    return float((xs * ys).sum() / (xs * xs).sum())


@pytest.mark.parametrize(("n", "d", "seed"), [(30, 3, 0), (120, 8, 1), (200, 2, 2)])
def test_equals_the_textbook_computation(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    assert twonn_dimension(torch.from_numpy(x)) == pytest.approx(textbook_twonn(x), rel=1e-6)


def test_blocks_do_not_change_the_result(monkeypatch):
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(150, 5)))
    whole = twonn_dimension(x)
    monkeypatch.setattr(module, "BLOCK_ELEMENTS", 150 * 7)  # 7 rows per block
    assert twonn_dimension(x) == pytest.approx(whole, rel=1e-12)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), d=st.integers(1, 5))
def test_points_on_a_d_dimensional_subspace(seed, d):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(32, d)))  # a random d-dim subspace of R^32
    points = rng.normal(size=(3000, d)) @ basis.T + 5.0
    assert twonn_dimension(torch.from_numpy(points)) == pytest.approx(d, rel=0.15)


def test_duplicates_are_removed_and_subsampling_is_seeded():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 6))
    h = torch.from_numpy(np.concatenate([base, base[:10]]))[None]  # [1, 50, 6], 10 repeats
    capture = Capture(hidden_states=(h,))
    rows = {
        (r.metric, r.layer): r.value
        for r in intrinsic_dimension(capture, IntrinsicDimensionParams())
    }
    assert rows[("twonn_points", 0)] == 40
    assert rows[("intrinsic_dimension", 0)] == pytest.approx(textbook_twonn(base), rel=1e-6)
    small = IntrinsicDimensionParams(max_points=20, seed=1)
    a = intrinsic_dimension(capture, small)
    assert a == intrinsic_dimension(capture, small)
    assert a[1].value == 20

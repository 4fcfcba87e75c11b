"""linearity against numpy's pinv, closed forms and invariances (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.linearity import LinearityParams, linearity, linearity_score

from reference import naive_linearity


@pytest.mark.parametrize(
    ("n", "d1", "d2", "seed"), [(50, 4, 4, 0), (200, 16, 8, 1), (30, 40, 40, 2), (500, 32, 64, 3)]
)
def test_equals_pinv_least_squares(n, d1, d2, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1))
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.3 * rng.normal(size=(n, d2))
    expected = naive_linearity(x, y)
    assert linearity_score(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        expected, abs=1e-9
    )
    # float32 inputs (as captured) are promoted to float64 inside.
    assert linearity_score(torch.from_numpy(x).float(), torch.from_numpy(y).float()) == (
        pytest.approx(naive_linearity(x.astype(np.float32), y.astype(np.float32)), abs=1e-6)
    )


def test_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8))
    assert linearity_score(torch.from_numpy(x), torch.from_numpy(x @ rng.normal(size=(8, 5)))) == (
        pytest.approx(1.0, abs=1e-12)
    )
    # Y independent of X: the fit explains about d1 / (N - 1) of Y's variance, by chance.
    x, y = rng.normal(size=(20_000, 4)), rng.normal(size=(20_000, 4))
    assert linearity_score(torch.from_numpy(x), torch.from_numpy(y)) < 2e-3


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale_x=st.floats(1e-3, 1e3),
    scale_y=st.floats(1e-3, 1e3),
)
def test_invariant_to_rotation_and_isotropic_scaling(seed, scale_x, scale_y):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 6))
    y = np.sin(x @ rng.normal(size=(6, 6))) + 0.1 * rng.normal(size=(60, 6))
    q1, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    q2, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    base = linearity_score(torch.from_numpy(x), torch.from_numpy(y))
    moved = linearity_score(torch.from_numpy(scale_x * x @ q1), torch.from_numpy(scale_y * y @ q2))
    assert moved == pytest.approx(base, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(3, 40), d=st.integers(1, 12))
def test_an_exactly_linear_map_scores_one(seed, n, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) + rng.normal(size=d)  # affine: centring removes the shift
    assert linearity_score(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(1, abs=1e-9)


def test_rows_label_every_consecutive_pair_and_the_residual_variant():
    g = torch.Generator().manual_seed(0)
    hidden = tuple(torch.randn(3, 7, 5, generator=g, dtype=torch.float64) for _ in range(4))
    rows = linearity(Capture(hidden_states=hidden), LinearityParams())
    by_key = {(r.metric, r.layer): r.value for r in rows}
    assert sorted(by_key) == sorted(
        (m, k) for m in ("linearity", "linearity_residual_removed") for k in range(3)
    )
    for k in range(3):
        x, y = hidden[k].reshape(-1, 5).numpy(), hidden[k + 1].reshape(-1, 5).numpy()
        assert by_key[("linearity", k)] == pytest.approx(naive_linearity(x, y), abs=1e-9)
        assert by_key[("linearity_residual_removed", k)] == pytest.approx(
            naive_linearity(x, y - x), abs=1e-9
        )

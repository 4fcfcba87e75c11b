"""Each analysis against an independent float64 reference and closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptlab.analyses.anisotropy import AnisotropyParams, anisotropy, mean_pairwise_cosine
from ckptlab.analyses.capture import Capture, MissingCapture
from ckptlab.analyses.registry import NoParams
from ckptlab.analyses.saturation import saturation
from ckptlab.analyses.singular_entropy import SingularEntropyParams, singular_entropy

from reference import naive_mean_pairwise_cosine, naive_singular_entropy


@pytest.mark.parametrize(("n", "d", "seed"), [(2, 3, 0), (17, 5, 1), (64, 32, 2), (200, 8, 3)])
def test_anisotropy_identity_equals_pairwise_loop(n, d, seed):
    rng = np.random.default_rng(seed)
    # Shifted so the mean cosine is far from 0 and the identity's cancellation is exercised.
    x = rng.normal(size=(n, d)) + rng.normal(size=d)
    assert mean_pairwise_cosine(torch.from_numpy(x)) == pytest.approx(
        naive_mean_pairwise_cosine(x), abs=1e-9
    )
    assert mean_pairwise_cosine(torch.from_numpy(x).float()) == pytest.approx(
        naive_mean_pairwise_cosine(x), abs=1e-6
    )


def test_anisotropy_closed_forms():
    same = torch.ones(50, 7) * torch.arange(1, 8)
    assert mean_pairwise_cosine(same) == pytest.approx(1.0, abs=1e-12)
    # +v and -v alternating: of the N-1 partners of a vector, N/2 are -v and N/2 - 1 are +v.
    n = 10
    v = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    signed = v * torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(n // 2)[:, None]
    assert mean_pairwise_cosine(signed) == pytest.approx(-1 / (n - 1), abs=1e-12)
    # Isotropic Gaussian: A concentrates at 0 with spread ~ 1 / (N sqrt(d)).
    iso = torch.from_numpy(np.random.default_rng(0).normal(size=(20_000, 64)))
    assert abs(mean_pairwise_cosine(iso)) < 1e-3


def test_anisotropy_chunking_does_not_change_the_result(monkeypatch):
    import ckptlab.analyses.anisotropy as module

    x = torch.from_numpy(np.random.default_rng(5).normal(size=(1000, 6)) + 0.3)
    whole = mean_pairwise_cosine(x)
    monkeypatch.setattr(module, "_CHUNK_ROWS", 7)
    assert mean_pairwise_cosine(x) == pytest.approx(whole, abs=1e-12)


def test_anisotropy_rejects_zero_vectors_and_single_vectors():
    with pytest.raises(ValueError, match="zero vector"):
        mean_pairwise_cosine(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="two vectors"):
        mean_pairwise_cosine(torch.ones(1, 4))


def _capture(seq=3, pos=5, d=4, layers=2, seed=0) -> Capture:
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(seq, pos, d, generator=g) + k for k in range(layers + 1))
    return Capture(hidden_states=hidden, pre_final_norm=torch.randn(seq, pos, d, generator=g))


def test_anisotropy_rows_per_layer_pool_sequences_and_label_pre_norm():
    capture = _capture()
    rows = anisotropy(capture, AnisotropyParams())
    per_layer = {r.layer: r.value for r in rows if r.metric == "anisotropy"}
    assert sorted(per_layer) == [0, 1, 2]
    for k, h in enumerate(capture.hidden_states):
        pooled = h.reshape(-1, h.shape[-1]).double().numpy()  # all 15 vectors, across sequences
        assert per_layer[k] == pytest.approx(naive_mean_pairwise_cosine(pooled), abs=1e-6)
    [pre] = [r for r in rows if r.metric == "anisotropy_pre_final_norm"]
    assert pre.layer == 2
    expected = naive_mean_pairwise_cosine(capture.pre_final_norm.reshape(-1, 4).double().numpy())
    assert pre.value == pytest.approx(expected, abs=1e-6)


def test_anisotropy_drop_first_position():
    capture = _capture()
    rows = anisotropy(capture, AnisotropyParams(drop_first_position=True))
    h0 = capture.hidden_states[0][:, 1:, :].reshape(-1, 4).double().numpy()
    [layer0] = [r for r in rows if r.metric == "anisotropy" and r.layer == 0]
    assert layer0.value == pytest.approx(naive_mean_pairwise_cosine(h0), abs=1e-6)


def test_anisotropy_needs_its_capture():
    with pytest.raises(MissingCapture, match="hidden_states"):
        anisotropy(Capture(), AnisotropyParams())


@pytest.mark.parametrize(("v", "d", "seed"), [(40, 8, 0), (512, 32, 1), (6, 10, 2), (300, 300, 3)])
def test_singular_entropy_equals_full_svd(v, d, seed):
    w = np.random.default_rng(seed).normal(size=(v, d)) * np.linspace(0.1, 3, d)
    rows = {
        r.metric: r.value
        for r in singular_entropy(
            Capture(lm_head_weight=torch.from_numpy(w)), SingularEntropyParams()
        )
    }
    kl, h = naive_singular_entropy(w)
    assert rows["singular_entropy"] == pytest.approx(kl, abs=1e-9)
    assert rows["spectral_entropy"] == pytest.approx(h, abs=1e-9)
    assert rows["lm_head_rows"] == v


def test_singular_entropy_closed_forms():
    # Rank 1: one non-zero singular value, p = (1, 0, ..., 0), H = 0, KL = ln r.
    g = torch.Generator().manual_seed(0)
    u = torch.randn(100, 1, dtype=torch.float64, generator=g)
    v = torch.randn(1, 16, dtype=torch.float64, generator=g)
    rows = {
        r.metric: r.value
        for r in singular_entropy(Capture(lm_head_weight=u @ v), SingularEntropyParams())
    }
    assert rows["singular_entropy"] == pytest.approx(math.log(16), abs=1e-9)
    assert rows["spectral_entropy"] == pytest.approx(0.0, abs=1e-9)
    # Orthonormal columns: all sigma equal, p uniform, KL = 0.
    q, _ = torch.linalg.qr(torch.randn(64, 16, dtype=torch.float64, generator=g))
    rows = {
        r.metric: r.value
        for r in singular_entropy(Capture(lm_head_weight=3 * q), SingularEntropyParams())
    }
    assert rows["singular_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert rows["spectral_entropy"] == pytest.approx(math.log(16), abs=1e-9)


def test_singular_entropy_trims_padded_rows_beyond_the_tokenizer():
    w = np.random.default_rng(0).normal(size=(64, 8))
    capture = Capture(lm_head_weight=torch.from_numpy(w), tokenizer_vocab_size=50)
    trimmed = {r.metric: r.value for r in singular_entropy(capture, SingularEntropyParams())}
    kept = {
        r.metric: r.value
        for r in singular_entropy(capture, SingularEntropyParams(trim_padded_rows=False))
    }
    assert trimmed["lm_head_rows"] == 50 and kept["lm_head_rows"] == 64
    assert trimmed["singular_entropy"] == pytest.approx(naive_singular_entropy(w[:50])[0], abs=1e-9)
    assert kept["singular_entropy"] == pytest.approx(naive_singular_entropy(w)[0], abs=1e-9)


def test_saturation_is_the_token_weighted_mean():
    nll = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])
    rows = {r.metric: r.value for r in saturation(Capture(token_nll=nll), NoParams())}
    assert rows["cross_entropy"] == pytest.approx(24 / 6)
    assert rows["num_predicted_tokens"] == 6


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2_000, 6_000), d=st.integers(8, 64))
def test_anisotropy_of_an_isotropic_gaussian_is_near_zero(seed, n, d):
    # E[A] = 0 and sd(A) ~ sqrt(2 / d) / N: allow six standard deviations.
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)))
    assert abs(mean_pairwise_cosine(x)) < 6 * math.sqrt(2 / d) / n + 1e-12

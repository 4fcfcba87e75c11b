"""logit_lens and head_rank_proxy against float64 loops; singular_entropy v2's variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ckptlab.analyses.readout as readout_module
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.head_rank_proxy import HeadRankParams, head_rank_proxy
from ckptlab.analyses.logit_lens import logit_lens
from ckptlab.analyses.registry import NoParams
from ckptlab.analyses.singular_entropy import SingularEntropyParams, singular_entropy
from ckptlab.architectures import LogitOp

from reference import naive_cross_entropy

V, D, SEQ, POS, LAYERS = 40, 6, 3, 9, 3


def _layer_norm(h: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = h.mean(axis=-1, keepdims=True)
    var = h.var(axis=-1, keepdims=True)
    return (h - mean) / np.sqrt(var + eps) * weight + bias


@pytest.fixture
def capture() -> Capture:
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(D, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(D, generator=g, dtype=torch.float64))
        norm.bias.copy_(0.3 * torch.randn(D, generator=g, dtype=torch.float64))
    return Capture(
        input_ids=torch.randint(0, V, (SEQ, POS), generator=g),
        hidden_states=tuple(
            2 * torch.randn(SEQ, POS, D, generator=g, dtype=torch.float64)
            for _ in range(LAYERS + 1)
        ),
        lm_head_weight=torch.randn(V, D, generator=g, dtype=torch.float64),
        final_norm=norm,
    )


def test_logit_lens_equals_a_float64_loop(capture, monkeypatch):
    norm = capture.final_norm
    w = capture.lm_head_weight.numpy()
    tokens = capture.input_ids.numpy()
    rows = {r.layer: r.value for r in logit_lens(capture, NoParams())}
    assert sorted(rows) == list(range(LAYERS + 1))
    for k, h in enumerate(capture.hidden_states):
        h = h.numpy()
        if k < LAYERS:  # hidden_states[L] is already after the final norm
            h = _layer_norm(h, norm.weight.detach().numpy(), norm.bias.detach().numpy(), norm.eps)
        assert rows[k] == pytest.approx(naive_cross_entropy(h @ w.T, tokens), rel=1e-6)
    monkeypatch.setattr(readout_module, "CHUNK_TOKENS", 5)  # chunking changes nothing
    chunked = {r.layer: r.value for r in logit_lens(capture, NoParams())}
    assert chunked == pytest.approx(rows, rel=1e-12)


def test_head_rank_proxy_equals_explicit_truncations(capture):
    rows = {r.metric: r.value for r in head_rank_proxy(capture, HeadRankParams(ranks=[1, 3, 99]))}
    u, s, vh = np.linalg.svd(capture.lm_head_weight.numpy(), full_matrices=False)
    h = capture.hidden_states[-1].numpy()
    tokens = capture.input_ids.numpy()
    for r in (1, 3):
        w_r = (u[:, :r] * s[:r]) @ vh[:r]
        expected = naive_cross_entropy(h @ w_r.T, tokens)
        assert rows[f"cross_entropy_rank_{r}"] == pytest.approx(expected, rel=1e-6)
    full = naive_cross_entropy(h @ capture.lm_head_weight.numpy().T, tokens)
    assert rows["cross_entropy_full_rank"] == pytest.approx(full, rel=1e-6)
    assert rows["cross_entropy_rank_99"] == pytest.approx(full, rel=1e-6)  # r >= d: W_r = W


@pytest.mark.parametrize(
    ("op", "post"),
    [
        (LogitOp("divide", 4.0), lambda z: z / 4.0),
        (LogitOp("multiply", 0.0625), lambda z: z * 0.0625),
        (LogitOp("softcap", 1.5), lambda z: np.tanh(z / 1.5) * 1.5),
    ],
)
def test_the_readout_applies_the_family_post_processing(capture, op, post):
    """Granite's division, Cohere's scale, Gemma 2's soft-cap: after the head, in the logit
    lens and in every rank of the head rank proxy alike."""
    capture.logit_transform = op
    norm = capture.final_norm
    w = capture.lm_head_weight.numpy()
    tokens = capture.input_ids.numpy()
    lens = {r.layer: r.value for r in logit_lens(capture, NoParams())}
    for k, h in enumerate(capture.hidden_states):
        h = h.numpy()
        if k < LAYERS:
            h = _layer_norm(h, norm.weight.detach().numpy(), norm.bias.detach().numpy(), norm.eps)
        assert lens[k] == pytest.approx(naive_cross_entropy(post(h @ w.T), tokens), rel=1e-6)
    rows = {r.metric: r.value for r in head_rank_proxy(capture, HeadRankParams(ranks=[2]))}
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    h = capture.hidden_states[-1].numpy()
    w_2 = (u[:, :2] * s[:2]) @ vh[:2]
    expected = naive_cross_entropy(post(h @ w_2.T), tokens)
    assert rows["cross_entropy_rank_2"] == pytest.approx(expected, rel=1e-6)
    full = naive_cross_entropy(post(h @ w.T), tokens)
    assert rows["cross_entropy_full_rank"] == pytest.approx(full, rel=1e-6)


def test_singular_entropy_energy_variant_and_effective_rank():
    w = np.random.default_rng(3).normal(size=(50, 7)) * np.arange(1, 8)
    rows = {
        r.metric: r.value
        for r in singular_entropy(
            Capture(lm_head_weight=torch.from_numpy(w)), SingularEntropyParams()
        )
    }
    sigma = np.linalg.svd(w, compute_uv=False)
    p, q = sigma / sigma.sum(), sigma**2 / (sigma**2).sum()
    h_p, h_q = -(p * np.log(p)).sum(), -(q * np.log(q)).sum()
    assert rows["spectral_entropy_sq"] == pytest.approx(h_q, abs=1e-9)
    assert rows["singular_entropy_sq"] == pytest.approx(math.log(7) - h_q, abs=1e-9)
    assert rows["effective_rank"] == pytest.approx(math.exp(h_p), abs=1e-9)
    q_orth, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(30, 5)))
    rows = {
        r.metric: r.value
        for r in singular_entropy(
            Capture(lm_head_weight=torch.from_numpy(q_orth)), SingularEntropyParams()
        )
    }
    assert rows["effective_rank"] == pytest.approx(5, abs=1e-9)
    assert rows["singular_entropy_sq"] == pytest.approx(0, abs=1e-9)

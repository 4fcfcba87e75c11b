"""Singular entropy of the LM head."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict

from analyses.capture import Capture
from analyses.registry import MetricValue, Need, analysis


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """The r = min(V, d) singular values of weight [V, d], descending, in float64.

    Fast path: eigenvalues of the d x d Gram matrix W^T W (V >> d for LM heads), then
    sigma = sqrt(max(lambda, 0)); the clamp removes tiny negative round-off.
    """
    w = weight.to(torch.float64)
    v, d = w.shape
    gram = w.T @ w if v >= d else w @ w.T  # [min(V, d), min(V, d)]
    eigenvalues = torch.linalg.eigvalsh(gram)  # ascending
    return eigenvalues.clamp_min(0).sqrt().flip(0)


def entropy(p: torch.Tensor) -> float:
    """Shannon entropy in nats, with 0 ln 0 = 0."""
    p = p[p > 0]
    return float(-(p * p.log()).sum())


class SingularEntropyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # GPT-NeoX pads the head to a multiple of 128 rows beyond len(tokenizer); those rows are
    # never trained as targets of real tokens, so they are dropped by default.
    trim_padded_rows: bool = True


@analysis(
    name="singular_entropy",
    version=1,
    needs={Need.LM_HEAD},
    params=SingularEntropyParams,
)
def singular_entropy(capture: Capture, params: SingularEntropyParams) -> list[MetricValue]:
    """Singular entropy of the LM head W [V, d] (Godey et al. 2024, "Why do small language
    models underperform?").

        p_i = sigma_i / sum_j sigma_j     over the r = min(V, d) singular values of W
        H(p) = -sum_i p_i ln p_i
        singular_entropy = KL(p || uniform_r) = ln r - H(p)    in [0, ln r]

    Higher = a spikier spectrum (degenerate head). ``spectral_entropy`` stores H(p);
    ``lm_head_rows`` records how many rows were used (after trimming padding).
    """
    weight = capture.require("lm_head_weight")  # [V_padded, d]
    if params.trim_padded_rows and capture.tokenizer_vocab_size is not None:
        weight = weight[: capture.tokenizer_vocab_size]
    sigma = singular_values(weight)
    r = sigma.numel()
    h = entropy(sigma / sigma.sum())
    return [
        MetricValue("singular_entropy", math.log(r) - h),
        MetricValue("spectral_entropy", h),
        MetricValue("lm_head_rows", float(weight.shape[0])),
    ]

"""Anisotropy: mean pairwise cosine similarity of a layer's token vectors."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.registry import MetricValue, Need, analysis

_CHUNK_ROWS = 8192  # rows converted to float64 at a time: memory stays O(chunk * d)


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean of cos(h_i, h_j) over ordered pairs i != j of the rows of ``vectors`` [N, d].

    Uses the O(N d) identity: with u_i = h_i / ||h_i|| and s = sum_i u_i,
    sum_{i != j} u_i . u_j = ||s||^2 - N, so A = (||s||^2 - N) / (N (N - 1)).
    s is accumulated in float64 so that the cancellation in ||s||^2 - N stays exact enough.
    Zero vectors have no direction; they are an error rather than a silent NaN.
    """
    n = vectors.shape[0]
    if n < 2:
        raise ValueError("anisotropy needs at least two vectors")
    total = torch.zeros(vectors.shape[1], dtype=torch.float64, device=vectors.device)
    for start in range(0, n, _CHUNK_ROWS):
        chunk = vectors[start : start + _CHUNK_ROWS].to(torch.float64)  # [chunk, d]
        norms = chunk.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("anisotropy is undefined for a zero vector")
        total += (chunk / norms).sum(dim=0)
    return float((total.dot(total) - n) / (n * (n - 1)))


class AnisotropyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Position 0 often carries a huge-norm "attention sink" vector that dominates cosines.
    drop_first_position: bool = False


@analysis(
    name="anisotropy",
    version=1,
    needs={Need.HIDDEN_STATES, Need.PRE_FINAL_NORM},
    params=AnisotropyParams,
)
def anisotropy(capture: Capture, params: AnisotropyParams) -> list[MetricValue]:
    """Anisotropy per layer (Ethayarajh 2019; Godey et al. 2024, "Why do small language models
    underperform?").

        A_k = 1 / (N (N - 1)) * sum_{i != j} cos(h_i, h_j),   h = hidden_states[k] token vectors

    All token vectors of the input set are pooled across sequences (pairs span sequences).
    Metric ``anisotropy`` at layer k = hidden_states[k] (0 = embeddings, L = after the final
    norm); ``anisotropy_pre_final_norm`` at layer L = the last block's output before the norm.
    Not to be confused with the largest covariance eigenvalue's share, a different metric.
    """
    first = 1 if params.drop_first_position else 0

    def pooled(h: torch.Tensor) -> torch.Tensor:  # [seq, pos, d] -> [seq * (pos - first), d]
        return h[:, first:, :].reshape(-1, h.shape[-1])

    hidden_states = capture.require("hidden_states")
    rows = [
        MetricValue("anisotropy", mean_pairwise_cosine(pooled(h)), layer=k)
        for k, h in enumerate(hidden_states)
    ]
    last = len(hidden_states) - 1
    pre_norm = mean_pairwise_cosine(pooled(capture.require("pre_final_norm")))
    rows.append(MetricValue("anisotropy_pre_final_norm", pre_norm, layer=last))
    return rows

"""Anisotropy: mean pairwise cosine similarity of a layer's token vectors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Batch
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import torch

_CHUNK_ROWS = 8192  # rows converted to float64 at a time: memory stays O(chunk * d)


class UnitSum:
    """s = sum_i h_i / ||h_i|| and the count N, accumulated in float64: the sufficient
    statistics of every mean-cosine metric (sum_{i != j} u_i . u_j = ||s||^2 - N)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # [d] float64
        self.count = 0

    def add(self, vectors: torch.Tensor) -> None:  # [N, d]
        if self.total is None:
            self.total = torch.zeros(vectors.shape[1], dtype=torch.float64, device=vectors.device)
        for start in range(0, vectors.shape[0], _CHUNK_ROWS):
            chunk = vectors[start : start + _CHUNK_ROWS].to(torch.float64)  # [chunk, d]
            norms = torch.linalg.vector_norm(chunk, dim=1)  # [chunk]
            if bool((norms == 0).any()):
                raise ValueError("anisotropy is undefined for a zero vector")
            # sum_i h_i / ||h_i|| as one matrix-vector product: no [chunk, d] quotient.
            self.total += norms.reciprocal() @ chunk
        self.count += vectors.shape[0]

    def mean_pairwise_cosine(self) -> float:
        n = self.count
        if n < 2:
            raise ValueError("anisotropy needs at least two vectors")
        return float((self.total.dot(self.total) - n) / (n * (n - 1)))


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean of cos(h_i, h_j) over ordered pairs i != j of the rows of ``vectors`` [N, d].

    Uses the O(N d) identity: with u_i = h_i / ||h_i|| and s = sum_i u_i,
    sum_{i != j} u_i . u_j = ||s||^2 - N, so A = (||s||^2 - N) / (N (N - 1)).
    s is accumulated in float64 so that the cancellation in ||s||^2 - N stays exact enough.
    Zero vectors have no direction; they are an error rather than a silent NaN.
    """
    if vectors.shape[0] < 2:
        raise ValueError("anisotropy needs at least two vectors")
    sums = UnitSum()
    sums.add(vectors)
    return sums.mean_pairwise_cosine()


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
class Anisotropy(Reducer[AnisotropyParams]):
    """Anisotropy per layer (Ethayarajh 2019; Godey et al. 2024, "Why do small language models
    underperform?").

        A_k = 1 / (N (N - 1)) * sum_{i != j} cos(h_i, h_j),   h = hidden_states[k] token vectors

    All token vectors of the input set are pooled across sequences (pairs span sequences).
    Metric ``anisotropy`` at layer k = hidden_states[k] (0 = embeddings, L = after the final
    norm); ``anisotropy_pre_final_norm`` at layer L = the last block's output before the norm.
    Not to be confused with the largest covariance eigenvalue's share, a different metric.
    State per layer: the float64 sum of unit vectors and their count (O(d)).
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        self.layers: list[UnitSum] = []
        self.pre_norm = UnitSum()

    def _pooled(self, h: torch.Tensor) -> torch.Tensor:  # [b, pos, d] -> [b * (pos - first), d]
        first = 1 if self.params.drop_first_position else 0
        return h[:, first:, :].reshape(-1, h.shape[-1])

    def update(self, batch: Batch) -> None:
        hidden_states = batch.require("hidden_states")
        pre_norm = batch.require("pre_final_norm")
        if not self.layers:
            self.layers = [UnitSum() for _ in hidden_states]
        for sums, h in zip(self.layers, hidden_states, strict=True):
            sums.add(self._pooled(h))
        self.pre_norm.add(self._pooled(pre_norm))

    def finalize(self) -> list[MetricValue]:
        if not self.layers:
            raise ValueError("anisotropy needs at least two vectors")
        rows = [
            MetricValue("anisotropy", sums.mean_pairwise_cosine(), layer=k)
            for k, sums in enumerate(self.layers)
        ]
        last = len(self.layers) - 1
        pre_norm = self.pre_norm.mean_pairwise_cosine()
        rows.append(MetricValue("anisotropy_pre_final_norm", pre_norm, layer=last))
        return rows


anisotropy = Anisotropy.on_capture

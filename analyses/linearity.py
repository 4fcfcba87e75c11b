"""Linearity score of consecutive layers ("Your Transformer is Secretly Linear")."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Batch
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import torch


def _centre_and_normalise(m: torch.Tensor) -> torch.Tensor:
    m = m - m.mean(dim=0, keepdim=True)
    norm = torch.linalg.matrix_norm(m)
    return m / norm if norm > 0 else m


def linearity_score(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - ||X A - Y||_F^2 with A = pinv(X) Y, after centring the columns of X [N, d1] and
    Y [N, d2] and dividing each by its Frobenius norm (so ||Y||_F = 1).

    The least-squares fit X A is the projection of Y onto the column space of X, so the score
    is ||U_r^T Y||_F^2 with U_r the left singular vectors of X whose singular values are not
    numerically zero: exact for rank-deficient X (N < d, repeated rows), where a plain QR would
    project onto directions outside col(X). Float64 throughout.
    """
    x = _centre_and_normalise(x.to(torch.float64))
    y = _centre_and_normalise(y.to(torch.float64))
    u, sigma, _ = torch.linalg.svd(x, full_matrices=False)  # u: [N, min(N, d1)]
    tolerance = sigma.max() * max(x.shape) * torch.finfo(torch.float64).eps
    u = u[:, sigma > tolerance]
    return float(1 - (y - u @ (u.T @ y)).square().sum())


def _explained(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    """||P_A B||_F^2 / ||B||_F^2, P_A the projection onto the column space of A (singular
    values above sigma_max * max(n, d) * eps, as in linearity_score)."""
    u, sigma, _ = torch.linalg.svd(a, full_matrices=False)
    if sigma.numel() == 0 or sigma.max() == 0:
        return 0.0
    tolerance = sigma.max() * max(n, a.shape[1]) * torch.finfo(torch.float64).eps
    u = u[:, sigma > tolerance]
    return float((u.T @ b).square().sum() / b.square().sum())


class PairQR:
    """The R factor of M = [1, X, Y] (N x (1 + d1 + d2)), updated batch by batch:
    R <- qr([R; M_batch]).R (a tall-skinny QR: exact and as stable as one QR of all of M).

    With Q's first column along the ones vector, the centred [X_c, Y_c] = Q' R[1:, 1:], Q'
    orthonormal, so every norm and projection of the centred matrices can be read off
    A = R[1:, X columns] and B = R[1:, Y columns]: the linearity score is ||P_A B||^2 / ||B||^2,
    and Y - X (the residual-removed variant) is B - A, with no second factorisation.
    """

    def __init__(self) -> None:
        self.r: torch.Tensor | None = None  # [<= 1 + d1 + d2, 1 + d1 + d2] float64
        self.count = 0
        self.d1 = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:  # [n, d1], [n, d2]
        ones = torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)
        y = y.to(x.device)  # consecutive layers may sit on different GPUs (device_map)
        m = torch.cat([ones, x.to(torch.float64), y.to(torch.float64)], dim=1)
        stacked = m if self.r is None else torch.cat([self.r, m])
        self.r = torch.linalg.qr(stacked, mode="r").R
        self.count += x.shape[0]
        self.d1 = x.shape[1]

    def scores(self) -> tuple[float, float | None]:
        """(linearity, linearity of Y - X or None when the widths differ)."""
        rest = self.r[1:, 1:]
        a, b = rest[:, : self.d1], rest[:, self.d1 :]
        removed = _explained(a, b - a, self.count) if a.shape == b.shape else None
        return _explained(a, b, self.count), removed


class LinearityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    drop_first_position: bool = False


@analysis(name="linearity", version=1, needs={Need.HIDDEN_STATES}, params=LinearityParams)
class Linearity(Reducer[LinearityParams]):
    """Linearity score of every consecutive layer pair (Razzhigaev et al. 2024, "Your
    Transformer is Secretly Linear").

        X = hidden_states[k], Y = hidden_states[k+1], token vectors pooled over all positions
        centre each feature, divide each matrix by its Frobenius norm
        A = pinv(X) Y  (unconstrained least squares, an R^2; not orthogonal Procrustes)
        linearity = 1 - ||X A - Y||_F^2                                  in [0, 1]
        linearity_residual_removed: the same with Y replaced by Y - X (before centring)

    Row ``layer`` = k labels the pair (k, k+1); pair (0, 1) starts at the embeddings and the
    last pair's Y is hidden_states[L], after the final norm. Streaming state per pair: the R
    factor of [1, X, Y], (1 + 2 d)^2 float64 values whatever the number of tokens; the score
    is read off it exactly (see PairQR), equal to the one-shot SVD of linearity_score.
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        self.pairs: list[PairQR] = []

    def update(self, batch: Batch) -> None:
        first = 1 if self.params.drop_first_position else 0
        hidden = [h[:, first:, :].reshape(-1, h.shape[-1]) for h in batch.require("hidden_states")]
        if not self.pairs:
            self.pairs = [PairQR() for _ in range(len(hidden) - 1)]
        for k, pair in enumerate(self.pairs):
            pair.add(hidden[k], hidden[k + 1])

    def finalize(self) -> list[MetricValue]:
        rows = []
        for k, pair in enumerate(self.pairs):
            score, removed = pair.scores()
            rows.append(MetricValue("linearity", score, layer=k))
            if removed is not None:
                rows.append(MetricValue("linearity_residual_removed", removed, layer=k))
        return rows


linearity = Linearity.on_capture

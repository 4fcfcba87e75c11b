"""Linearity score of consecutive layers ("Your Transformer is Secretly Linear")."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Capture
from ckptlab.analyses.registry import MetricValue, Need, analysis


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


class LinearityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    drop_first_position: bool = False


@analysis(name="linearity", version=1, needs={Need.HIDDEN_STATES}, params=LinearityParams)
def linearity(capture: Capture, params: LinearityParams) -> list[MetricValue]:
    """Linearity score of every consecutive layer pair (Razzhigaev et al. 2024, "Your
    Transformer is Secretly Linear").

        X = hidden_states[k], Y = hidden_states[k+1], token vectors pooled over all positions
        centre each feature, divide each matrix by its Frobenius norm
        A = pinv(X) Y  (unconstrained least squares, an R^2; not orthogonal Procrustes)
        linearity = 1 - ||X A - Y||_F^2                                  in [0, 1]
        linearity_residual_removed: the same with Y replaced by Y - X (before centring)

    Row ``layer`` = k labels the pair (k, k+1); pair (0, 1) starts at the embeddings and the
    last pair's Y is hidden_states[L], after the final norm. Memory: ~3 N d float64 values
    per pair (X, Y and the singular vectors).
    """
    first = 1 if params.drop_first_position else 0
    hidden = [h[:, first:, :].reshape(-1, h.shape[-1]) for h in capture.require("hidden_states")]
    rows = []
    for k in range(len(hidden) - 1):
        x, y = hidden[k], hidden[k + 1]
        rows.append(MetricValue("linearity", linearity_score(x, y), layer=k))
        removed = linearity_score(x, y.to(torch.float64) - x.to(torch.float64))
        rows.append(MetricValue("linearity_residual_removed", removed, layer=k))
    return rows

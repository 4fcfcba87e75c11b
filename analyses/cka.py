"""Linear CKA between a checkpoint's layers and a reference checkpoint's."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.capture import Capture, sketch_hidden_states
from ckptlab.analyses.registry import MetricValue, Need, analysis


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) for column-centred X [n, d1], Y [n, d2], in
    float64: feature-space products, O(n d1 d2), no n x n Gram matrix."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


class CKAParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The reference checkpoint: "last" = the last selected step of the same model, or a step.
    reference: Literal["last"] | int = "last"
    max_tokens: int = Field(4096, ge=2)  # token positions in the sketch (seeded sample)
    seed: int = 0


@analysis(name="cka", version=1, needs={Need.HIDDEN_STATES, Need.REFERENCE}, params=CKAParams)
def cka(capture: Capture, params: CKAParams) -> list[MetricValue]:
    """Linear CKA per layer against a reference checkpoint (Kornblith et al. 2019, "Similarity
    of Neural Network Representations Revisited").

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),   X, Y column-centred

    X = this checkpoint's hidden_states[k], Y = the reference's hidden_states[k], on the same
    token positions: a seeded sample of at most ``max_tokens`` positions of the input set. The
    reference's vectors come from a sketch computed once per (reference commit, input set) and
    shared with every checkpoint. Invariant to orthogonal transforms and isotropic scaling;
    CKA of the reference with itself is 1.
    """
    reference = capture.require("reference")
    mine = sketch_hidden_states(capture.require("hidden_states"), reference.positions)
    if len(mine) != len(reference.layers):
        raise ValueError(f"{len(mine)} layers here, {len(reference.layers)} in the reference")
    return [
        MetricValue("cka", linear_cka(torch.from_numpy(x), torch.from_numpy(y)), layer=k)
        for k, (x, y) in enumerate(zip(mine, reference.layers, strict=True))
    ]

"""Linear CKA between a checkpoint's layers and a reference checkpoint's."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ckptlab.analyses.capture import Batch, sample_positions
from ckptlab.analyses.position_sample import PositionSample
from ckptlab.analyses.registry import MetricValue, Need, Reducer, analysis
from ckptlab.lazy import torch


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
class CKA(Reducer[CKAParams]):
    """Linear CKA per layer against a reference checkpoint (Kornblith et al. 2019, "Similarity
    of Neural Network Representations Revisited").

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),   X, Y column-centred

    X = this checkpoint's hidden_states[k], Y = the reference's hidden_states[k], on the same
    token positions: a seeded sample of at most ``max_tokens`` positions of the input set,
    gathered while the pass streams. The reference's vectors at those positions (its sketch)
    are gathered the same way, once per (reference commit, input set), and shared with every
    checkpoint. Invariant to orthogonal transforms and isotropic scaling; CKA of the
    reference with itself is 1.
    """

    def __init__(self, params, context):
        super().__init__(params, context)
        if context.reference is not None:
            positions = context.reference.positions
        else:  # the reference checkpoint itself: its sketch is made from this very pass
            seq, pos = context.input_shape()
            positions = sample_positions(seq * pos, params.max_tokens, params.seed)
        self.sample = PositionSample(positions, torch.float32)

    def update(self, batch: Batch) -> None:
        self.sample.add(batch, batch.require("hidden_states"))

    def finalize(self) -> list[MetricValue]:
        reference = self.context.require("reference")
        mine = self.sample.complete()
        if not np.array_equal(self.sample.positions.numpy(), reference.positions):
            raise ValueError("the reference sketch was taken at other token positions")
        if len(mine) != len(reference.layers):
            raise ValueError(f"{len(mine)} layers here, {len(reference.layers)} in the reference")
        return [
            MetricValue("cka", linear_cka(x.cpu(), torch.from_numpy(y)), layer=k)
            for k, (x, y) in enumerate(zip(mine, reference.layers, strict=True))
        ]


cka = CKA.on_capture

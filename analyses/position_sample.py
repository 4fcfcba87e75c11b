"""Vectors at a fixed set of token positions, gathered while the pass streams: what TwoNN and
CKA compute on, and what a reference checkpoint's sketch is.

Owns: ``PositionSample``. Must not: choose the positions (its caller does, e.g. with
``capture.sample_positions``), or keep a batch's tensors: it copies the sampled rows.
"""

from __future__ import annotations

import numpy as np

from ckptlab.analyses.capture import Batch
from ckptlab.lazy import torch


class PositionSample:
    """Each layer's vectors at ``positions`` (sorted flat indices into the input set's
    [seq * pos]), filled in batch order; ``dtype`` None keeps the captured dtype."""

    def __init__(self, positions: np.ndarray, dtype: torch.dtype | None = None):
        self.positions = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        self.dtype = dtype
        self.layers: list[torch.Tensor] = []  # (L+1) x [n, d]
        self.filled = 0

    def add(self, batch: Batch, layers: tuple[torch.Tensor, ...]) -> None:
        """Copy this batch's sampled rows of every layer ([b, pos, d] each)."""
        b, width = batch.input_ids.shape
        lo, hi = batch.start * width, (batch.start + b) * width
        inside = self.positions[(self.positions >= lo) & (self.positions < hi)] - lo
        if not self.layers:
            self.layers = [
                torch.empty(
                    len(self.positions), h.shape[-1], dtype=self.dtype or h.dtype, device=h.device
                )
                for h in layers
            ]
        rows = slice(self.filled, self.filled + len(inside))
        for buffer, h in zip(self.layers, layers, strict=True):
            buffer[rows] = h.reshape(-1, h.shape[-1])[inside.to(h.device)].to(buffer.dtype)
        self.filled += len(inside)

    def complete(self) -> list[torch.Tensor]:
        if self.filled != len(self.positions):
            raise RuntimeError(f"{self.filled} of {len(self.positions)} positions were seen")
        return self.layers

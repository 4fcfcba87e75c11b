"""Cross-entropy of hidden states read out as next-token logits; shared by logit_lens and
head_rank_proxy. Chunked over tokens so logits never exceed [chunk, vocab].

Owns: the chunked readout NLL (``readout_nll_sum``, ``readout_cross_entropy``, ``MeanNLL``).
Must not: register an analysis, or read out logits its own way: ``to_logits``
(``context.readout_logits``) is the family's readout.
"""

from __future__ import annotations

from collections.abc import Callable

from ckptlab.lazy import F, torch

CHUNK_TOKENS = 4096


def readout_nll_sum(
    hidden: torch.Tensor,  # [seq, pos, d_model]
    input_ids: torch.Tensor,  # [seq, pos]
    to_logits: Callable[[torch.Tensor], torch.Tensor],  # [n, d_model] -> [n, vocab] float32
) -> tuple[float, int]:
    """(sum, count) of -ln softmax(to_logits(h_t))[x_{t+1}] over every predicted position:
    float32 log-softmax per token, float64 sum, so chunks and batches add up exactly."""
    states = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])  # positions that predict
    targets = input_ids[:, 1:].reshape(-1).to(hidden.device)
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, states.shape[0], CHUNK_TOKENS):
        logits = to_logits(states[start : start + CHUNK_TOKENS]).float()
        nll = F.cross_entropy(logits, targets[start : start + CHUNK_TOKENS], reduction="none")
        total += nll.double().sum()
    return float(total), states.shape[0]


def readout_cross_entropy(
    hidden: torch.Tensor,  # [seq, pos, d_model]
    input_ids: torch.Tensor,  # [seq, pos]
    to_logits: Callable[[torch.Tensor], torch.Tensor],  # [n, d_model] -> [n, vocab] float32
) -> float:
    """Mean -ln softmax(to_logits(h_t))[x_{t+1}] over every predicted position."""
    total, count = readout_nll_sum(hidden, input_ids, to_logits)
    return total / count


class MeanNLL:
    """A running mean of readout NLL: the float64 sum and the count."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, hidden, input_ids, to_logits) -> None:
        total, count = readout_nll_sum(hidden, input_ids, to_logits)
        self.total += total
        self.count += count

    @property
    def mean(self) -> float:
        return self.total / self.count

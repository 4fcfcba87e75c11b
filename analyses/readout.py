"""Cross-entropy of hidden states read out as next-token logits; shared by logit_lens and
head_rank_proxy. Chunked over tokens so logits never exceed [chunk, vocab]."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 4096


def readout_cross_entropy(
    hidden: torch.Tensor,  # [seq, pos, d_model]
    input_ids: torch.Tensor,  # [seq, pos]
    to_logits: Callable[[torch.Tensor], torch.Tensor],  # [n, d_model] -> [n, vocab] float32
) -> float:
    """Mean -ln softmax(to_logits(h_t))[x_{t+1}] over every predicted position, float32
    log-softmax, float64 sum."""
    states = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])  # positions that predict
    targets = input_ids[:, 1:].reshape(-1).to(hidden.device)
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, states.shape[0], CHUNK_TOKENS):
        logits = to_logits(states[start : start + CHUNK_TOKENS]).float()
        nll = F.cross_entropy(logits, targets[start : start + CHUNK_TOKENS], reduction="none")
        total += nll.double().sum()  # per-token float32, summed in float64: chunk-invariant
    return float(total / states.shape[0])

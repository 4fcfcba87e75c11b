"""The contract between the runner's single forward pass and the analyses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class MissingCapture(RuntimeError):
    pass


@dataclass(frozen=True)
class ReferenceSketch:
    """A reference checkpoint's representations at a fixed sample of token positions of one
    input set: what cross-checkpoint analyses (CKA) compare every other checkpoint with, so
    the reference is loaded once, not once per checkpoint. Numpy arrays: Ray shares them
    zero-copy between workers of a node."""

    reference_commit: str
    input_set_id: str
    positions: np.ndarray  # [n] int64, flat indices into [seq * pos]
    layers: tuple[np.ndarray, ...]  # (L+1) x [n, d_model] float32, hidden_states order


def sample_positions(total: int, max_tokens: int, seed: int) -> np.ndarray:
    """All positions when they fit, else a sorted seeded sample of max_tokens of them."""
    if total <= max_tokens:
        return np.arange(total, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(total, size=max_tokens, replace=False)
    return np.sort(chosen).astype(np.int64)


def sketch_hidden_states(
    hidden_states: tuple[torch.Tensor, ...], positions: np.ndarray
) -> tuple[np.ndarray, ...]:
    index = torch.from_numpy(positions)
    return tuple(
        h.reshape(-1, h.shape[-1])[index.to(h.device)].float().cpu().numpy() for h in hidden_states
    )


@dataclass
class Capture:
    """What one forward pass over one input set produced.

    Only the fields that the requested analyses declared in ``needs`` are filled. Layer k means
    ``hidden_states[k]`` as transformers returns it: 0 = token embeddings, L = the last block's
    output AFTER the final norm (GPT-NeoX, Llama, GPT-2 all apply it there). The last block's
    output BEFORE the final norm is ``pre_final_norm``.
    """

    input_ids: torch.Tensor | None = None  # [seq, pos] int64: filled by every forward pass
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (L+1) x [seq, pos, d_model]
    pre_final_norm: torch.Tensor | None = None  # [seq, pos, d_model]
    mlp_activations: tuple[torch.Tensor, ...] | None = None  # L x [seq, pos, d_mlp], block 1..L
    token_nll: torch.Tensor | None = None  # [seq, pos - 1], float32, nats
    lm_head_weight: torch.Tensor | None = None  # [d_vocab_padded, d_model]
    input_embedding_weight: torch.Tensor | None = None  # [d_vocab_padded, d_model]
    tokenizer_vocab_size: int | None = None  # len(tokenizer); rows beyond it are padding
    final_norm: torch.nn.Module | None = None  # READOUT: applied before the head
    reference: ReferenceSketch | None = None  # REFERENCE: set per cell by the worker
    model: torch.nn.Module | None = None  # MODEL: the causal LM itself, in eval mode
    tokenizer: object | None = None  # MODEL: its tokenizer (a transformers tokenizer)

    def readout_logits(self, hidden: torch.Tensor, normed: bool = False) -> torch.Tensor:
        """Logits [..., vocab] in float32 of hidden states [..., d_model] read through the final
        norm (unless ``normed``: hidden_states[L] already went through it) and the LM head."""
        weight = self.require("lm_head_weight")
        if not normed:
            hidden = self.require("final_norm")(hidden)
        return (hidden @ weight.T).float()

    def require(self, field: str):
        value = getattr(self, field)
        if value is None:
            raise MissingCapture(f"{field} was not captured; declare it in the analysis' needs")
        return value

"""The contract between the runner's single forward pass and the analyses."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class MissingCapture(RuntimeError):
    pass


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

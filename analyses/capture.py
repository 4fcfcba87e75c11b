"""The contract between the runner's single forward pass and the analyses.

The pass over an input set streams: the runner feeds each analysis one ``Batch`` at a time
(a few sequences and what the analyses asked to capture from them), so a unit holds the
model, one batch and each analysis' own bounded state, whatever the input set's size. What
does not change during the pass (the LM head, the embeddings, the model itself, the whole
input set's token ids, a reference checkpoint's sketch) is the ``CheckpointContext`` an
analysis gets when it starts.

Layer k always means ``hidden_states[k]`` as transformers returns it: L = the last block's
output AFTER the final norm (every family in the architecture table applies it there), and
the last block's output BEFORE the final norm is ``pre_final_norm``. Layer 0 is what the first
block reads, which is not the same thing in every family (``ckptlab/architectures.py``
has the table, checked against the models by ``tests/test_architectures.py``):

    rotary families (GPT-NeoX, Llama, Mistral, Qwen, OLMo, OLMoE, SmolLM3, Cohere, ...):
                      the token embedding E[x] only
    GPT-2:            E[x] + P[t], learned absolute positions added
    BLOOM:            LayerNorm(E[x]) (word_embeddings_layernorm; positions are ALiBi biases)
    Granite:          E[x] * config.embedding_multiplier
    Gemma (1, 2, 3):  E[x] * sqrt(d_model)

so layer-0 values compare like with like only within a family.

Logits: ``token_nll`` is read from the model's own logits (whatever it does after the head:
Granite divides, Cohere multiplies, Gemma 2 soft-caps). ``readout_logits`` rebuilds them from a
hidden state with the final norm, the head and the family's post-processing, and the pass
checks it against the model's own logits on its first batch; what a checkpoint cannot give
(that check failed, a family without a table row, a mixture of experts' neurons) is in
``CheckpointContext.unavailable``, and the analyses that need it fail their own cells.

Owns: ``Batch``, ``CheckpointContext``, ``Capture``, ``ReferenceSketch``, a sketch's seeded
positions (``sample_positions``), and the errors for a read that was not requested
(``MissingCapture``) or cannot be given (``Unavailable``). Must not: run the model or set hooks
(``orchestrator/forward.py``), or import ``orchestrator/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ckptlab.lazy import F, torch


class MissingCapture(RuntimeError):
    pass


class Unavailable(RuntimeError):
    """This checkpoint cannot give what an analysis needs (the reason is one line)."""


def _require(holder, field: str):
    value = getattr(holder, field)
    if value is None:
        raise MissingCapture(f"{field} was not captured; declare it in the analysis' needs")
    return value


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
    """Each layer's vectors at flat positions of [seq * pos], as float32 numpy arrays."""
    index = torch.from_numpy(positions)
    return tuple(
        h.reshape(-1, h.shape[-1])[index.to(h.device)].float().cpu().numpy() for h in hidden_states
    )


@dataclass
class CheckpointContext:
    """What an analysis may read besides the batches; fixed for one checkpoint and one input
    set, and filled only with what the analyses declared in ``needs``."""

    input_ids: torch.Tensor | None = None  # [seq, pos] int64: the whole input set, known up front
    lm_head_weight: torch.Tensor | None = None  # [d_vocab_padded, d_model]
    input_embedding_weight: torch.Tensor | None = None  # [d_vocab_padded, d_model]
    tokenizer_vocab_size: int | None = None  # len(tokenizer); rows beyond it are padding
    final_norm: torch.nn.Module | None = None  # READOUT: applied before the head
    # READOUT: what the family does to head(h) (Granite divides, ...); None: nothing.
    logit_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    reference: ReferenceSketch | None = None  # REFERENCE: set per cell by the worker
    model: torch.nn.Module | None = None  # MODEL: the causal LM itself, in eval mode
    tokenizer: object | None = None  # MODEL: its tokenizer (a transformers tokenizer)
    model_type: str | None = None  # the config's model_type (the architecture table's key)
    # What this checkpoint cannot give: made with the context, added to by the pass.
    unavailable: dict[str, str] = field(default_factory=dict)  # need -> why, one line

    def refusal(self, needs) -> str | None:
        """Why an analysis with these needs cannot run here, or None."""
        for need in sorted(needs):
            if need in self.unavailable:
                return self.unavailable[need]
        return None

    def readout_logits(self, hidden: torch.Tensor, normed: bool = False) -> torch.Tensor:
        """Logits [..., vocab] in float32 of hidden states [..., d_model] read out as the model
        reads its last one: the final norm (unless ``normed``: hidden_states[L] already went
        through it), the LM head, then the family's post-processing of the head's output."""
        if "readout" in self.unavailable:
            raise Unavailable(self.unavailable["readout"])
        weight = self.require("lm_head_weight")
        hidden = hidden.to(weight.device)  # a model spread over GPUs keeps layers apart
        if not normed:
            hidden = self.require("final_norm")(hidden)
        return self.finish_logits(F.linear(hidden, weight))

    def finish_logits(self, head_output: torch.Tensor) -> torch.Tensor:
        """head(h) [..., vocab] -> the model's logits, in float32: the family's post-processing
        (``logit_transform``) after the cast, so a bfloat16 head is not rounded twice."""
        logits = head_output.float()
        return logits if self.logit_transform is None else self.logit_transform(logits)

    def require(self, field: str):
        return _require(self, field)

    def input_shape(self) -> tuple[int, int]:
        """(sequences, positions) of the input set."""
        seq, pos = self.require("input_ids").shape
        return seq, pos


@dataclass
class Batch:
    """A few consecutive sequences of the input set and what the pass captured from them.
    Analyses read it during ``update`` and must not keep references to its tensors."""

    input_ids: torch.Tensor  # [b, pos] int64 (zeros when a hand-built Capture had none)
    start: int = 0  # index of the batch's first sequence in the input set
    hidden_states: tuple[torch.Tensor, ...] | None = None  # (L+1) x [b, pos, d_model]
    pre_final_norm: torch.Tensor | None = None  # [b, pos, d_model]
    mlp_activations: tuple[torch.Tensor, ...] | None = None  # L x [b, pos, d_mlp], block 1..L
    token_nll: torch.Tensor | None = None  # [b, pos - 1], float32, nats
    # What the pass cannot give, as found so far (the first batch's readout self-check):
    unavailable: dict[str, str] | None = None  # need -> one line; the runner fails its cells

    @property
    def positions(self) -> torch.Tensor:
        """Flat indices into the input set's [seq * pos] of this batch's tokens, [b * pos]."""
        b, width = self.input_ids.shape
        return torch.arange(self.start * width, (self.start + b) * width)

    def require(self, field: str):
        return _require(self, field)

    def copy(self) -> Batch:
        """The same batch in tensors of its own: what a plug-in gets, so that writing into
        them cannot change what the other analyses read."""

        def own(value):
            if value is None:
                return None
            if isinstance(value, tuple):
                return tuple(t.clone() for t in value)
            return value.clone()

        return Batch(
            input_ids=self.input_ids.clone(),
            start=self.start,
            hidden_states=own(self.hidden_states),
            pre_final_norm=own(self.pre_final_norm),
            mlp_activations=own(self.mlp_activations),
            token_nll=own(self.token_nll),
        )


@dataclass
class Capture(CheckpointContext):
    """A whole input set captured at once: the context plus every batch concatenated. Tests
    and benchmarks build it by hand; ``as_batch`` hands it to an analysis as one batch."""

    hidden_states: tuple[torch.Tensor, ...] | None = None  # (L+1) x [seq, pos, d_model]
    pre_final_norm: torch.Tensor | None = None  # [seq, pos, d_model]
    mlp_activations: tuple[torch.Tensor, ...] | None = None  # L x [seq, pos, d_mlp], block 1..L
    token_nll: torch.Tensor | None = None  # [seq, pos - 1], float32, nats

    def input_shape(self) -> tuple[int, int]:
        """Hand-built captures may omit the token ids: their tensors give the shape."""
        if self.input_ids is not None:
            return super().input_shape()
        for shaped in (self.hidden_states, self.pre_final_norm, self.mlp_activations):
            if shaped is not None:
                first = shaped[0] if isinstance(shaped, tuple) else shaped
                return first.shape[0], first.shape[1]
        if self.token_nll is not None:
            return self.token_nll.shape[0], self.token_nll.shape[1] + 1
        raise MissingCapture("input_ids was not captured; declare it in the analysis' needs")

    def as_batch(self) -> Batch:
        ids = self.input_ids
        if ids is None:  # shape only: what batch positions are counted from
            try:
                ids = torch.zeros(self.input_shape(), dtype=torch.int64)
            except MissingCapture:
                ids = torch.zeros(0, 0, dtype=torch.int64)
        return Batch(
            input_ids=ids,
            hidden_states=self.hidden_states,
            pre_final_norm=self.pre_final_norm,
            mlp_activations=self.mlp_activations,
            token_nll=self.token_nll,
        )

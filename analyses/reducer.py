"""The reducer protocol every analysis follows (torchmetrics-style, over one forward pass):

    reducer = Analysis(params, context)   # init: allocate bounded state
    reducer.update(batch)                 # once per batch of the input set, in order
    rows = reducer.finalize()             # the metric values

State is what merges exactly: sums, counts, Gram or R factors, capped samples at positions
chosen up front. An analysis names what it reads (``needs``); the runner captures only the
union of those, batch by batch, so memory is the model + one batch + every analysis' state.

Owns: ``Need`` (every hook a pass can capture), ``FORWARD_NEEDS``, ``NoParams``, ``MetricValue``
and ``Reducer``. Must not: know any analysis, or import torch (the light commands read
``Need``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Batch, Capture, CheckpointContext


class Need(StrEnum):
    """The named hooks an analysis may read. Per batch: hidden_states, pre_final_norm,
    token_nll, mlp_activations. Per checkpoint (in the context): the rest."""

    HIDDEN_STATES = "hidden_states"  # every hidden_states[k], k = 0..L
    PRE_FINAL_NORM = "pre_final_norm"  # last block's output before the final norm
    TOKEN_NLL = "token_nll"  # per-token -ln p(x_t | x_<t), float32
    LM_HEAD = "lm_head"  # the LM head (unembedding) weight
    READOUT = "readout"  # the final norm module + LM head weight: hidden state -> logits
    EMBEDDINGS = "embeddings"  # the input embedding weight [vocab, d_model]
    MLP_ACTIVATIONS = "mlp_activations"  # each block's MLP neurons: its activation's output
    REFERENCE = "reference"  # another checkpoint's sketch (cross-checkpoint analyses)
    MODEL = "model"  # the model and tokenizer, for analyses that run their own prompts (ICL)


# Needs that require running the model on an input set; an analysis with none of them is
# computed once per checkpoint, independent of input sets.
FORWARD_NEEDS = frozenset(
    {Need.HIDDEN_STATES, Need.PRE_FINAL_NORM, Need.TOKEN_NLL, Need.MLP_ACTIVATIONS}
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class MetricValue:
    """One row an analysis returns: a metric's value, with the facets that say what it is
    about (layer, item, ICL task, shots, task seed); the run adds the checkpoint, the
    analysis, its params and the input set."""

    metric: str
    value: float
    layer: int | None = None  # hidden_states index; None when the metric is not per layer
    item: int | None = None  # index within the layer (a neuron) for per-item rows
    task: str | None = None  # ICL: the task (variant) the value is about
    shots: int | None = None  # ICL: number of demonstrations in the prompt
    task_seed: int | None = None  # ICL: the seed of labels, permutation and sampled prompts


P = TypeVar("P", bound=BaseModel)


class Reducer(Generic[P]):
    """Base class of analyses. Subclasses set up their state in ``__init__`` (calling
    ``super().__init__``), accumulate in ``update`` and compute rows in ``finalize``. An
    analysis without per-batch needs (weights only, or its own prompts) implements only
    ``finalize``."""

    needs: ClassVar[frozenset[Need]] = frozenset()  # set by the @analysis decorator

    def __init__(self, params: P, context: CheckpointContext):
        self.params = params
        self.context = context

    def update(self, batch: Batch) -> None:
        return None

    def finalize(self) -> list[MetricValue]:
        raise NotImplementedError

    @classmethod
    def on_capture(cls, capture: Capture, params: P) -> list[MetricValue]:
        """The analysis over a whole captured input set: one batch (tests, benchmarks)."""
        reducer = cls(params, capture)
        if cls.needs & FORWARD_NEEDS:
            reducer.update(capture.as_batch())
        return reducer.finalize()

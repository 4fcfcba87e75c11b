"""The analysis registry (lm-eval-harness style): every analysis is a function registered with
a unique name, a version, what it needs from the shared forward pass, and a pydantic model of
its parameters. Bumping ``version`` invalidates every stored cell of that analysis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from pydantic import BaseModel, ConfigDict

from ckptlab.analyses.capture import Capture


class Need(StrEnum):
    """What an analysis reads; the runner captures the union of the requested analyses' needs."""

    HIDDEN_STATES = "hidden_states"  # every hidden_states[k], k = 0..L
    PRE_FINAL_NORM = "pre_final_norm"  # last block's output before the final norm
    TOKEN_NLL = "token_nll"  # per-token -ln p(x_t | x_<t), float32
    LM_HEAD = "lm_head"  # the LM head (unembedding) weight
    READOUT = "readout"  # the final norm module + LM head weight: hidden state -> logits
    EMBEDDINGS = "embeddings"  # the input embedding weight [vocab, d_model]
    MLP_ACTIVATIONS = "mlp_activations"  # each block's MLP neurons: the out-projection's input
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
    metric: str
    value: float
    layer: int | None = None  # hidden_states index; None when the metric is not per layer
    item: int | None = None  # index within the layer (a neuron) for per-item rows
    task: str | None = None  # ICL: the task (variant) the value is about
    shots: int | None = None  # ICL: number of demonstrations in the prompt
    task_seed: int | None = None  # ICL: the seed of labels, permutation and sampled prompts


AnalysisFn = Callable[[Capture, BaseModel], list[MetricValue]]
# Content an analysis reads beyond its params (e.g. task data files), as a JSON-able summary
# (fingerprints) that the plan adds to the cell key: changed data, new cells.
ContextFn = Callable[[BaseModel], dict]


@dataclass(frozen=True)
class AnalysisDef:
    name: str
    version: int
    needs: frozenset[Need]
    params_model: type[BaseModel]
    fn: AnalysisFn
    doc: str
    context: ContextFn | None = None

    @property
    def needs_forward_pass(self) -> bool:
        return bool(self.needs & FORWARD_NEEDS)

    @property
    def cross_checkpoint(self) -> bool:
        return Need.REFERENCE in self.needs

    def run(self, capture: Capture, params: BaseModel) -> list[MetricValue]:
        return self.fn(capture, params)


_REGISTRY: dict[str, AnalysisDef] = {}


def analysis(
    *,
    name: str,
    version: int,
    needs: set[Need],
    params: type[BaseModel] = NoParams,
    context: ContextFn | None = None,
) -> Callable[[AnalysisFn], AnalysisFn]:
    """Register ``fn`` as analysis ``name``. Duplicate names and missing docstrings are errors."""

    def register(fn: AnalysisFn) -> AnalysisFn:
        if name in _REGISTRY:
            raise ValueError(f"duplicate analysis name {name!r}")
        if not (fn.__doc__ and fn.__doc__.strip()):
            raise ValueError(f"analysis {name!r} needs a docstring with its formula and paper")
        if params.model_config.get("extra") != "forbid":
            raise ValueError(f"analysis {name!r}: its params model must forbid extra fields")
        # Analyses never need gradients; without this, reading hidden states through the
        # model's final norm (logit lens) would build an autograd graph.
        no_grad_fn = torch.inference_mode()(fn)
        _REGISTRY[name] = AnalysisDef(
            name, version, frozenset(needs), params, no_grad_fn, fn.__doc__, context
        )
        return no_grad_fn

    return register


def registered_analyses() -> dict[str, AnalysisDef]:
    import ckptlab.analyses  # noqa: F401  -- importing the package registers every shipped analysis

    return dict(_REGISTRY)


def get_analysis(name: str) -> AnalysisDef:
    known = registered_analyses()
    if name not in known:
        raise KeyError(f"unknown analysis {name!r} (known: {', '.join(sorted(known))})")
    return known[name]

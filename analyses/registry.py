"""The analysis registry (lm-eval-harness style): every analysis is registered with a unique
name, a version, what it needs from the shared forward pass, and a pydantic model of its
parameters. Bumping ``version`` invalidates every stored cell of that analysis.

An analysis is a ``Reducer`` subclass (init -> update(batch) -> finalize), or, when it needs
nothing per batch (the LM head's weights, its own prompts), a plain function
``fn(context, params) -> rows``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel

from ckptlab.analyses.capture import Capture, CheckpointContext
from ckptlab.analyses.reducer import FORWARD_NEEDS, MetricValue, Need, NoParams, Reducer

__all__ = [
    "FORWARD_NEEDS",
    "AnalysisDef",
    "MetricValue",
    "Need",
    "NoParams",
    "Reducer",
    "analysis",
    "get_analysis",
    "registered_analyses",
]

# Content an analysis reads beyond its params (e.g. task data files), as a JSON-able summary
# (fingerprints) that the plan adds to the cell key: changed data, new cells.
ContextFn = Callable[[BaseModel], dict]


@dataclass(frozen=True)
class AnalysisDef:
    name: str
    version: int
    needs: frozenset[Need]
    params_model: type[BaseModel]
    reducer: type[Reducer]
    doc: str
    context: ContextFn | None = None

    @property
    def needs_forward_pass(self) -> bool:
        return bool(self.needs & FORWARD_NEEDS)

    @property
    def cross_checkpoint(self) -> bool:
        return Need.REFERENCE in self.needs

    def start(self, params: BaseModel, context: CheckpointContext) -> Reducer:
        return self.reducer(params, context)

    def run(self, capture: Capture, params: BaseModel) -> list[MetricValue]:
        """The analysis over a whole captured input set at once (tests, benchmarks)."""
        return self.reducer.on_capture(capture, params)


def _function_reducer(fn: Callable, needs: frozenset[Need]) -> type[Reducer]:
    class FunctionReducer(Reducer):
        def finalize(self) -> list[MetricValue]:
            return fn(self.context, self.params)

    FunctionReducer.__name__ = FunctionReducer.__qualname__ = f"{fn.__name__}_reducer"
    FunctionReducer.__doc__ = fn.__doc__
    return FunctionReducer


def _no_grad(reducer: type[Reducer]) -> None:
    """Analyses never need gradients; without this, reading hidden states through the
    model's final norm (logit lens) would build an autograd graph."""
    for method in ("__init__", "update", "finalize"):
        if method in vars(reducer):
            setattr(reducer, method, torch.inference_mode()(vars(reducer)[method]))


_REGISTRY: dict[str, AnalysisDef] = {}


def analysis(
    *,
    name: str,
    version: int,
    needs: set[Need],
    params: type[BaseModel] = NoParams,
    context: ContextFn | None = None,
):
    """Register a Reducer subclass (returned as is) or a function ``fn(context, params)``
    (returned as a callable on a whole Capture). Duplicate names, missing docstrings and
    params models that accept unknown fields are errors."""

    def register(target):
        if name in _REGISTRY:
            raise ValueError(f"duplicate analysis name {name!r}")
        if not (target.__doc__ and target.__doc__.strip()):
            raise ValueError(f"analysis {name!r} needs a docstring with its formula and paper")
        if params.model_config.get("extra") != "forbid":
            raise ValueError(f"analysis {name!r}: its params model must forbid extra fields")
        frozen = frozenset(needs)
        is_reducer = isinstance(target, type) and issubclass(target, Reducer)
        if not is_reducer and frozen & FORWARD_NEEDS:
            raise ValueError(
                f"analysis {name!r} reads {sorted(frozen & FORWARD_NEEDS)} per batch: "
                "write it as a Reducer with update(batch)"
            )
        reducer = target if is_reducer else _function_reducer(target, frozen)
        reducer.needs = frozen
        _no_grad(reducer)
        _REGISTRY[name] = AnalysisDef(
            name, version, frozen, params, reducer, target.__doc__, context
        )
        if is_reducer:
            return target
        return torch.inference_mode()(lambda capture, p: reducer.on_capture(capture, p))

    return register


def registered_analyses() -> dict[str, AnalysisDef]:
    import ckptlab.analyses  # noqa: F401  -- importing the package registers every shipped analysis

    return dict(_REGISTRY)


def get_analysis(name: str) -> AnalysisDef:
    known = registered_analyses()
    if name not in known:
        raise KeyError(f"unknown analysis {name!r} (known: {', '.join(sorted(known))})")
    return known[name]

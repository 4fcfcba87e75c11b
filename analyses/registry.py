"""The analysis registry (lm-eval-harness style): every analysis is registered with a unique
name, a version, what it needs from the shared forward pass, and a pydantic model of its
parameters. Bumping ``version`` invalidates every stored cell of that analysis.

An analysis is a ``Reducer`` subclass (init -> update(batch) -> finalize), or, when it needs
nothing per batch (the LM head's weights, its own prompts), a plain function
``fn(context, params) -> rows``.

Owns: the registry (name -> ``AnalysisDef``), what ``@analysis`` refuses (a taken name, no
docstring, params that accept unknown fields) and each analysis' origin. Must not: import the
shipped analyses or ``plugins`` at module level (they import this module;
``registered_analyses`` imports them when called), or torch at module level.
"""

from __future__ import annotations

import contextvars
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from ckptlab.analyses.capture import Capture, CheckpointContext
from ckptlab.analyses.reducer import FORWARD_NEEDS, MetricValue, Need, NoParams, Reducer
from ckptlab.lazy import inference_mode

__all__ = [
    "FORWARD_NEEDS",
    "AnalysisCollision",
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
# Local files an analysis reads that its params do not name as paths (the data files of a task
# YAML that is named): ``ckptlab submit`` carries them next to the files that name them.
FilesFn = Callable[[BaseModel], list[Path]]


SHIPPED = "ckptlab"  # the origin of the analyses in ckptlab/analyses/


@dataclass(frozen=True)
class Origin:
    """Where an analysis' code comes from. ``source_hash`` (sha256 of its source file, None for
    the shipped analyses, which ``version`` governs) joins the cell key of a plug-in, so an
    edited plug-in recomputes its cells and nothing else."""

    kind: str  # "ckptlab" | "file" | "module" | "entry point"
    where: str  # the file's path, the module's name, or "entry point (dist version)"
    source_hash: str | None = None

    def describe(self) -> str:
        if self.kind == SHIPPED:
            return SHIPPED
        return f"{self.kind} {self.where}"


# Set by the plug-in loader while it imports a plug-in: what its @analysis decorators record.
_LOADING: contextvars.ContextVar[Origin | None] = contextvars.ContextVar("loading", default=None)


class AnalysisCollision(ValueError):
    """Two analyses with one name; the message names both origins."""


@dataclass(frozen=True)
class AnalysisDef:
    name: str
    version: int
    needs: frozenset[Need]
    params_model: type[BaseModel]
    reducer: type[Reducer]
    doc: str
    context: ContextFn | None = None
    origin: Origin = Origin(SHIPPED, "ckptlab.analyses")
    files: FilesFn | None = None

    @property
    def shipped(self) -> bool:
        return self.origin.kind == SHIPPED

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
            setattr(reducer, method, inference_mode(vars(reducer)[method]))


_REGISTRY: dict[str, AnalysisDef] = {}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _origin_of(target) -> Origin:
    loading = _LOADING.get()
    if loading is not None:
        return loading
    module = getattr(target, "__module__", "") or ""
    if module == "ckptlab.analyses" or module.startswith("ckptlab.analyses."):
        return Origin(SHIPPED, module)
    # Registered by code imported some other way (a notebook, a test, a script): keyed by
    # the source file it was defined in, when there is one.
    try:
        source = inspect.getsourcefile(target)
    except TypeError:
        source = None
    digest = file_sha256(Path(source)) if source and Path(source).is_file() else None
    return Origin("module", module or "?", digest)


def analysis(
    *,
    name: str,
    version: int,
    needs: set[Need],
    params: type[BaseModel] = NoParams,
    context: ContextFn | None = None,
    files: FilesFn | None = None,
):
    """Register a Reducer subclass (returned as is) or a function ``fn(context, params)``
    (returned as a callable on a whole Capture). Duplicate names, missing docstrings and
    params models that accept unknown fields are errors."""

    def register(target):
        origin = _origin_of(target)
        existing = _REGISTRY.get(name)
        if existing is not None:
            # The same plug-in read again (an edited file in a long-lived process) replaces
            # its own earlier version; anything else with the same name is a collision.
            same_origin = (existing.origin.kind, existing.origin.where) == (
                origin.kind,
                origin.where,
            )
            if existing.shipped or not same_origin:
                raise AnalysisCollision(
                    f"analysis {name!r} of {origin.describe()} collides with {name!r} of "
                    f"{existing.origin.describe()}; rename one"
                )
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
            name, version, frozen, params, reducer, target.__doc__, context, origin, files
        )
        if is_reducer:
            return target
        return inference_mode(lambda capture, p: reducer.on_capture(capture, p))

    return register


def registered_analyses() -> dict[str, AnalysisDef]:
    """Every analysis: the shipped ones, those of installed packages (entry-point group
    ``ckptlab.analyses``) and the plug-ins loaded so far."""
    import ckptlab.analyses  # noqa: F401  -- importing the package registers every shipped analysis
    from ckptlab.analyses.plugins import load_entry_points

    load_entry_points()
    return dict(_REGISTRY)


def get_analysis(name: str) -> AnalysisDef:
    known = registered_analyses()
    if name not in known:
        raise KeyError(f"unknown analysis {name!r} (known: {', '.join(sorted(known))})")
    return known[name]

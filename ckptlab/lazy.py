"""Heavy libraries imported where they are first used, not where they are named.

The analyses, the plan and the CLI name torch at the top of their files, as compute code
should; but `ckptlab validate`, `plan`, `analyses` and `--version` only read what an analysis
declares (name, version, needs, params), and importing torch costs them 2 s. A module that
writes ``from ckptlab.lazy import torch`` gets a stand-in that imports torch on the first
attribute it is asked for (``torch.zeros``), then hands every attribute to the real module.

Nothing is added to ``sys.modules`` before the real import, so ``"torch" in sys.modules``
stays a true answer (tests/test_cli_imports.py relies on it). Names read at import time (a
default argument ``dtype=torch.float32``, a decorator ``@torch.inference_mode()``) import the
library at once: keep them inside functions.

Owns: ``LazyModule``, the stand-ins (``torch``, ``F``) and ``inference_mode`` applied late. Must
not: import a library before its first attribute is read, put anything in ``sys.modules`` early,
or import a ckptlab module.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable


class LazyModule(types.ModuleType):
    """A module that imports ``name`` on first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._real: types.ModuleType | None = None

    def __getattr__(self, attribute: str):
        # Only called for names the stand-in does not have itself: the real module's.
        real = self.__dict__["_real"]
        if real is None:
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return getattr(real, attribute)

    def __reduce__(self):
        # Ray ships functions by value (cloudpickle); their globals may hold a stand-in.
        return (LazyModule, (self.__name__,))

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self.__name__))

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_real"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r}, {state}>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")  # as compute code names it


def inference_mode(fn: Callable) -> Callable:
    """``@torch.inference_mode()``, applied at the first call instead of at definition, so
    defining (or registering) ``fn`` does not import torch. torch's own decorator does the
    work, a generator function included (the mode around each step, not just its creation)."""
    decorated: Callable | None = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal decorated
        if decorated is None:
            decorated = torch.inference_mode()(fn)
        return decorated(*args, **kwargs)

    return wrapper

"""Both executors implement the one ``Executor`` protocol the runner calls: every method, with
the protocol's parameters (the runner never probes with ``hasattr``)."""

from __future__ import annotations

import inspect

import pytest

from ckptlab.orchestrator.executors import Executor, InlineExecutor, RayExecutor

METHODS = [
    name
    for name, value in vars(Executor).items()
    if inspect.isfunction(value) and (not name.startswith("_") or name in ("__enter__", "__exit__"))
]


def test_the_protocol_names_what_the_runner_calls():
    assert set(METHODS) >= {"warm_up", "download_ahead", "prepare", "start_workers", "run",
                            "close", "pool_summary", "__enter__", "__exit__"}  # fmt: skip


@pytest.mark.parametrize("executor", [InlineExecutor, RayExecutor])
@pytest.mark.parametrize("name", METHODS)
def test_each_executor_has_the_protocols_methods(executor, name):
    wanted = list(inspect.signature(getattr(Executor, name)).parameters)
    assert list(inspect.signature(getattr(executor, name)).parameters) == wanted

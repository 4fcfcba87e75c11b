"""The driver computes units while its workers start (``orchestrator/driver_lane.py``): what it
takes, when it stops, that its values are the workers' values, and where it never runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch

from ckptlab.orchestrator import driver_lane
from ckptlab.orchestrator.cluster import ClusterChoice
from ckptlab.orchestrator.driver_lane import MEMORY_HEADROOM, DriverLane, fits_in_memory
from ckptlab.orchestrator.executors import RayExecutor
from ckptlab.orchestrator.runner import _task, make_plan
from ckptlab.orchestrator.worker import run_unit
from ckptlab.results import ResultStore
from ckptlab.spec import Resources, parse_spec

Memory = namedtuple("Memory", "available")
LocalRef = namedtuple("LocalRef", "model source local_only", defaults=("local", False))


def gates_open(gated_units, *names: str) -> None:
    for name in names:
        gated_units[1].setdefault(name, threading.Event()).set()


def fake_task(name: str, weight_bytes: int | None = 1) -> SimpleNamespace:
    return SimpleNamespace(checkpoint=name, weight_bytes=weight_bytes)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def drain(lane: DriverLane) -> list:
    """Every outcome, until no unit runs or waits to be handed on."""
    outcomes: list = []
    while lane.active:
        lane.wait(0.05)
        outcomes += lane.finished()
    return outcomes


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """The lane stays off on a GPU machine; these tests are about what it does on CPUs."""
    monkeypatch.setattr(driver_lane, "gpu_visible", lambda: False)


@pytest.fixture
def gated_units(monkeypatch):
    """run_unit replaced by one that waits for a gate per unit and records what it ran."""
    ran: list[str] = []
    gates: dict[str, threading.Event] = {}

    def fake_run_unit(task, device, references):
        ran.append(task.checkpoint)
        gates.setdefault(task.checkpoint, threading.Event()).wait(30)
        return f"result of {task.checkpoint} on {device}"

    monkeypatch.setattr(driver_lane, "run_unit", fake_run_unit)
    return ran, gates


def test_it_takes_in_order_until_stopped_and_hands_on_every_unit_it_took(gated_units):
    ran, gates = gated_units
    gates["a"] = threading.Event()
    tasks = [fake_task("a"), fake_task("b"), fake_task("c")]
    lane = DriverLane(tasks, {})
    wait_until(lambda: ran == ["a"])
    assert lane.active
    lane.stop()  # while "a" runs: it finishes, nothing else is taken
    gates["a"].set()
    assert [(t.checkpoint, r) for t, r in drain(lane)] == [("a", "result of a on cpu")]
    assert ran == ["a"]
    # The workers' queue is what it did not take; a stopped lane takes nothing more.
    queue = lane.share(tasks, {})
    assert [t.checkpoint for t in queue] == ["b", "c"]
    assert not lane.active and ran == ["a"] and list(queue) == tasks[1:]  # no thread again


def test_units_taken_from_the_shared_queue_leave_it(gated_units):
    ran, gates = gated_units
    for name in "abc":
        gates[name] = threading.Event()
        gates[name].set()
    tasks = [fake_task("a"), fake_task("b"), fake_task("c")]
    lane = DriverLane(tasks[:1], {})
    assert [t.checkpoint for t, _ in drain(lane)] == ["a"]
    queue = lane.share(tasks, {})  # a later wave: its thread starts again
    wait_until(lambda: not queue)
    assert [t.checkpoint for t, _ in drain(lane)] == ["b", "c"]
    assert ran == ["a", "b", "c"]


def test_a_unit_too_large_for_the_free_memory_is_left_to_the_workers(gated_units, monkeypatch):
    ran, _ = gated_units
    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory(available=100 * MEMORY_HEADROOM))
    assert fits_in_memory(fake_task("a", 100))
    assert not fits_in_memory(fake_task("a", 101))
    assert not fits_in_memory(fake_task("a", None))  # size unknown: never in the driver
    tasks = [fake_task("big", 101), fake_task("small", 1)]
    lane = DriverLane(tasks, {})
    wait_until(lambda: not lane.active)  # its thread ended without taking a unit
    # The head does not fit: the driver stops there (the workers keep the queue's order).
    lane.stop()
    assert ran == [] and list(lane.share(tasks, {})) == tasks
    # With the memory for it, the same queue is the driver's.
    monkeypatch.setattr("psutil.virtual_memory", lambda: Memory(available=101 * MEMORY_HEADROOM))
    gates_open(gated_units, "big", "small")
    assert [t.checkpoint for t, _ in drain(DriverLane(tasks, {}))] == ["big", "small"]


def test_it_waits_for_weights_on_their_way_and_leaves_those_not_coming(gated_units):
    ran, _ = gated_units
    gates_open(gated_units, "here", "coming", "never")
    arrivals = {"here": True, "coming": None, "never": False}
    tasks = [fake_task(name) for name in arrivals]
    lane = DriverLane(tasks, {}, arrived=lambda task: arrivals[task.checkpoint])
    wait_until(lambda: ran == ["here"])
    time.sleep(3 * driver_lane.ARRIVAL_POLL_S)
    assert ran == ["here"] and lane.active  # "coming" is downloading: it waits
    arrivals["coming"] = True
    wait_until(lambda: ran == ["here", "coming"])
    # "never" will not arrive (nothing downloads it): the workers' queue keeps it.
    assert [t.checkpoint for t, _ in drain(lane)] == ["here", "coming"]
    assert [t.checkpoint for t in lane.share(tasks, {})] == ["never"]  # looked at again...
    wait_until(lambda: not lane.active)
    assert ran == ["here", "coming"]  # ...and left again


def test_what_escapes_a_unit_is_its_outcome_and_the_lane_goes_on(monkeypatch):
    def exits(task, device, references):
        if task.checkpoint == "a":
            raise SystemExit(3)  # a plug-in's sys.exit()
        return "ok"

    monkeypatch.setattr(driver_lane, "run_unit", exits)
    outcomes = drain(DriverLane([fake_task("a"), fake_task("b")], {}))
    assert [(t.checkpoint, str(o)) for t, o in outcomes] == [("a", "SystemExit: 3"), ("b", "ok")]
    assert isinstance(outcomes[0][1], RuntimeError)


def test_a_lane_whose_checks_fail_ends_and_says_so(monkeypatch):
    def broken(task):
        raise OSError("unreadable cache")

    lane = DriverLane([fake_task("a")], {}, arrived=broken)
    wait_until(lambda: not lane.active)  # never a thread the executor waits on forever
    assert drain(lane) == []


@pytest.mark.parametrize(
    "resources, lane",
    [
        ({}, True),
        ({"first_units_in_driver": False}, False),
        ({"memory_limit_gib": 4}, False),  # the driver's process is not capped
        ({"gpus_per_worker": 1}, False),  # GPU workers: the driver holds no model
        ({"gpus_per_worker": 0}, True),
    ],
)
def test_where_the_driver_computes(resources, lane, gated_units, monkeypatch):
    ran, _ = gated_units
    local = LocalRef("a")  # a local folder: its weights are here
    gates_open(gated_units, local)
    executor = RayExecutor(Resources(**resources))
    # What `ckptlab run` chooses with no --address, whether or not this test session has
    # started a Ray of its own (a Ray this process already has is used as it is).
    executor.cluster = ClusterChoice(None, "private")
    executor.start_in_driver([SimpleNamespace(checkpoint=local, weight_bytes=1)], {})
    try:
        assert (executor._lane is not None) is lane
        if lane:
            wait_until(lambda: ran == [local])
            assert [t.checkpoint for t, _ in drain(executor._lane)] == [local]
    finally:
        executor.close()
    # Not on a cluster given by address: the driver may be a laptop far from the workers.
    remote = RayExecutor(Resources(**resources))
    remote.cluster = ClusterChoice("127.0.0.1:6379", "--address")
    remote.start_in_driver([fake_task("b")], {})
    assert remote._lane is None


SPEC = {
    "name": "lane",
    "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 1, 2, 4]}],
    "input_sets": [{"name": "prose", "builtin": "pydoc_topics", "num_sequences": 4, "seq_len": 32}],
    "analyses": [{"name": "saturation"}, {"name": "anisotropy"}, {"name": "singular_entropy"}],
}


def metric(row) -> tuple:
    return row.cell_key, row.metric, row.layer or -1, row.item or -1, row.value


def test_the_driver_computes_exactly_what_run_unit_computes(tmp_path, pico_hub):
    """The same checkpoints through the lane's thread and through run_unit on this thread:
    the same rows, to the bit (one process, one torch thread pool)."""
    plan = make_plan(parse_spec(SPEC), tmp_path / "r.duckdb", pico_hub)
    tasks = [_task(u, plan, pico_hub, {}) for u in plan.todo]
    assert len(tasks) == 4 and all(t.weight_bytes and t.weight_bytes > 0 for t in tasks)
    lane = DriverLane(tasks, {})
    queue = lane.share(tasks, {})
    wait_until(lambda: not queue, timeout=120)
    outcomes = {t.checkpoint: r for t, r in drain(lane)}
    assert list(outcomes) == [t.checkpoint for t in tasks]
    for task in tasks:
        ours, theirs = outcomes[task.checkpoint], run_unit(task, "cpu")
        assert not ours.failures and ours.cells
        assert len(ours.metrics) > 10
        assert sorted(map(metric, ours.metrics)) == sorted(map(metric, theirs.metrics))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the driver computes on CPU machines only")
def test_a_private_run_mixes_driver_and_worker_units_and_their_values_agree(
    tmp_path, pico_hub, ckptlab_home
):
    """`ckptlab run` on a private Ray: the driver takes the first units while the workers
    start (CKA's reference units first, a wave of their own), the workers the rest; every
    value equals a run where only workers compute."""
    plugin = tmp_path / "slow_norm.py"
    plugin.write_text(
        '"""Mean norm of the last hidden state, 1 s per unit (so that the driver cannot\n'
        'finish the run before its workers are up)."""\n'
        "import time\n"
        "from ckptlab.analysis import MetricValue, Need, Params, Reducer, analysis\n\n"
        '@analysis(name="slow_norm", version=1, needs={Need.HIDDEN_STATES}, params=Params)\n'
        "class SlowNorm(Reducer[Params]):\n"
        '    """Mean L2 norm of the last hidden state, slowly."""\n'
        "    def __init__(self, params, context):\n"
        "        super().__init__(params, context)\n"
        "        self.total, self.count = 0.0, 0\n"
        "    def update(self, batch):\n"
        '        h = batch.require("hidden_states")[-1].double()\n'
        "        self.total += float(h.norm(dim=-1).sum())\n"
        "        self.count += h.shape[0] * h.shape[1]\n"
        "    def finalize(self):\n"
        "        time.sleep(1.0)\n"
        '        return [MetricValue("norm", self.total / self.count)]\n'
    )
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 100]
    spec = SPEC | {
        "models": [{"suite": "pico", "sizes": ["xs", "s"], "steps": steps}],
        "plugins": ["slow_norm.py"],
        "analyses": SPEC["analyses"] + [{"name": "slow_norm"}, {"name": "cka"}],
    }
    values = {}
    for lane in (True, False):
        folder = tmp_path / f"lane-{lane}"
        folder.mkdir()
        (folder / "slow_norm.py").write_text(plugin.read_text())
        spec_file = folder / "spec.yaml"
        resources = {"workers": 1, "cpus_per_worker": 2, "first_units_in_driver": lane}
        spec_file.write_text(json.dumps(spec | {"resources": resources}))
        db = folder / "r.duckdb"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        done = subprocess.run(
            [sys.executable, "-m", "ckptlab", "run", str(spec_file), "--db", str(db),
             "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--json"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert summary["cells_computed"] == 2 * len(steps) * 5 and not summary["cells_failed"]
        store = ResultStore(db)
        nodes = store.query("SELECT node, count(*) AS n FROM units GROUP BY node").rows()
        by_node = dict(nodes)
        assert sum(by_node.values()) == 2 * len(steps)
        if lane:  # both took units: the driver the first ones, the worker the rest
            assert 1 <= by_node.get("driver", 0) < 2 * len(steps), by_node
            first = store.query("SELECT node FROM units ORDER BY started_at LIMIT 1").item()
            assert first == "driver"
        else:
            assert "driver" not in by_node, by_node
        values[lane] = dict(
            store.query(
                "SELECT concat_ws('/', cell_key, metric, layer, item), value FROM results"
            ).rows()
        )
    assert values[True].keys() == values[False].keys() and len(values[True]) > 100
    for key, value in values[True].items():
        assert value == pytest.approx(values[False][key], rel=1e-6, abs=1e-9), key

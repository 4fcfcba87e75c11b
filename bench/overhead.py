"""Orchestration overhead of `ckptlab run` on a local Ray (issue 12, part 2).

    python bench/overhead.py            # pico xs, s x seeds 0, 1, 2: 108 units, 1 and 2 workers
    python bench/overhead.py --smoke    # pico xs seed 0, 4 units (any hub with pico-xs step0-4)

Each run is the real CLI (``ckptlab.cli:script``, what the ``ckptlab`` script calls) in a fresh
process with a fresh CKPTLAB_HOME (results DB, MLflow store, sketches) in a temporary folder,
reading the checkpoints from the hub cache ckptlab would read (``HF_HUB_CACHE``, else
``$CKPTLAB_HOME/hub``). The child process times the driver's steps by wrapping them (Ray
start, planning, each unit's persist, DuckDB writes, MLflow calls, the final report), and the
workers' own per-unit times come from the run's ``units`` table. The ratio is

    (wall - Ray start-up) x workers / sum over units of (load + compute)

where Ray start-up = ``ray.init`` + the time from creating the worker pool to the first unit
starting on a worker (actor processes, their imports). ``ray.init`` runs on a thread of its own
while the plan is made (issue 23): when it ends after planning, the run's critical path goes
through all of it, and all of it counts; when planning ends later, only the driver's wait.
MLflow's cost per unit is measured twice: the driver's time inside ``Lineage.log_checkpoint``,
and a second run whose tracking URI does not answer (lineage is then "pending" and no MLflow
call is made) against the first.

``fusion.py`` runs ckptlab through ``ckptlab_run`` below as well.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from common import` from anywhere
from common import provenance, table

NO_TRACKING = "http://127.0.0.1:9"  # the discard port: nothing answers, lineage stays pending

# What the full run measures, and the smoke run (a few units of pico xs seed 0).
FULL = {"sizes": ["xs", "s"], "seeds": [0, 1, 2], "steps": "all", "worker_counts": [1, 2]}
SMOKE = {"sizes": ["xs"], "seeds": [0], "steps": [0, 1, 2, 4], "worker_counts": [1]}
CHEAP = ["saturation", "anisotropy", "singular_entropy"]


# ----------------------------------------------------------------------------- the child


def _instrument(record) -> None:
    """Wrap the driver's steps so each call's start (epoch) and seconds are recorded."""
    import functools

    from ckptlab import lineage, results
    from ckptlab.orchestrator import cluster, executors, runner

    targets = [
        # ray.init on its own thread (started while planning), and the driver's wait for it
        (cluster, "connect", "ray_boot"),
        (executors.RayExecutor, "__enter__", "ray_init"),
        (executors.RayExecutor, "prepare", "prepare"),
        (executors.RayExecutor, "_pool", "pool"),
        (executors.RayExecutor, "__exit__", "ray_shutdown"),
        (runner, "make_plan", "plan"),
        (runner, "run_plan", "run_plan"),
        (runner._Lifecycle, "__init__", "setup"),  # DuckDB schema, input sets, MLflow start
        (runner._Lifecycle, "_open_lineage", "mlflow_open"),  # on its own thread
        (runner._Lifecycle, "persist", "persist"),  # one unit: DuckDB + MLflow
        (runner._Lifecycle, "finish", "finish"),
        (results.ResultStore, "write_unit", "write_unit"),
        (results.ResultStore, "duplicates", "duplicates"),
        (lineage.Lineage, "start", "mlflow_start"),
        (lineage.Lineage, "log_checkpoint", "mlflow_unit"),
        (lineage.Lineage, "log_report", "mlflow_report"),
        (lineage.Lineage, "finish", "mlflow_finish"),
    ]
    for owner, name, key in targets:
        original = getattr(owner, name, None)
        if original is None:  # renamed since: that step is simply not timed
            continue

        def wrapper(*args, _original=original, _key=key, **kwargs):
            began, clock = time.time(), time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                record(_key, began, time.perf_counter() - clock)

        setattr(owner, name, functools.wraps(original)(wrapper))


def _child(argv: list[str]) -> None:
    """``ckptlab ARGV`` in this process, its driver's steps timed into CKPTLAB_BENCH_TIMINGS."""
    timings: dict[str, list] = {"main": [[time.time(), 0.0]]}

    def record(key: str, began: float, seconds: float) -> None:
        timings.setdefault(key, []).append([began, seconds])

    clock = time.perf_counter()
    try:
        from ckptlab.cli import script

        record("cli_import", timings["main"][0][0], time.perf_counter() - clock)
        _instrument(record)
        began, clock = time.time(), time.perf_counter()
        sys.argv = ["ckptlab", *argv]
        try:
            script()  # as the `ckptlab` script: its exit included
        finally:  # what is left after it is the process' exit (atexit hooks, teardown)
            record("cli", began, time.perf_counter() - clock)
    finally:
        Path(os.environ["CKPTLAB_BENCH_TIMINGS"]).write_text(json.dumps(timings))


# ---------------------------------------------------------------------------- the parent


def spec_yaml(
    name: str,
    sizes: list[str],
    seeds: list[int],
    steps,
    analyses: list[tuple[str, dict]],
    input_set: dict | None,
    resources: dict,
) -> str:
    spec = {
        "name": name,
        "models": [{"suite": "pico", "sizes": sizes, "seeds": seeds, "steps": steps}],
        "input_sets": [input_set] if input_set else [],
        "analyses": [{"name": n, "params": p} if p else {"name": n} for n, p in analyses],
        "resources": resources,
    }
    return json.dumps(spec, indent=1)  # JSON is YAML


def hub_dir() -> Path:
    """The hub cache ckptlab would read here (HF_HUB_CACHE, else $CKPTLAB_HOME/hub)."""
    from ckptlab.home import hub_cache_dir

    return hub_cache_dir()


def _env(workdir: Path, hub: Path, extra_path: Path | None, extra: dict) -> dict[str, str]:
    # Its own Ray and its own MLflow store: nothing of the caller's cluster or server.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_ADDRESS") and k != "MLFLOW_TRACKING_URI"
    }
    env |= {
        "CKPTLAB_HOME": str(workdir / "home"),  # fresh results, MLflow store and sketches
        "HF_HUB_CACHE": str(hub),  # ... but the checkpoints of the shared hub cache
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "CKPTLAB_BENCH_TIMINGS": str(workdir / "timings.json"),
    } | extra
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p
        )
    return env


def ckptlab_run(
    spec_text: str,
    workdir: Path,
    hub: Path,
    *,
    tracking: bool = True,
    extra_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> dict:
    """One ``ckptlab run --json`` in a fresh process. Returns the wall seconds, the driver's
    step timings, the run's units rows, its summary and where its results DB is."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "spec.yaml"
    spec.write_text(spec_text)
    db = workdir / "results.duckdb"
    uri = f"sqlite:///{workdir / 'mlflow.db'}" if tracking else NO_TRACKING
    command = [sys.executable, str(Path(__file__).resolve()), "--ckptlab"]
    command += ["run", str(spec), "--db", str(db), "--tracking-uri", uri, "--json"]
    # Output to files, not pipes: the wall ends when the CLI's process exits, as at a shell
    # prompt, not when the last of Ray's processes lets go of an inherited pipe.
    with open(workdir / "stdout", "w") as out, open(workdir / "stderr", "w") as err:
        launched, clock = time.time(), time.perf_counter()
        child = subprocess.Popen(
            command, env=_env(workdir, hub, extra_path, extra_env or {}), cwd=workdir,
            stdout=out, stderr=err,
        )  # fmt: skip
        try:
            code = child.wait(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
        wall = time.perf_counter() - clock
    log = (workdir / "stderr").read_text()
    if code != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise RuntimeError(f"ckptlab run failed ({code}):\n{tail}")
    summary = json.loads((workdir / "stdout").read_text())
    if summary["cells_failed"]:
        raise RuntimeError(f"ckptlab run: cells failed: {summary['failures'][:3]}")
    timings = json.loads((workdir / "timings.json").read_text())
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(
            "SELECT model, revision, commit_sha, fetch_seconds, load_seconds, compute_seconds,"
            " epoch(started_at) AS started_at, epoch(finished_at) AS finished_at FROM units"
            " ORDER BY started_at"
        )
        names = [d[0] for d in cursor.description]
        units = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return {
        "wall": wall,
        "launched": launched,
        "timings": timings,
        "units": units,
        "summary": summary,
        "db": db,
        "log": log,
    }


def total(timings: dict, key: str) -> float:
    return sum(seconds for _, seconds in timings.get(key, []))


def startup(run: dict) -> dict:
    """Where a run's time went before its first unit, and Ray's share of it."""
    t, units = run["timings"], run["units"]
    first_unit = min(u["started_at"] for u in units)
    # The workers' start-up the run waited for: from the moment the driver was ready to hand
    # out units (its setup done, whether the actors were created before it or after) to the
    # first unit starting on a worker (actor processes, their imports, the first dispatch).
    ready = [began + seconds for began, seconds in t.get("setup", [])]
    ready = ready or [began for began, _ in t.get("pool", [])]
    ready_at = max(ready) if ready else first_unit
    ray_init = total(t, "ray_init")  # the driver's wait for Ray (all of ray.init, before 23)
    init_start = min((b for b, _ in t.get("ray_init", [])), default=ready_at)
    boot = t.get("ray_boot") or t.get("ray_init") or [[init_start, 0.0]]
    plan_start = min((b for b, _ in t.get("plan", [])), default=run["launched"])
    plan_end = max((b + s for b, s in t.get("plan", [])), default=run["launched"])
    boot_end = boot[0][0] + boot[0][1]
    on_path = boot[0][1] if boot_end >= plan_end else ray_init  # Ray's share of the path
    return {
        "ray_init": ray_init,
        "actors": max(0.0, first_unit - ready_at),
        "ray": on_path + max(0.0, first_unit - ready_at),
        "to_first_unit": first_unit - run["launched"],
        # ray.init itself, on the boot thread: when it began (since the command started) and
        # how long it took, overlapping planning where it started before the plan's end.
        "boot_start": boot[0][0] - run["launched"],
        "boot": boot[0][1],
        "before_plan": plan_start - run["launched"],  # interpreter, CLI imports, the spec
        "plan": total(t, "plan"),
        # Planning's end to ray.init, and ray.init's end to the driver being ready: the
        # analyses' registry, sizing the workers, the results DB and MLflow set up.
        "driver_setup": (init_start - plan_end) + (ready_at - init_start - ray_init),
    }


def breakdown(run: dict, workers: int) -> dict:
    """The run's wall against what its workers recorded; the rest, step by step."""
    t, units = run["timings"], run["units"]
    fetch = sum(u["fetch_seconds"] for u in units)
    load = sum(u["load_seconds"] for u in units)
    compute = sum(u["compute_seconds"] for u in units)
    busy = sum(u["finished_at"] - u["started_at"] for u in units)
    span = max(u["finished_at"] for u in units) - min(u["started_at"] for u in units)
    start = startup(run)
    # Idle worker time between a worker's units (the driver persisting, a round trip, ...).
    idle = max(0.0, workers * span - busy)
    last_unit = max(u["finished_at"] for u in units)
    cli_end = max((b + s for b, s in t.get("cli", [])), default=run["launched"] + run["wall"])
    return start | {
        "units": len(units),
        "workers": workers,
        "wall": run["wall"],
        "fetch": fetch,
        "load": load,
        "compute": compute,
        "span": span,
        "idle": idle,
        "idle_per_unit": idle / len(units),
        "ratio": (run["wall"] - start["ray"]) * workers / (load + compute),
        # The units alone: first unit's start to the last one's end, against their work.
        "steady": span * workers / (load + compute),
        "setup": total(t, "setup"),  # DuckDB schema, the run's rows, MLflow client + run
        "persist": total(t, "persist"),
        "write_unit": total(t, "write_unit"),
        "duplicates": total(t, "duplicates"),  # a second DuckDB connection (before the fix)
        "mlflow_unit": total(t, "mlflow_unit"),
        "mlflow_start": total(t, "mlflow_start"),
        "report": total(t, "mlflow_report"),
        "mlflow_finish": total(t, "mlflow_finish"),
        "finish": total(t, "finish"),
        "shutdown": total(t, "ray_shutdown"),
        "exit": run["launched"] + run["wall"] - cli_end,  # interpreter teardown (final gc)
        "after_last_unit": run["launched"] + run["wall"] - last_unit,
    }


def _f(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def _ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def run(smoke: bool = False) -> str:
    config = SMOKE if smoke else FULL
    hub = hub_dir()
    analyses = [(n, {}) for n in (CHEAP[:1] if smoke else CHEAP)]
    input_set = {
        "name": "heldout-prose",
        "builtin": "pydoc_topics",
        "split": "heldout",
        "num_sequences": 4 if smoke else 32,
        "seq_len": 32 if smoke else 128,
        "seed": 0,
    }

    def spec_for(workers: int) -> str:
        resources = {"workers": workers, "cpus_per_worker": 2 / workers, "batch_size": 16}
        return spec_yaml(
            "bench-overhead",
            config["sizes"],
            config["seeds"],
            config["steps"],
            analyses,
            input_set,
            resources,
        )

    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-overhead-") as tmp:
        for workers in config["worker_counts"]:
            done = ckptlab_run(spec_for(workers), Path(tmp) / f"w{workers}", hub)
            figures[f"{workers} worker{'s' * (workers > 1)}"] = breakdown(done, workers)
        # Lineage off: the same 1-worker run with a tracking URI that does not answer.
        off = ckptlab_run(spec_for(1), Path(tmp) / "off", hub, tracking=False)
        figures["1 worker, no MLflow"] = breakdown(off, 1)

    main_run = figures["1 worker"]
    n = main_run["units"]
    headline = table(
        [
            "run",
            "units",
            "wall s",
            "Ray start-up s (ray.init on the path + wait for workers)",
            "command start → first unit s",
            "planning s",
            "Σ fetch / load / compute s",
            "ratio",
            "units alone: span × workers ÷ Σ",
        ],
        [
            [
                name,
                f["units"],
                _f(f["wall"]),
                f"{_f(f['ray'])} ({_f(f['ray'] - f['actors'])} + {_f(f['actors'])})",
                _f(f["to_first_unit"]),
                _f(f["plan"]),
                f"{_f(f['fetch'], 2)} / {_f(f['load'])} / {_f(f['compute'])}",
                f"**{f['ratio']:.2f}**",
                f"{f['steady']:.2f}",
            ]
            for name, f in figures.items()
        ],
    )
    timeline = table(
        [
            "run",
            "before planning",
            "planning",
            "waiting for ray.init (ray.init: from, seconds)",
            "driver setup (of it DuckDB + MLflow)",
            "wait for workers",
            "units: first start → last end",
            "after the last unit: report, MLflow finish, Ray shutdown, exit",
        ],
        [
            [
                name,
                _f(f["before_plan"]),
                _f(f["plan"]),
                f"{_f(f['ray_init'])} ({_f(f['boot_start'])}, {_f(f['boot'])})",
                f"{_f(f['driver_setup'])} ({_f(f['setup'])})",
                _f(f["actors"]),
                _f(f["span"]),
                f"{_f(f['after_last_unit'])}: {_f(f['report'])}, {_f(f['mlflow_finish'])}, "
                f"{_f(f['shutdown'])}, {_f(f['exit'])}",
            ]
            for name, f in figures.items()
        ],
    )
    per_unit = table(
        [
            "run",
            "worker idle between units, per unit",
            "driver per unit: persist (DuckDB write + MLflow log_batch)",
            "Σ fetch (cached snapshot + weights digest)",
        ],
        [
            [
                name,
                _ms(f["idle_per_unit"]),
                f"{_ms(f['persist'] / n)} ({_ms(f['write_unit'] / n)} + "
                f"{_ms(f['mlflow_unit'] / n)})"
                + (f" + duplicate check {_ms(f['duplicates'] / n)}" if f["duplicates"] else ""),
                _f(f["fetch"], 2),
            ]
            for name, f in figures.items()
        ],
    )
    off_run = figures["1 worker, no MLflow"]
    once = (main_run["setup"] - off_run["setup"]) + main_run["report"] + main_run["mlflow_finish"]
    mlflow = table(
        ["MLflow's cost (1 worker)", "seconds"],
        [
            [
                "per unit: the driver's time in Lineage.log_checkpoint (one log_batch)",
                f"{main_run['mlflow_unit'] / n:.4f}",
            ],
            [
                "per run: client + fresh sqlite store + parent run (driver setup with − "
                "without), report figures, finish",
                f"{once:.1f} ({main_run['setup'] - off_run['setup']:.1f} + "
                f"{main_run['report']:.1f} + {main_run['mlflow_finish']:.1f})",
            ],
            [
                "wall with MLflow − wall without, ÷ units (the per-run part amortized)",
                f"{(main_run['wall'] - off_run['wall']) / n:.4f} "
                f"({_f(main_run['wall'])} − {_f(off_run['wall'])} s)",
            ],
        ],
    )
    ratio = main_run["ratio"]

    def goal(value: float, limit: float) -> str:
        return f"goal ≤ {limit:g}: {'met' if value <= limit else 'missed'}"

    verdict = (
        f"Goals (issue 23), 1 worker: ratio (wall − Ray start-up) ÷ Σ(load + compute) = "
        f"{ratio:.2f} ({goal(ratio, 1.3)}"
        + (f"; 2 workers: {figures['2 workers']['ratio']:.2f}" if "2 workers" in figures else "")
        + f"); command start → first unit {main_run['to_first_unit']:.1f} s "
        f"({goal(main_run['to_first_unit'], 3)}); last unit → exit "
        f"{main_run['after_last_unit']:.1f} s ({goal(main_run['after_last_unit'], 2)}). The "
        f"units alone, first start to last end, take {main_run['steady']:.2f}× their load + "
        f"compute (Σ = {main_run['load'] + main_run['compute']:.1f} s of work)."
    )
    sweep = (
        f"pico {', '.join(config['sizes'])} × seeds {', '.join(map(str, config['seeds']))}, "
        f"steps {config['steps'] if config['steps'] != 'all' else 'all (18 each)'}"
    )
    return "\n\n".join(
        [
            "## Overhead: ckptlab run's wall time against its workers' load + compute",
            provenance("python bench/overhead.py" + (" --smoke" if smoke else "")),
            f"`ckptlab run` (the CLI, a fresh process, private local Ray, fresh results DB and "
            f"MLflow sqlite store per run, checkpoints read from the hub cache) over {sweep}: "
            f"{n} units, analyses {', '.join(a for a, _ in analyses)} on "
            f"{input_set['num_sequences']} × {input_set['seq_len']} held-out tokens. The "
            "workers' fetch, load and compute seconds are the run's `units` rows; the driver's "
            "steps are timed by wrapping them in the CLI's process. ratio = (wall − Ray "
            "start-up) × workers ÷ Σ(load + compute), Ray start-up = ray.init + the wait from "
            "the driver being ready to the first unit starting (ray.init runs on its own thread "
            "while the plan is made: all of it counts when it ends after planning, only the "
            "driver's wait for it otherwise); 1 worker has 2 CPUs (2 torch "
            'threads), 2 workers 1 CPU each. "No MLflow": the same run with a tracking URI '
            "that does not answer (lineage left pending, no MLflow call).",
            headline,
            "Where the wall goes, seconds (the columns add up to the wall):",
            timeline,
            per_unit,
            mlflow,
            verdict,
        ]
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ckptlab":  # a child: the CLI, timed
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few units, ~1 minute")
    args = parser.parse_args()
    print(run(smoke=args.smoke))


if __name__ == "__main__":
    main()

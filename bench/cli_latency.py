"""How long the commands people type take (issue 23): the whole `ckptlab` process, from the
shell's view, median of 3, each in a fresh process.

    python bench/cli_latency.py            # pico xs+s, 11 steps each, 3 analyses
    python bench/cli_latency.py --smoke    # pico xs, steps 0 and 1; 1 repeat

The spec is computed once first (`ckptlab run`, not timed), so `plan` reads a cached suite
and `run` has nothing to compute, as in the issue's table. The checkpoints come from the hub
cache ckptlab would read (HF_HUB_CACHE, else $CKPTLAB_HOME/hub); everything else (results,
MLflow store, the input sets' windows) from a fresh CKPTLAB_HOME. `validate` of
specs/demo.yaml is timed too: its lm_eval entry needs lm-eval's task index (and the
`datasets` library it imports) to say whether the tasks exist.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table
from overhead import _env, hub_dir

REPO = Path(__file__).resolve().parents[1]
CKPTLAB = str(Path(sys.executable).parent / "ckptlab")
GOALS = {"--version": 0.5, "validate": 1.5, "plan": 2.0, "run": 2.0}


def spec_text(smoke: bool) -> str:
    sizes, steps = (["xs"], [0, 1]) if smoke else (["xs", "s"], [0, 1, 2, 4, 8, 16, 32, 64, 100])
    return json.dumps(
        {
            "name": "cli-latency",
            "models": [{"suite": "pico", "sizes": sizes, "steps": steps}],
            "input_sets": [
                {"name": "prose", "builtin": "pydoc_topics", "num_sequences": 8, "seq_len": 64}
            ],
            "analyses": [
                {"name": "saturation"},
                {"name": "anisotropy"},
                {"name": "singular_entropy"},
            ],
        },
        indent=1,
    )  # JSON is YAML


def timed(args: list[str], env: dict, cwd: Path, repeats: int) -> tuple[float, str]:
    """Median wall seconds of `ckptlab ARGS`, and the last run's first output line."""
    walls, first = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([CKPTLAB, *args], env=env, cwd=cwd, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"ckptlab {' '.join(args)} failed: {done.stderr[-2000:]}")
        first = (done.stdout.strip().splitlines() or [""])[0]
    return statistics.median(walls), first


def run(smoke: bool = False) -> str:
    repeats = 1 if smoke else 3
    with tempfile.TemporaryDirectory(prefix="cli-latency-") as folder:
        work = Path(folder)
        spec = work / "spec.yaml"
        spec.write_text(spec_text(smoke))
        db, uri = work / "results.duckdb", f"sqlite:///{work / 'mlflow.db'}"
        env = _env(work, hub_dir(), None, {})
        env.pop("CKPTLAB_BENCH_TIMINGS")
        stored = ["--db", str(db), "--tracking-uri", uri]
        setup = subprocess.run(
            [CKPTLAB, "run", str(spec), *stored, "--json"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
        )
        if setup.returncode != 0:
            raise SystemExit(f"the setup run failed: {setup.stderr[-2000:]}")
        cells = json.loads(setup.stdout)["cells_computed"]
        commands = [  # (goal's name, as shown, the arguments)
            ("--version", "--version", ["--version"]),
            ("validate", "validate spec.yaml", ["validate", str(spec)]),
            ("", "validate specs/demo.yaml", ["validate", str(REPO / "specs" / "demo.yaml")]),
            ("plan", "plan spec.yaml", ["plan", str(spec), "--db", str(db)]),
            ("run", "run spec.yaml (nothing to compute)", ["run", str(spec), *stored]),
            (
                "",
                "query 'SELECT count(*) ...'",
                ["query", "SELECT count(*) FROM results", *stored[:2]],
            ),
            ("", "analyses", ["analyses"]),
        ]
        rows = []
        for label, shown, args in commands:
            seconds, _ = timed(args, env, work, repeats)
            goal = GOALS.get(label)
            rows.append(
                [
                    f"`ckptlab {shown}`",
                    f"{seconds:.2f}",
                    f"≤ {goal}" if goal else "",
                    ("met" if seconds <= goal else "MISSED") if goal else "",
                ]
            )
    command = "python bench/cli_latency.py" + (" --smoke" if smoke else "")
    return "\n\n".join(
        [
            "## CLI latency: the commands people type",
            provenance(command),
            f"Median of {repeats} fresh processes each, wall seconds as a shell sees them. The "
            f"spec (`spec.yaml`: {cells} cells of pico, 3 analyses, one input set) was "
            "computed first, so `plan` reads a cached suite and `run` has nothing to compute. "
            "`tests/test_cli_imports.py` checks that none of these imports torch, "
            "transformers, Ray, MLflow, scikit-learn or lm-eval (demo.yaml's lm_eval entry "
            "excepted: lm-eval's task index says whether its tasks exist).",
            table(["command", "seconds", "goal", ""], rows),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    print(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()

"""`make demo` from an empty home, as the README tells a new user to run it (the venv already
installed), then once more (a rerun computes nothing).

    python bench/demo_time.py            # make demo in a fresh $CKPTLAB_HOME, twice
    python bench/demo_time.py --smoke    # `ckptlab run` of a 2-checkpoint spec on the hub cache

Reports the wall time of each step (pico build per size, the run, the queries) and the findings
the demo prints (cross-entropy at the last step, ICL accuracy of pico-m), so a faster demo can
be seen to say the same thing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table

REPO = Path(__file__).resolve().parents[1]


def _timed(command: list[str], env: dict) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-500:]}")
    return done.stdout + done.stderr, seconds


def _findings(db: Path) -> list[list[str]]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        ce = con.execute(
            "SELECT model, round(value, 3) FROM results WHERE metric = 'cross_entropy'"
            " AND step = (SELECT max(step) FROM results) ORDER BY model"
        ).fetchall()
        icl = con.execute(
            "SELECT task, round(avg(value), 3) FROM results WHERE metric = 'accuracy'"
            " AND size = 'm' AND step >= 600 AND shots = 8 GROUP BY task ORDER BY task"
        ).fetchall()
    rows = [[f"cross-entropy at the last step, {m}", f"{v}"] for m, v in ce]
    rows += [[f"ICL accuracy, pico-m, 8 shots, steps >= 600, {t}", f"{v}"] for t, v in icl]
    return rows


def run(smoke: bool = False) -> str:
    command = "python bench/demo_time.py" + (" --smoke" if smoke else "")
    rows, findings = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ}
        if smoke:  # the hub cache the caller has (tests: the session's pico hub)
            spec = Path(tmp) / "smoke.yaml"
            spec.write_text(
                json.dumps(
                    {
                        "name": "smoke",
                        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0, 100]}],
                        "input_sets": [
                            {"name": "p", "builtin": "pydoc_topics", "num_sequences": 4}
                        ],
                        "analyses": [{"name": "saturation"}, {"name": "anisotropy"}],
                    }
                )
            )
            db = Path(tmp) / "r.duckdb"
            cli = [sys.executable, "-m", "ckptlab", "run", str(spec), "--db", str(db), "--report"]
            cli += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
            for label in ("run", "rerun"):
                _, seconds = _timed(cli, env)
                rows.append([label, f"{seconds:.1f}"])
            findings = _findings(db)
        else:
            env["CKPTLAB_HOME"] = str(Path(tmp) / "home")
            env.pop("HF_HUB_CACHE", None)
            for label in ("make demo, empty home", "make demo again"):
                output, seconds = _timed(["make", "demo"], env)
                built = re.findall(r"(pico/pico-\w+): [\d,]+ params, ([\d.]+)s", output)
                ran = re.search(r"time\s*│\s*([\d.]+)s", output)
                parts = [f"{repo} {s} s" for repo, s in built]
                parts.append(f"run {ran.group(1)} s" if ran else "nothing to compute")
                rows.append([label, f"{seconds:.1f}", "; ".join(parts)])
            findings = _findings(Path(env["CKPTLAB_HOME"]) / "results.duckdb")
    if smoke:
        timing = table(["step", "seconds"], rows)
    else:
        timing = table(["step", "seconds", "of which"], rows)
    total = float(rows[0][1])
    goal = (
        ""
        if smoke
        else f"Goal (<= 300 s from an empty home): {'met' if total <= 300 else 'MISSED'}."
    )
    return "\n\n".join(
        [
            "## Demo: `make demo` from an empty home",
            provenance(command),
            "The README's first command with `CKPTLAB_HOME` an empty folder and the venv already "
            "installed: the pico build (3 sizes trained here), the demo run on a private local "
            "Ray, and its two queries; then the same command again.",
            timing,
            table(["finding", "value"], findings),
            goal,
        ]
    ).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    print(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()

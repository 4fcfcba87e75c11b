"""lm_eval's share of a unit: random-weight Pythia-160M-shaped GPT-NeoX revisions published
into a temporary hub cache, swept by ``ckptlab run`` with the geometry analyses and
``lm_eval`` (the shipped offline tasks pico_python_mc and pico_python_cloze, every document).

    python bench/lm_eval_share.py            # 160M shape, 2 revisions (bf16 on CUDA, else fp32)
    python bench/lm_eval_share.py --smoke    # tiny shape, 1 revision: the same code path

From the results DB: each analysis' ``cells.seconds`` per checkpoint (the time spent in that
cell's own calls: start, update per batch, finalize), the units' load and compute seconds,
and lm_eval's share of compute. The shared forward pass over the input set is attributed to
no cell (the worker times only each reducer's calls around it), so it shows as the compute
the cells do not account for. Also: lm_eval's rows per task (it ran, on every document), and
the one-off cost a worker pays before its first lm_eval cell (importing lm-eval, building the
task index), measured in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table
from gpu_sweep import publish as sweep_publish
from gpu_sweep import vocab_of

TASKS = ["pico_python_mc", "pico_python_cloze"]
ANALYSES = ["saturation", "anisotropy", "singular_entropy", "linearity", "block_ablation"]


def pico_tokenizer():
    """The pico suite's tokenizer recipe (byte-level BPE, 512 entries, trained on pydoc topics
    and stdlib code), so that the Python of lm_eval's tasks tokenizes as for a pico model."""
    from ckptlab.pico.build import PicoRecipe, train_tokenizer, training_texts

    return train_tokenizer(training_texts(PicoRecipe()))


def publish(hub: Path, size: str, revisions: int, dtype: torch.dtype) -> int:
    """gpu_sweep's random-weight revisions, as bench/lm-eval-<size>, with pico's tokenizer."""
    return sweep_publish(
        hub, size, revisions, dtype, repo=f"bench/lm-eval-{size}", tokenizer=pico_tokenizer()
    )


def environment(root: Path, hub: Path) -> dict[str, str]:
    """Offline, and every cache in the temporary folder: a fresh worker's first unit."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own store, not a server the caller set
    env |= {"HF_DATASETS_CACHE": str(root / "datasets"), "HF_DATASETS_OFFLINE": "1"}
    env["CKPTLAB_HOME"] = str(root / "home")
    return env


def sweep(root: Path, hub: Path, size: str, revisions: int, shape: tuple[int, int], gpu: bool):
    """``ckptlab run`` over the revisions; returns the path of its results DB and its summary."""
    sequences, seq_len = shape
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spec = {
        "name": f"lm-eval-share-{size}",
        "models": [
            {
                "repo": f"bench/lm-eval-{size}",
                "revisions": [f"step{k * 1000}" for k in range(revisions)],
            }
        ],
        "input_sets": [
            {
                "name": "prose",
                "builtin": "pydoc_topics",
                "split": "heldout",
                "num_sequences": sequences,
                "seq_len": seq_len,
            }
        ],
        "analyses": [{"name": name} for name in ANALYSES]
        + [{"name": "lm_eval", "params": {"tasks": TASKS, "batch_size": 16}}],
        "resources": {
            "dtype": "bfloat16" if gpu else "float32",
            "batch_size": 16,
            "workers": 1,
            **({"gpus_per_worker": 1} if gpu else {"cpus_per_worker": cores or 1}),
        },
    }
    spec_path = root / f"{size}.json.yaml"
    spec_path.write_text(json.dumps(spec))
    db = root / f"{size}.duckdb"
    done = subprocess.run(
        [sys.executable, "-m", "ckptlab", "run", str(spec_path), "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        env=environment(root, hub),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ckptlab run failed: {done.stderr.strip().splitlines()[-3:]}")
    return db, json.loads(done.stdout)


ONE_OFF = """
import json, time
import torch, transformers  # noqa: F401  (a worker has these before its first unit)
import ckptlab.analyses  # noqa: F401
from ckptlab.analyses import lm_eval_harness as h
t0 = time.perf_counter()
lm_eval = h._require_lm_eval()
from lm_eval.models.huggingface import HFLM  # noqa: F401
from lm_eval.api.metrics import mean_stderr  # noqa: F401
lm_eval.simple_evaluate  # lm-eval imports its evaluator on first access
t1 = time.perf_counter()
h.task_manager(False)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "index": t2 - t1}))
"""


def one_off_seconds(root: Path, hub: Path) -> dict[str, float]:
    """What the first lm_eval cell of a worker pays once: lm-eval's import (with HFLM) and the
    task index over the shipped tasks, in a fresh process that has torch and ckptlab loaded."""
    done = subprocess.run(
        [sys.executable, "-c", ONE_OFF],
        capture_output=True,
        text=True,
        env=environment(root, hub),
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_db(db: Path):
    """(units in start order, {commit: {analysis: seconds}}, lm_eval rows)."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        units = con.execute(
            "SELECT revision, commit_sha, fetch_seconds, load_seconds, compute_seconds,"
            " epoch(finished_at) - epoch(started_at), device FROM units ORDER BY started_at"
        ).fetchall()
        cells: dict[str, dict[str, float]] = {}
        for commit, name, seconds in con.execute(
            "SELECT commit_sha, analysis, sum(seconds) FROM cells GROUP BY ALL"
        ).fetchall():
            cells.setdefault(commit, {})[name] = seconds
        rows = con.execute(
            "SELECT revision, step, task, metric, value FROM results"
            " WHERE analysis = 'lm_eval' ORDER BY step, task, metric"
        ).fetchall()
        failures = con.execute("SELECT analysis, error FROM failures").fetchall()
    if failures:
        raise RuntimeError(f"failed cells: {failures[:3]}")
    return units, cells, rows


def seconds_table(units, cells) -> tuple[str, list[float]]:
    """Per analysis and per unit: cells.seconds, the unattributed rest of compute, load,
    compute; and lm_eval's share of compute. Returns the table and the shares."""
    headers = ["seconds per checkpoint"] + [
        f"{revision}{' (first unit)' if i == 0 and len(units) > 1 else ''}"
        for i, (revision, *_) in enumerate(units)
    ]
    rows, shares = [], []
    for name in [*ANALYSES, "lm_eval"]:
        rows.append([f"`{name}` (cells.seconds)"] + [f"{cells[u[1]][name]:.2f}" for u in units])
    rows.append(
        ["shared forward pass + rest (compute - sum of cells)"]
        + [f"{u[4] - sum(cells[u[1]].values()):.2f}" for u in units]
    )
    rows.append(["unit load (units.load_seconds)"] + [f"{u[3]:.2f}" for u in units])
    rows.append(["unit compute (units.compute_seconds)"] + [f"{u[4]:.2f}" for u in units])
    for u in units:
        shares.append(cells[u[1]]["lm_eval"] / u[4])
    rows.append(["**lm_eval / unit compute**"] + [f"**{s:.1%}**" for s in shares])
    rows.append(
        ["lm_eval / unit (fetch + load + compute)"]
        + [f"{cells[u[1]]['lm_eval'] / (u[2] + u[3] + u[4]):.1%}" for u in units]
    )
    return table(headers, rows), shares


def task_table(rows) -> str:
    """One row per (revision, task): lm-eval's metrics as stored."""
    by: dict[tuple[str, str], dict[str, float]] = {}
    for revision, _, task, metric, value in rows:
        by.setdefault((revision, task), {})[metric] = value
    metrics = ["n_docs", "acc", "acc_stderr", "acc_norm", "perplexity"]

    def cell(values: dict[str, float], metric: str) -> str:
        if metric not in values:
            return "—"
        value = values[metric]
        return f"{value:.0f}" if metric == "n_docs" else f"{value:.4g}"

    return table(
        ["revision", "task", *metrics],
        [[revision, task, *(cell(v, m) for m in metrics)] for (revision, task), v in by.items()],
    )


def run(smoke: bool = False) -> str:
    command = "python bench/lm_eval_share.py" + (" --smoke" if smoke else "")
    title = "## lm_eval's share of a unit (Pythia-160M-shaped checkpoints)"
    gpu = torch.cuda.is_available()
    size, revisions = ("tiny", 1) if smoke else ("160m", 2)
    # CPU: the 2L ablated passes of block_ablation over 160M weights bound the input set.
    shape = (4, 32) if smoke else ((32, 128) if gpu else (8, 128))
    dtype = "bfloat16" if gpu else "float32"
    name = torch.cuda.get_device_name(0) if gpu else "the CPU"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hub = root / "hub"
        params = publish(hub, size, revisions, getattr(torch, dtype))
        db, summary = sweep(root, hub, size, revisions, shape, gpu)
        units, cells, rows = read_db(db)
        one_off = one_off_seconds(root, hub)
    seconds, shares = seconds_table(units, cells)
    docs = sum(int(v) for r, _, _, m, v in rows if m == "n_docs" and r == units[0][0])
    later = shares[1:] or shares
    lm_first = cells[units[0][1]]["lm_eval"]
    lm_later = [cells[u[1]]["lm_eval"] for u in units[1:]]
    first_vs_later = (
        f"lm_eval's cell took {lm_first:.1f} s in the first unit and "
        f"{sum(lm_later) / len(lm_later):.1f} s in the later one(s)"
        if lm_later
        else f"lm_eval's cell took {lm_first:.1f} s in the only unit"
    )
    where = (
        f"On {name}, bf16 (units on {units[0][6]})."
        if gpu
        else "On the CPU, float32. Not measured on a GPU: no device was lent to this task; on "
        "a CUDA machine the same command runs the units on cuda in bf16 with 32 x 128 tokens."
    )
    return "\n\n".join(
        [
            title,
            provenance(command),
            f"{where} {revisions} random-weight GPT-NeoX revision(s) of the {size} shape "
            f"({params / 1e6:,.1f}M parameters, vocab {vocab_of(size):,}, the pico suite's "
            f"512-entry tokenizer), one `ckptlab run` (1 worker, prefetch on, run "
            f"{summary['seconds']:.1f} s) with input set pydoc_topics heldout, "
            f"{shape[0]} x {shape[1]} tokens, analyses {', '.join(ANALYSES)} and lm_eval "
            f"(tasks {', '.join(TASKS)}, every document, batch_size 16, 0-shot). "
            "`cells.seconds` is the time in a cell's own calls (start, update per batch, "
            "finalize): the shared forward pass feeding saturation, anisotropy, linearity "
            "and block_ablation is attributed to none of them and appears as the rest of "
            "compute; block_ablation's 2L ablated passes and lm_eval's own forwards are "
            "their cells'.",
            seconds,
            "lm_eval's rows per task (random weights, so chance-level accuracy is expected, "
            "and the revisions differ in one weight, so their rows agree; n_docs shows every "
            "document ran):",
            task_table(rows),
            table(
                ["one-off, fresh process", "seconds"],
                [
                    ["import lm-eval (evaluator, HFLM, metrics)", f"{one_off['import']:.3f}"],
                    ["task index (shipped tasks)", f"{one_off['index']:.3f}"],
                ],
            ),
            f"lm_eval took {sum(later) / len(later):.0%} of the unit's compute time"
            f"{' after the first unit' if len(shares) > 1 else ''} "
            f"({first_vs_later}; the one-off import and task index above, "
            f"{one_off['import'] + one_off['index']:.1f} s, fall in a worker's first unit). "
            "The share depends on the "
            f"input set's size: lm_eval's cost is fixed by its tasks ({docs} short documents), "
            "the other analyses grow with the input set's tokens."
            + ("" if gpu else " CPU figures; the GPU share needs a lent device."),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    print(run(args.smoke))


if __name__ == "__main__":
    main()

"""Planning and storage at Pythia scale, offline, from a hub cache laid out as the hub writes
it: 10 sizes x 154 revisions (refs and snapshot folders; one snapshot per model with its
config and tokenizer), 10 analyses, one input set.

    python bench/plan_scale.py            # 10 sizes, ~1M metric rows
    python bench/plan_scale.py --smoke    # 2 sizes, ~20k rows

Measures: the plan from a cold results DB; the DuckDB ingest of every cell (one transaction
per checkpoint, as the runner does) with ~1M metric rows; the resume check (the same plan over
the full DB: nothing to compute); and "metric vs step per layer of one model" on that DB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table

SIZES = {  # Pythia's shapes: hidden, layers, heads, intermediate
    "14m": (128, 6, 4, 512),
    "31m": (256, 6, 8, 1024),
    "70m": (512, 6, 8, 2048),
    "160m": (768, 12, 12, 3072),
    "410m": (1024, 24, 16, 4096),
    "1b": (2048, 16, 8, 8192),
    "1.4b": (2048, 24, 16, 8192),
    "2.8b": (2560, 32, 32, 10240),
    "6.9b": (4096, 32, 32, 16384),
    "12b": (5120, 36, 40, 20480),
}
ANALYSES = [
    {"name": "saturation"},
    {"name": "anisotropy"},
    {"name": "singular_entropy"},
    {"name": "linearity"},
    {"name": "logit_lens"},
    {"name": "dispersion"},
    {"name": "intrinsic_dimension"},
    {"name": "neuron_entropy"},
    {"name": "cka"},
    {"name": "head_rank_proxy"},
]


def lay_out_cache(hub: Path, tokenizer_folder: Path, sizes: list[str]) -> None:
    from ckptlab.catalog import pythia_schedule

    for size in sizes:
        hidden, layers, heads, inner = SIZES[size]
        storage = hub / f"models--EleutherAI--pythia-{size}"
        (storage / "refs").mkdir(parents=True)
        for i, step in enumerate(pythia_schedule()):
            commit = hashlib.sha1(f"{size}/{step}".encode()).hexdigest()
            (storage / "refs" / f"step{step}").write_text(commit)
            snapshot = storage / "snapshots" / commit
            snapshot.mkdir(parents=True)
            # Planning reads weight files' names and digests, never their tensors: a stand-in.
            (snapshot / "model.safetensors").write_text(f"pythia-{size} step{step}")
            if i == 0:  # what planning reads: the first checkpoint's config and tokenizer
                for name in ("tokenizer.json", "tokenizer_config.json"):
                    shutil.copy(tokenizer_folder / name, snapshot / name)
                config = {
                    "model_type": "gpt_neox",
                    "architectures": ["GPTNeoXForCausalLM"],
                    "hidden_size": hidden,
                    "num_hidden_layers": layers,
                    "num_attention_heads": heads,
                    "intermediate_size": inner,
                    "vocab_size": 50304,
                    "max_position_embeddings": 2048,
                    "rotary_pct": 0.25,
                    "tie_word_embeddings": False,
                }
                (snapshot / "config.json").write_text(json.dumps(config))


def run(smoke: bool = False) -> str:
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from ckptlab.orchestrator.runner import make_plan
    from ckptlab.pico.build import train_tokenizer
    from ckptlab.results import ResultStore
    from ckptlab.rows import CellRow, CheckpointRow, MetricRow
    from ckptlab.spec import parse_spec

    sizes = ["14m", "410m"] if smoke else list(SIZES)
    rows_per_cell = 1 if smoke else 65  # ~1M metric rows over 15,400 cells
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = train_tokenizer(["def f(x): return x + 1"] * 50)
        tokenizer.save_pretrained(root / "tok")
        hub = root / "hub"
        lay_out_cache(hub, root / "tok", sizes)
        spec = parse_spec(
            {
                "name": "pythia-scale",
                "models": [{"suite": "pythia", "sizes": sizes, "steps": "all"}],
                "input_sets": [
                    {
                        "name": "prose",
                        "builtin": "pydoc_topics",
                        "num_sequences": 64,
                        "seq_len": 512,
                    }
                ],
                "analyses": ANALYSES,
            }
        )
        db = root / "results.duckdb"
        started = time.perf_counter()
        plan = make_plan(spec, db, hub)
        cold = time.perf_counter() - started
        unresolved = sum(u.error is not None for u in plan.units)

        # Ingest every cell the way the runner stores a unit: one transaction each.
        store = ResultStore(db)
        store.ensure_schema()
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        n_metrics = 0
        for unit in plan.units:
            ref = unit.checkpoint
            cells = [
                CellRow(
                    c.key,
                    unit.commit,
                    c.analysis,
                    c.version,
                    c.params_json,
                    c.params_hash,
                    c.input_set_id,
                    "cpu",
                    "float32",
                    0.01,
                )
                for c in unit.cells
            ]
            metrics = [
                MetricRow(c.key, layer, "m", float(v))
                for c in unit.cells
                for layer, v in enumerate(rng.normal(size=rows_per_cell))
            ]
            n_metrics += len(metrics)
            store.write_unit(
                "bench",
                CheckpointRow(
                    ref.model, ref.revision, ref.step, unit.commit, ref.suite, ref.size, ref.seed
                ),
                cells,
                metrics,
                [],
            )
        ingest = time.perf_counter() - started

        started = time.perf_counter()
        again = make_plan(spec, db, hub)
        warm = time.perf_counter() - started

        started = time.perf_counter()
        frame = store.query(
            f"SELECT step, layer, value FROM results WHERE model = 'EleutherAI/pythia-{sizes[-1]}'"
            " AND analysis = 'anisotropy' AND metric = 'm' ORDER BY step, layer"
        )
        query_s = time.perf_counter() - started
        db_mib = db.stat().st_size / 2**20

    rows = [
        [
            "plan, empty results DB",
            f"{len(plan.units):,} checkpoints, {plan.total_cells:,} cells, {unresolved} unresolved",
            f"{cold:.2f}",
        ],
        [
            "ingest, one transaction per checkpoint",
            f"{n_metrics:,} metric rows ({n_metrics / ingest:,.0f} rows/s)",
            f"{ingest:.1f}",
        ],
        [
            "plan + resume check over the full DB",
            f"{again.missing_cells:,} cells to compute",
            f"{warm:.2f}",
        ],
        [
            "query: metric vs step per layer of one model",
            f"{frame.height:,} rows from a {db_mib:.0f} MiB DB",
            f"{query_s:.3f}",
        ],
    ]
    holds = cold < 2 and warm < 2
    command = "python bench/plan_scale.py" + (" --smoke" if smoke else "")
    return "\n\n".join(
        [
            "## Planning and storage at Pythia scale",
            provenance(command),
            f"A hub cache laid out as the hub writes it (refs + snapshot folders) for Pythia "
            f"{', '.join(sizes)} x {len(plan.units) // len(sizes)} revisions of the recorded "
            f"Pythia schedule, {len(ANALYSES)} analyses, one input set; planning reads only "
            "configs, tokenizers and the weight files' names and digests. The DB is then "
            "filled as the runner fills it.",
            table(["step", "what", "seconds"], rows),
            f"Goal (plan < 2 s and resume check < 2 s): {'met' if holds else 'MISSED'}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    print(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()

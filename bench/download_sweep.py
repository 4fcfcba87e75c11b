"""Downloads over one link: a sweep whose checkpoints come from a hub at a fixed bandwidth
(issue 23, part 3).

    python bench/download_sweep.py           # 7 checkpoints of 28 MB, 5 analyses, 8 MB/s
    python bench/download_sweep.py --smoke   # 3 checkpoints, 2 analyses, 8 MB/s

The project's hub-protocol test server (``tests/fake_hub.py``) serves revisions ``step0`` …
of a GPT-NeoX with Pythia-14m's shape (d_model 128, 6 layers, vocabulary 50,304, untied head;
random weights, float16: 28 MB each; pico's tokenizer) on 127.0.0.1. Every download shares
one link of 8 MB/s, as a node's uplink would. Both sides start from an empty hub cache:

(a) ``ckptlab run`` (the CLI in a fresh process, private local Ray, 2 workers of 1 CPU);
(b) the papers' loop of ``bench/fusion.py``: per analysis, per checkpoint,
    ``from_pretrained(repo, revision=...)`` from the same server (the first analysis
    downloads each checkpoint, the others read the cache), one forward pass, the analysis.

Figures: pure download = all weight bytes ÷ the link; first download = one checkpoint ÷ the
link; compute ÷ workers = the units' Σ(load + compute) ÷ 2. Goals: ckptlab ≥ 3.5× the loop;
wall ≤ 1.3 × (first download + max(pure download, compute ÷ workers)).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from common import` from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the hub server
from common import provenance, table
from fusion import naive_run
from overhead import ckptlab_run, spec_yaml, startup

REPO = "bench/pythia-14m-shaped"
LINK = 8e6  # bytes per second, shared by every download
FULL = {"checkpoints": 7, "analyses": ["saturation", "anisotropy", "singular_entropy",
                                       "dispersion", "linearity"]}  # fmt: skip
SMOKE = {"checkpoints": 3, "analyses": ["saturation", "anisotropy"]}
INPUT_SET = {
    "name": "heldout-prose",
    "builtin": "pydoc_topics",
    "split": "heldout",
    "num_sequences": 16,
    "seq_len": 128,
    "seed": 0,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_checkpoints(folder: Path, count: int) -> dict[str, Path]:
    """``count`` revisions of a Pythia-14m-shaped GPT-NeoX (random weights, float16)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    from ckptlab.home import hub_cache_dir

    pico = next((hub_cache_dir() / "models--pico--pico-xs" / "snapshots").iterdir())
    config = GPTNeoXConfig(
        hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512,
        vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25,
        tie_word_embeddings=False, torch_dtype="float16",
    )  # fmt: skip
    hf_logging.disable_progress_bar()
    revisions = {}
    for i in range(count):
        torch.manual_seed(i)
        model = GPTNeoXForCausalLM(config).to(torch.float16)
        out = folder / f"step{i * 1000}"
        model.save_pretrained(out, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (pico / name).exists():
                shutil.copy(pico / name, out / name)
        revisions[f"step{i * 1000}"] = out
    return revisions


def downloads(db: Path) -> list[dict]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(
            "SELECT revision, epoch(started_at) AS started, epoch(finished_at) AS finished,"
            " epoch(prefetch_started_at) AS p_start, epoch(prefetch_finished_at) AS p_end,"
            " fetch_seconds, load_seconds, compute_seconds FROM units ORDER BY started_at"
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def run(smoke: bool = False) -> str:
    from fake_hub import FakeHub

    sweep = SMOKE if smoke else FULL
    analyses = [(name, {}) for name in sweep["analyses"]]
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-downloads-") as tmp:
        tmp = Path(tmp)
        revisions = make_checkpoints(tmp / "checkpoints", sweep["checkpoints"])
        weights = [(p / "model.safetensors").stat().st_size for p in revisions.values()]
        with FakeHub() as hub:
            hub.add_model(REPO, revisions)
            hub.bytes_per_second, hub.shared_link = LINK, True
            online = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                      "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
            resources = {"workers": 2, "cpus_per_worker": 1, "batch_size": 16}
            spec = json.loads(spec_yaml("bench-downloads", [], [], [], analyses, INPUT_SET,
                                        resources))  # fmt: skip
            spec["models"] = [{"repo": REPO, "revisions": list(revisions)}]
            a = ckptlab_run(json.dumps(spec), tmp / "a", tmp / "a-hub", extra_env=online)
            units = downloads(a["db"])

            config = {
                "hub": str(tmp / "b-hub"),
                "online": True,
                "checkpoints": [(REPO, r, int(r.removeprefix("step"))) for r in revisions],
                "analyses": analyses,
                "input_set": INPUT_SET,
            }
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLFLOW_"))}
            env |= online | {"TOKENIZERS_PARALLELISM": "false"}
            b = naive_run(config, tmp / "b", env)

    workers = 2
    pure = sum(weights) / LINK
    first = weights[0] / LINK
    work = sum(u["load_seconds"] + u["compute_seconds"] for u in units)
    bound = first + max(pure, work / workers)
    start = startup(a)
    launched = a["launched"]
    fetched = sorted((u["p_start"], u["p_end"]) for u in units if u["p_start"] is not None)
    overlaps = sum(1 for (_, e0), (s1, _) in itertools.pairwise(fetched) if s1 < e0 - 0.05)
    speedup = b["wall"] / a["wall"]
    headline = table(
        ["side", "wall s", "vs the loop"],
        [
            ["ckptlab run (2 workers)", f"{a['wall']:.1f}", f"**{speedup:.2f}×**"],
            ["the papers' loop", f"{b['wall']:.1f}", "1.00×"],
        ],
    )
    figures = table(
        ["figure", "seconds"],
        [
            [f"pure download: {len(weights)} × {weights[0] / 1e6:.1f} MB at {LINK / 1e6:g} MB/s",
             f"{pure:.1f}"],
            ["first download (one checkpoint)", f"{first:.1f}"],
            [f"compute ÷ workers: Σ(load + compute) {work:.1f} s ÷ {workers}",
             f"{work / workers:.1f}"],
            ["bound: first download + max(pure download, compute ÷ workers)", f"{bound:.1f}"],
            ["ckptlab's wall ÷ bound", f"**{a['wall'] / bound:.2f}**"],
            ["command start → first unit", f"{start['to_first_unit']:.1f}"],
            ["command start → first download begins",
             f"{fetched[0][0] - launched:.1f}" if fetched else "–"],
            ["command start → last download ends",
             f"{fetched[-1][1] - launched:.1f}" if fetched else "–"],
            ["downloads that overlapped the one before (one link: 0)", str(overlaps)],
        ],
    )  # fmt: skip
    per_download = table(
        ["revision", "download from s", "download s", "unit from s", "unit waited s"],
        [
            [u["revision"],
             f"{u['p_start'] - launched:.1f}" if u["p_start"] else "–",
             f"{u['p_end'] - u['p_start']:.1f}" if u["p_start"] else "–",
             f"{u['started'] - launched:.1f}", f"{u['fetch_seconds']:.1f}"]
            for u in units
        ],
    )  # fmt: skip
    goals = (
        f"Goals: ≥ 3.5× the loop: {speedup:.2f}× ({'met' if speedup >= 3.5 else 'missed'}); "
        f"wall ≤ 1.3 × bound: {a['wall'] / bound:.2f} "
        f"({'met' if a['wall'] <= 1.3 * bound else 'missed'})."
    )
    return "\n\n".join(
        [
            "## Downloads over one link: a sweep served at a fixed bandwidth",
            provenance("python bench/download_sweep.py" + (" --smoke" if smoke else "")),
            f"{len(weights)} revisions of a Pythia-14m-shaped GPT-NeoX ({weights[0] / 1e6:.1f} MB "
            f"of float16 safetensors each) served by the project's hub-protocol test server on "
            f"127.0.0.1, every download sharing one {LINK / 1e6:g} MB/s link; analyses "
            f"{', '.join(sweep['analyses'])} on {INPUT_SET['num_sequences']} × "
            f"{INPUT_SET['seq_len']} held-out tokens. Both sides start from an empty hub cache. "
            "(a) `ckptlab run` (fresh process, private local Ray, 2 workers of 1 CPU); (b) the "
            "papers' loop of `bench/fusion.py` (per analysis, per checkpoint, `from_pretrained` "
            "with the revision from the same server).",
            headline,
            figures,
            "Each unit (times since the command started; a unit waits for its own download):",
            per_download,
            goals,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="3 checkpoints, 2 analyses")
    args = parser.parse_args()
    began = time.perf_counter()
    print(run(smoke=args.smoke))
    print(f"\n(benchmark took {time.perf_counter() - began:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()

"""GPU sweep: Pythia-410M and 1.4B-shaped GPT-NeoX checkpoints (random weights, bf16) published
as ``step<N>`` revisions into a temporary hub cache, then swept by ``ckptlab run``.

    python bench/gpu_sweep.py              # needs CUDA; says so plainly when there is none
    python bench/gpu_sweep.py --smoke      # tiny shapes on the CPU: the same code path

Measures per size: the pure load time of one revision (``load_model`` to the device, weights
in the page cache), the fused unit's forward throughput (tokens / the workers' compute
seconds) against the bf16 roofline (peak dense bf16 flop/s / (2 x parameters) tokens/s), and
the sweep's wall time (first unit start to last unit end, from the ``units`` table, so Ray's
start-up is left out) divided by the revisions' pure load time: 1.0 means the computing and
persisting hide completely behind loading. Prefetch is on (the spec's default).
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table

SHAPES = {  # Pythia's: hidden, layers, heads, intermediate
    "410m": (1024, 24, 16, 4096),
    "1.4b": (2048, 24, 16, 8192),
    "160m": (768, 12, 12, 3072),
    "tiny": (64, 2, 2, 256),
}
# Dense bf16 peak flop/s (vendor datasheets, no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def vocab_of(size: str) -> int:
    return 50304 if size != "tiny" else 1024


def publish(
    hub: Path, size: str, revisions: int, dtype: torch.dtype, *, repo=None, tokenizer=None
) -> int:
    """Publish ``revisions`` distinct checkpoints of one shape as ``repo`` (default
    bench/pythia-<size>), with ``tokenizer`` (default a toy one); returns the parameter
    count."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from ckptlab.pico.build import train_tokenizer
    from ckptlab.pico.publish import publish_revision

    hidden, layers, heads, inner = SHAPES[size]
    config = GPTNeoXConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inner,
        vocab_size=vocab_of(size),
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).to(dtype)
    tokenizer = tokenizer or train_tokenizer(["def f(x): return x + 1"] * 20)
    repo = repo or f"bench/pythia-{size}"
    for k in range(revisions):  # initialising once is minutes faster at 1.4B; payloads differ
        with torch.no_grad():
            model.get_output_embeddings().weight[0, 0] = float(k)
        publish_revision(hub, repo, f"step{k * 1000}", model, tokenizer, {})
    return sum(p.numel() for p in model.parameters())


def pure_load_seconds(hub: Path, size: str, revisions: int, dtype: str, device: str) -> float:
    from ckptlab.hub import fetch_snapshot, load_model

    seconds = []
    for k in range(revisions):
        folder, _ = fetch_snapshot(f"bench/pythia-{size}", f"step{k * 1000}", hub, local_only=True)
        started = time.perf_counter()
        model = load_model(folder, dtype, device)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        del model
    return sum(seconds)


def sweep(root: Path, hub: Path, size: str, revisions: int, tokens: int, dtype: str, gpu: bool):
    """``ckptlab run`` over the revisions; returns (units rows, the run's summary)."""
    seq_len = 512 if tokens >= 512 else 64
    spec = {
        "name": f"gpu-sweep-{size.replace('.', '_')}",
        "models": [
            {
                "repo": f"bench/pythia-{size}",
                "revisions": [f"step{k * 1000}" for k in range(revisions)],
            }
        ],
        "input_sets": [
            {
                "name": "prose",
                "builtin": "pydoc_topics",
                "split": "all",
                "num_sequences": tokens // seq_len,
                "seq_len": seq_len,
            }
        ],
        "analyses": [
            {"name": "saturation"},
            {"name": "anisotropy"},
            {"name": "singular_entropy"},
            {"name": "dispersion"},
            {"name": "linearity"},
        ],
        "resources": {
            "dtype": dtype,
            "batch_size": 16,
            "workers": 1,
            **({"gpus_per_worker": 1} if gpu else {"cpus_per_worker": 1}),
        },
    }
    spec_path = root / f"{size}.json.yaml"
    spec_path.write_text(json.dumps(spec))
    db = root / f"{size}.duckdb"
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own store, not a server the caller set
    env["CKPTLAB_HOME"] = str(root / "home")
    done = subprocess.run(
        [sys.executable, "-m", "ckptlab", "run", str(spec_path), "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ckptlab run failed: {done.stderr.strip().splitlines()[-1:]}")
    summary = json.loads(done.stdout)
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        units = con.execute(
            "SELECT load_seconds, compute_seconds, epoch(started_at), epoch(finished_at)"
            " FROM units ORDER BY started_at"
        ).fetchall()
    return units, summary


def run(smoke: bool = False, revisions: int = 4, tokens: int = 65_536) -> str:
    command = "python bench/gpu_sweep.py" + (" --smoke" if smoke else "")
    title = "## GPU: Pythia-410M and 1.4B-shaped sweeps"
    gpu = torch.cuda.is_available()
    if not gpu and not smoke:
        return "\n\n".join(
            [
                title,
                provenance(command),
                "Not measured: no CUDA device on this machine (no GPU was lent to the session "
                "that regenerated this file). On a GPU machine the same command publishes "
                "random-weight Pythia-410M/1.4B-shaped revisions into a temporary hub and "
                "measures load time, fused-forward tokens/s against the bf16 roofline and "
                "sweep time / pure load time (goal <= 1.1x).",
            ]
        )
    sizes = ["tiny"] if smoke else ["410m", "1.4b"]
    revisions, tokens = (2, 256) if smoke else (revisions, tokens)
    device, dtype = ("cuda", "bfloat16") if gpu else ("cpu", "float32")
    name = torch.cuda.get_device_name(0) if gpu else "cpu"
    peak = peak_flops(name) if gpu else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hub = root / "hub"
        for size in sizes:
            params = publish(hub, size, revisions, getattr(torch, dtype))
            load_s = pure_load_seconds(hub, size, revisions, dtype, device)
            units, summary = sweep(root, hub, size, revisions, tokens, dtype, gpu)
            compute = [c for _, c, _, _ in units[1:]] or [units[0][1]]  # first unit warms up
            tokens_per_s = tokens / (sum(compute) / len(compute))
            window = units[-1][3] - units[0][2]
            roofline = f"{tokens_per_s / (peak / (2 * params)):.1%}" if peak else "n/a"
            rows.append(
                [
                    size,
                    f"{params / 1e6:,.0f}M",
                    revisions,
                    f"{tokens:,}",
                    f"{load_s / revisions:.2f}",
                    f"{tokens_per_s:,.0f}",
                    roofline,
                    f"{window:.1f}",
                    f"{summary['seconds']:.1f}",
                    f"{window / load_s:.2f}x",
                ]
            )
    ratios = [float(r[-1].rstrip("x")) for r in rows]
    verdict = "met" if all(r <= 1.1 for r in ratios) else "MISSED"
    return "\n\n".join(
        [
            title,
            provenance(command),
            f"{name}, {dtype}; {revisions} revisions per size, {tokens:,} tokens per unit, "
            "analyses saturation, anisotropy, singular entropy, dispersion, linearity in one "
            "pass. tokens/s = tokens / a unit's compute seconds (mean over units after the "
            "first); roofline share = that / (peak bf16 flop/s / (2 x params)); sweep = first "
            "unit start to last unit end.",
            table(
                [
                    "size",
                    "params",
                    "revisions",
                    "tokens/unit",
                    "load s/revision",
                    "tokens/s",
                    "of roofline",
                    "sweep s",
                    "run s",
                    "sweep / load",
                ],
                rows,
            ),
            f"Goal (sweep / pure load <= 1.1x): {verdict}"
            + ("" if gpu else " (CPU smoke: the figures only show that the code runs)."),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--revisions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=65_536)
    args = parser.parse_args()
    print(run(args.smoke, args.revisions, args.tokens))


if __name__ == "__main__":
    main()

"""Cost of one unit (load once, one forward pass capturing everything, all analyses) on a
Pythia-160m-shaped GPT-NeoX with random weights, saved as a local checkpoint folder.

    python bench/unit_cost.py --device cpu --tokens 4096
    python bench/unit_cost.py --device cuda --tokens 65536 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from ckptlab.hub import content_commit_id
from ckptlab.orchestrator.checkpoints import CheckpointRef
from ckptlab.orchestrator.plan import Cell
from ckptlab.orchestrator.unit import UnitTask
from ckptlab.orchestrator.worker import run_unit
from ckptlab.pico.build import train_tokenizer

PYTHIA_160M = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=50304,
    max_position_embeddings=2048,
    rotary_pct=0.25,
    use_parallel_residual=True,
    tie_word_embeddings=False,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "step0"
        torch.manual_seed(0)
        GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_160M)).save_pretrained(folder)
        tokenizer: PreTrainedTokenizerFast = train_tokenizer(["def f(x): return x"] * 10)
        tokenizer.save_pretrained(folder)
        n_seq = args.tokens // args.seq_len
        tokens = np.random.default_rng(0).integers(0, 50000, size=(n_seq, args.seq_len))
        cells = [
            Cell("sat", "saturation", "saturation", 1, "{}", "h", "a", "a"),
            Cell(
                "ani", "anisotropy", "anisotropy", 1, '{"drop_first_position":false}', "h", "a", "a"
            ),
            Cell(
                "se",
                "singular_entropy",
                "singular_entropy",
                1,
                '{"trim_padded_rows":false}',
                "h",
                None,
                None,
            ),
        ]
        task = UnitTask(
            CheckpointRef(tmp, "step0", 0, "local", local_only=True),
            content_commit_id(folder),
            cells,
            {"a": tokens},
            Path(tmp),
            args.dtype,
            args.batch_size,
            False,
            False,
        )
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run_unit(task, args.device)  # warm-up: kernels, allocator, file cache
        started = time.perf_counter()
        result = run_unit(task, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        assert not result.failures, result.failures
        report = {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "dtype": args.dtype,
            "tokens": n_seq * args.seq_len,
            "unit_seconds": round(seconds, 3),
            "load_seconds": round(result.fetch_seconds + result.load_seconds, 3),
            "tokens_per_second": round(
                n_seq * args.seq_len / (seconds - result.fetch_seconds - result.load_seconds)
            ),
            "metric_rows": len(result.metrics),
        }
        if args.device == "cuda":
            report["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        print(json.dumps(report))


if __name__ == "__main__":
    main()

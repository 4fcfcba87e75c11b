"""Working memory and time of every analysis on a synthetic capture of N = 50k tokens x
d_model 2048 (3 hidden-state layers, vocab 50304, d_mlp 8192).

    python bench/analysis_memory.py --device cuda            # all analyses, one process
    python bench/analysis_memory.py --device cpu --only dispersion   # CPU: one per process

Working memory = peak allocation during the analysis minus what the capture already holds
(CUDA: torch.cuda.max_memory_allocated; CPU: peak RSS growth, measured per process).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from ckptlab.analyses.capture import (
    Capture,
    ReferenceSketch,
    sample_positions,
    sketch_hidden_states,
)
from ckptlab.analyses.registry import registered_analyses

SEQ, POS, D, D_MLP, VOCAB, LAYERS = 100, 500, 2048, 8192, 50304, 2


def synthetic_capture(device: str) -> Capture:
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    hidden = tuple(randn(SEQ, POS, D) + 0.1 * k for k in range(LAYERS + 1))
    norm = torch.nn.LayerNorm(D, device=device)
    capture = Capture(
        input_ids=torch.randint(0, VOCAB, (SEQ, POS), generator=g, device=device),
        hidden_states=hidden,
        pre_final_norm=randn(SEQ, POS, D),
        token_nll=randn(SEQ, POS - 1).abs(),
        mlp_activations=tuple(randn(SEQ, POS, D_MLP) for _ in range(LAYERS)),
        lm_head_weight=randn(VOCAB, D) / D**0.5,
        input_embedding_weight=randn(VOCAB, D),
        tokenizer_vocab_size=VOCAB,
        final_norm=norm,
    )
    positions = sample_positions(SEQ * POS, 4096, seed=0)
    capture.reference = ReferenceSketch(
        "ref", "ids", positions, sketch_hidden_states(hidden, positions)
    )
    return capture


PARAMS = {"head_rank_proxy": {"ranks": [64]}}  # one rank: each is a full [N, vocab] readout


def measure(name: str, capture: Capture, device: str) -> dict:
    definition = registered_analyses()[name]
    params = definition.params_model.model_validate(PARAMS.get(name, {}))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    rows = definition.run(capture, params)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "analysis": name,
        "device": device,
        "seconds": round(time.perf_counter() - started, 2),
        "working_mib": round((peak - base) / 2**20),
        "rows": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    capture = synthetic_capture(args.device)
    held = sum(
        t.numel() * t.element_size()
        for t in (
            *capture.hidden_states,
            *capture.mlp_activations,
            capture.pre_final_norm,
            capture.lm_head_weight,
            capture.input_embedding_weight,
        )
    )
    print(json.dumps({"capture_mib": round(held / 2**20), "tokens": SEQ * POS, "d_model": D}))
    for name in args.only or sorted(registered_analyses()):
        print(json.dumps(measure(name, capture, args.device)), flush=True)


if __name__ == "__main__":
    main()

"""ICL scoring cost: batched ``score_candidates`` against a naive loop (one forward pass per
prompt x candidate label), on a pico checkpoint from the local hub cache.

    python bench/icl_scoring.py --size m --shots 8 --n-test 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ckptlab.analyses.icl_tasks.scoring import score_candidates
from ckptlab.analyses.icl_tasks.tasks import TaskSpec, build_instance, builtin_task, make_prompts
from ckptlab.home import hub_cache_dir
from ckptlab.hub import fetch_snapshot, load_model, load_tokenizer


def naive(model, prompts, candidates) -> np.ndarray:
    out = np.zeros((len(prompts), len(candidates)))
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            for c, label in enumerate(candidates):
                logits = model(input_ids=torch.tensor([prompt + label])).logits[0]
                log_probs = logits.float().log_softmax(-1)
                out[i, c] = sum(
                    log_probs[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(label)
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="m")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    folder, _ = fetch_snapshot(
        f"pico/pico-{args.size}", "step1000", hub_cache_dir(), local_only=True
    )
    model = load_model(folder, "float32", "cpu", trust_remote_code=False)
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    for spec in (TaskSpec(data="category"), TaskSpec(data="category", variant="memo_random")):
        instance = build_instance(spec, builtin_task("category"), tokenizer, seed=0)
        candidates, (batch,) = make_prompts(instance, tokenizer, [args.shots], args.n_test, seed=0)
        started = time.perf_counter()
        fast = score_candidates(model, batch.prompts, candidates)
        fast_s = time.perf_counter() - started
        started = time.perf_counter()
        slow = naive(model, batch.prompts, candidates)
        slow_s = time.perf_counter() - started
        tokens = sorted({len(c) for c in candidates})
        print(
            f"{spec.label:22s} {len(batch.prompts)} prompts x {len(candidates)} labels "
            f"(label tokens {tokens}): batched {fast_s:.3f} s, naive {slow_s:.3f} s, "
            f"x{slow_s / fast_s:.1f}, max |diff| {np.abs(fast - slow).max():.1e}"
        )


if __name__ == "__main__":
    main()

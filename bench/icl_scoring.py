"""ICL scoring cost on a pico checkpoint from the local hub cache: ckptlab's ``score_candidates``
(each prompt read once; multi-token labels continue from the prompt's KV cache) against the
way it worked before (every multi-token candidate re-reads its prompt) and a naive loop (one
full forward pass per prompt x candidate label).

    python bench/icl_scoring.py                # pico-m step1000, 8 shots, 64 prompts
    python bench/icl_scoring.py --smoke        # pico-xs, 2 shots, 8 prompts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import provenance, table

from ckptlab.analyses.icl_tasks.scoring import score_candidates
from ckptlab.analyses.icl_tasks.tasks import (
    TaskSpec,
    build_instance,
    builtin_task,
    make_prompts,
)
from ckptlab.home import hub_cache_dir
from ckptlab.hub import fetch_snapshot, load_model, load_tokenizer


@torch.inference_mode()
def naive(model, prompts, candidates) -> np.ndarray:
    """One full forward pass per (prompt, label): the papers' loop."""
    out = np.zeros((len(prompts), len(candidates)))
    for i, prompt in enumerate(prompts):
        for c, label in enumerate(candidates):
            logits = model(input_ids=torch.tensor([prompt + label])).logits[0]
            log_probs = logits.float().log_softmax(-1)
            out[i, c] = sum(
                log_probs[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(label)
            )
    return out


@torch.inference_mode()
def reread(model, prompts, candidates, batch_tokens: int = 16_384) -> np.ndarray:
    """ckptlab's scoring before the KV cache: one batched sequence prompt + c[:-1] per
    (prompt, candidate), identical sequences run once (so single-token labels share one)."""
    reads: dict[tuple[int, ...], list[tuple[int, int, int, int]]] = {}
    for i, prompt in enumerate(prompts):
        for c, label in enumerate(candidates):
            reads.setdefault(tuple(prompt + label[:-1]), []).extend(
                (len(prompt) - 1 + t, token, i, c) for t, token in enumerate(label)
            )
    head = model.get_output_embeddings()
    scores = np.zeros((len(prompts), len(candidates)))
    ordered = sorted(reads, key=len, reverse=True)
    start = 0
    while start < len(ordered):
        longest = len(ordered[start])
        batch = ordered[start : start + max(1, batch_tokens // longest)]
        start += len(batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = torch.tensor(sequence)
        hidden = model.base_model(input_ids=ids).last_hidden_state  # [b, pos, d]
        picks = [(row, *read) for row, sequence in enumerate(batch) for read in reads[sequence]]
        rows, positions, tokens, prompt, candidate = (
            torch.tensor(x) for x in zip(*picks, strict=True)
        )
        log_probs = torch.log_softmax(head(hidden[rows, positions]).float(), -1)  # [reads, V]
        token_lp = log_probs[torch.arange(len(tokens)), tokens].double().numpy()
        np.add.at(scores, (prompt.numpy(), candidate.numpy()), token_lp)
    return scores


def _timed(fn, *args) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def run(smoke: bool = False, size: str = "m", shots: int = 8, n_test: int = 64) -> str:
    revision = "step1000"
    if smoke:  # step100 is also in the tests' smaller pico hub
        size, shots, n_test, revision = "xs", 2, 8, "step100"
    folder, _ = fetch_snapshot(f"pico/pico-{size}", revision, hub_cache_dir(), local_only=True)
    model = load_model(folder, "float32", "cpu", trust_remote_code=False)
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    rows = []
    for spec in (TaskSpec(data="category"), TaskSpec(data="category", variant="memo_random")):
        instance = build_instance(spec, builtin_task("category"), tokenizer, seed=0)
        candidates, (batch,) = make_prompts(instance, tokenizer, [shots], n_test, seed=0)
        score_candidates(model, batch.prompts[:2], candidates)  # warm-up
        fast, fast_s = _timed(score_candidates, model, batch.prompts, candidates)
        old, old_s = _timed(reread, model, batch.prompts, candidates)
        slow, slow_s = _timed(naive, model, batch.prompts, candidates)
        lengths = sorted({len(c) for c in candidates})
        rows.append(
            [
                spec.label,
                f"{len(batch.prompts)} x {len(candidates)}",
                ", ".join(map(str, lengths)),
                f"{fast_s:.3f}",
                f"{old_s:.3f}",
                f"{slow_s:.3f}",
                f"x{old_s / fast_s:.1f}",
                f"x{slow_s / fast_s:.1f}",
                f"{max(np.abs(fast - slow).max(), np.abs(fast - old).max()):.1e}",
            ]
        )
    command = "python bench/icl_scoring.py" + (" --smoke" if smoke else "")
    return "\n\n".join(
        [
            "## ICL scoring: each prompt read once (KV cache) against re-reading it",
            provenance(command),
            f"pico-{size} at {revision}, {n_test} prompts with {shots} demonstrations, the "
            "candidate labels of the category task. *kv cache* = ckptlab's `score_candidates`; "
            "*re-read* = its previous form (one sequence prompt + label per multi-token "
            "candidate); *naive* = one full forward pass per prompt x label. Seconds on the "
            "second call (one warm-up).",
            table(
                [
                    "task",
                    "prompts x labels",
                    "label tokens",
                    "kv cache s",
                    "re-read s",
                    "naive s",
                    "vs re-read",
                    "vs naive",
                    "max abs diff",
                ],
                rows,
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--size", default="m")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=64)
    args = parser.parse_args()
    print(run(args.smoke, args.size, args.shots, args.n_test))


if __name__ == "__main__":
    main()

"""Batched scoring of candidate labels: log p(label | prompt), summed over the label's tokens.

Each prompt is read ONCE. The prompt pass (prompts right-padded; a causal model never looks
right, so the real positions are exact) gives every candidate's first token at the prompt's
last position, which is all single-token labels need. Labels of two or more tokens continue
from the prompt's KV cache: the cache of each prompt is repeated once per multi-token
candidate and only the label tokens ``c[:-1]`` are run, with an attention mask that hides the
prompt's padding and position ids that continue from the prompt's true length. Before this,
each multi-token candidate re-read the whole prompt (6 candidates: 6 prompt passes). The LM
head is applied only at the read positions.

Owns: ``score_candidates``. Must not: build prompts or choose candidates (``tasks.py``), or
import torch at module level (``ckptlab.lazy``).
"""

from __future__ import annotations

import numpy as np

from ckptlab.lazy import LazyModule, inference_mode, torch

transformers = LazyModule("transformers")


@inference_mode
def score_candidates(
    model,
    prompts: list[list[int]],
    candidates: list[list[int]],
    batch_tokens: int = 16_384,
) -> np.ndarray:
    """[n_prompts, n_candidates] float64: sum_t log p(c_t | prompt_i, c_<t)."""
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty: nothing to condition the label on")
    head = model.get_output_embeddings()
    device = head.weight.device
    first_tokens = torch.tensor([label[0] for label in candidates], device=device)
    multi = [c for c, label in enumerate(candidates) if len(label) > 1]  # continue from cache
    longest_label = max(len(label) for label in candidates)
    scores = torch.zeros(len(prompts), len(candidates), dtype=torch.float64)

    def log_probs(hidden: torch.Tensor) -> torch.Tensor:  # [reads, d] -> [reads, vocab]
        return torch.log_softmax(head(hidden).float(), dim=-1)

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    start = 0
    while start < len(order):
        longest = len(prompts[order[start]])
        # Tokens held at once: the prompt pass, and the continuation's cache + its label tokens.
        per_prompt = longest + len(multi) * (longest + longest_label - 1)
        size = max(1, batch_tokens // per_prompt)
        batch = order[start : start + size]
        start += size
        lengths = torch.tensor([len(prompts[i]) for i in batch], device=device)  # [b]
        ids = torch.zeros(len(batch), longest, dtype=torch.long)  # [b, pos], right-padded
        for row, i in enumerate(batch):
            ids[row, : len(prompts[i])] = torch.tensor(prompts[i])
        cache = transformers.DynamicCache() if multi else None
        out = model.base_model(
            input_ids=ids.to(device), past_key_values=cache, use_cache=bool(multi)
        )
        rows = torch.arange(len(batch), device=device)
        last = out.last_hidden_state[rows, lengths - 1]  # [b, d]
        first = log_probs(last)[:, first_tokens]  # [b, n_candidates]
        scores[batch] += first.double().cpu()
        if not multi:
            continue

        # Continuation: row (prompt r, candidate k) reads label tokens c_k[:-1] after prompt r.
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(multi))  # [b * n_multi, heads, longest, d_head]
        steps = longest_label - 1
        follow = torch.zeros(len(batch) * len(multi), steps, dtype=torch.long)  # right-padded
        for k, c in enumerate(multi):
            follow[k :: len(multi), : len(candidates[c]) - 1] = torch.tensor(candidates[c][:-1])
        prompt_lengths = lengths.repeat_interleave(len(multi))  # [b * n_multi]
        seen = torch.arange(longest, device=device)[None, :] < prompt_lengths[:, None]
        mask = torch.cat([seen, torch.ones(len(seen), steps, dtype=torch.bool, device=device)], 1)
        positions = prompt_lengths[:, None] + torch.arange(steps, device=device)[None, :]
        hidden = model.base_model(
            input_ids=follow.to(device),
            attention_mask=mask.long(),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state  # [b * n_multi, steps, d]
        read_rows, read_steps, tokens, targets = [], [], [], []
        for row, i in enumerate(batch):
            for k, c in enumerate(multi):
                for t in range(1, len(candidates[c])):  # token t is read after token t - 1
                    read_rows.append(row * len(multi) + k)
                    read_steps.append(t - 1)
                    tokens.append(candidates[c][t])
                    targets.append((i, c))
        picked = hidden[
            torch.tensor(read_rows, device=device), torch.tensor(read_steps, device=device)
        ]  # [reads, d]
        token_lp = log_probs(picked)[
            torch.arange(len(tokens), device=device), torch.tensor(tokens, device=device)
        ]
        prompt_index = torch.tensor([t[0] for t in targets])
        candidate_index = torch.tensor([t[1] for t in targets])
        scores.index_put_((prompt_index, candidate_index), token_lp.double().cpu(), accumulate=True)
    return scores.numpy()

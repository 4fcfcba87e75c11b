"""Batched scoring of candidate labels: log p(label | prompt), summed over the label's tokens.

For prompt i and candidate c the model reads the sequence prompt_i + c[:-1] and the label's
tokens are predicted at its last len(c) positions. Sequences that coincide are run once: with
single-token labels every candidate of a prompt shares one sequence, the prompt itself. Padding
goes on the right, where a causal model never looks, so no attention mask is needed and the
read positions are exact. The LM head is applied only at the read positions.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def score_candidates(
    model,
    prompts: list[list[int]],
    candidates: list[list[int]],
    batch_tokens: int = 16_384,
) -> np.ndarray:
    """[n_prompts, n_candidates] float64: sum_t log p(c_t | prompt_i, c_<t)."""
    # sequence -> reads (position, token, prompt, candidate)
    reads: dict[tuple[int, ...], list[tuple[int, int, int, int]]] = {}
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty: nothing to condition the label on")
        for c, label in enumerate(candidates):
            sequence = tuple(prompt + label[:-1])
            reads.setdefault(sequence, []).extend(
                (len(prompt) - 1 + t, token, i, c) for t, token in enumerate(label)
            )

    head = model.get_output_embeddings()
    device = head.weight.device
    scores = torch.zeros(len(prompts), len(candidates), dtype=torch.float64)
    ordered = sorted(reads, key=len, reverse=True)  # similar lengths batch together
    start = 0
    while start < len(ordered):
        longest = len(ordered[start])
        size = max(1, batch_tokens // longest)
        batch = ordered[start : start + size]
        start += size
        ids = torch.zeros(len(batch), longest, dtype=torch.long)  # [b, pos], right-padded
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = torch.tensor(sequence)
        hidden = model.base_model(input_ids=ids.to(device)).last_hidden_state  # [b, pos, d]
        rows, positions, tokens, targets = [], [], [], []
        for row, sequence in enumerate(batch):
            for position, token, i, c in reads[sequence]:
                rows.append(row)
                positions.append(position)
                tokens.append(token)
                targets.append((i, c))
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
        log_probs = torch.log_softmax(head(picked).float(), dim=-1)  # [reads, vocab]
        token_lp = log_probs[
            torch.arange(len(tokens), device=device), torch.tensor(tokens, device=device)
        ]
        prompt_index = torch.tensor([t[0] for t in targets])
        candidate_index = torch.tensor([t[1] for t in targets])
        scores.index_put_((prompt_index, candidate_index), token_lp.double().cpu(), accumulate=True)
    return scores.numpy()

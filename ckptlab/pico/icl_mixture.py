"""Structured input -> label sequences mixed into pico's training data, so that its
checkpoints have in-context learning to find. Two kinds of rows:

- **Random mappings** (``icl_sequences``): K input words (label words of the built-in tasks)
  each mapped to a random single-token word, fresh per row, written as lines
  ``template(input, label)``. A label is predictable only by finding its input earlier in the
  row (in-context retrieval); no built-in task's answer is ever in them.
- **A task family** (``task_family_sequences``): the built-in ``category`` task (word -> its
  category word) under one of FAMILY_SIZE fixed relabelings of the category words: the natural
  one or a derangement, one relabeling per row. A model that has learned the family cannot
  tell from a lone query which relabeling is meant; demonstrations tell it. That is ICL as task
  selection, hypothesis 1 of Li et al. (ACL 2024), and what the ``category`` probe measures.

Measured while building this (notes of issue 4): with random mappings alone, at 4-8 of 16 rows
and with or without a curriculum of repeated token segments, pico-s's retrieval stayed at chance
once averaged over label seeds (the segments taught periodic copying, not content matching).
With 8 rows of the family, pico-m's ``category`` accuracy from step 600 on is 0.44 zero-shot
and 0.81 / 0.94 / 0.98 with 1 / 2 / 8 demonstrations (chance 1/6).

Owns: the ICL rows in pico's training data (``icl_sequences``, ``task_family_sequences``). Must
not: put a built-in task's answer in a random mapping, or change without bumping
``build.BUILD_VERSION`` (new rows, new weights).
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from ckptlab.analyses.icl_tasks.builtin_data import CATEGORY_WORDS, LABEL_MEMO, SENTIMENT_PHRASES
from ckptlab.analyses.icl_tasks.tasks import DEFAULT_TEMPLATE, label_token_pool, render

FAMILY_SIZE = 2  # the natural labelling of the category task and one derangement of it
FAMILY_SEED = 20241122  # constant: the family is the same in every build


def mixture_inputs() -> list[str]:
    """The input words of the random-mapping rows: the label words of the built-in
    classification tasks and their label-memo words."""
    words = set(CATEGORY_WORDS) | set(SENTIMENT_PHRASES)
    for kinds in LABEL_MEMO.values():
        for mapping in kinds.values():
            words |= set(mapping.values())
    return sorted(words)


def icl_sequences(
    tokenizer: PreTrainedTokenizerBase,
    count: int,
    seq_len: int,
    seed: int,
    template: str = DEFAULT_TEMPLATE,
    min_pairs: int = 2,
    max_pairs: int = 8,
) -> np.ndarray:
    """``count`` rows [count, seq_len] int64, each EOS + lines of one fresh random mapping."""
    rng = np.random.default_rng(seed)
    inputs = mixture_inputs()
    labels = label_token_pool(tokenizer)
    texts = []
    for _ in range(count):
        k = int(rng.integers(min_pairs, max_pairs + 1))
        chosen = [inputs[i] for i in rng.choice(len(inputs), size=k, replace=False)]
        mapped = [labels[i] for i in rng.choice(len(labels), size=k, replace=False)]
        # Lines are a few tokens each; seq_len lines always overfill the window.
        order = rng.integers(0, k, size=seq_len // 2)
        texts.append("".join(render(template, chosen[j], mapped[j]) for j in order))
    return _rows(tokenizer, texts, seq_len)


def relabelings(n_labels: int, count: int) -> list[list[int]]:
    """``count`` relabelings of n_labels classes: the identity first, then derangements (no
    class keeps its label) drawn from FAMILY_SEED."""
    rng = np.random.default_rng(FAMILY_SEED)
    found = [list(range(n_labels))]
    while len(found) < count:
        candidate = rng.permutation(n_labels).tolist()
        if all(candidate[i] != i for i in range(n_labels)) and candidate not in found:
            found.append(candidate)
    return found


def task_family_sequences(
    tokenizer: PreTrainedTokenizerBase,
    count: int,
    seq_len: int,
    seed: int,
    template: str = DEFAULT_TEMPLATE,
) -> np.ndarray:
    """``count`` rows [count, seq_len]: EOS + lines ``template(word, category word)`` of the
    category task under one relabeling of the family, drawn per row."""
    rng = np.random.default_rng(seed)
    categories = sorted(CATEGORY_WORDS)
    family = relabelings(len(categories), FAMILY_SIZE)
    texts = []
    for _ in range(count):
        relabel = family[int(rng.integers(FAMILY_SIZE))]
        lines = []
        for _ in range(seq_len // 2):
            c = int(rng.integers(len(categories)))
            words = CATEGORY_WORDS[categories[c]]
            word = words[int(rng.integers(len(words)))]
            lines.append(render(template, word, categories[relabel[c]]))
        texts.append("".join(lines))
    return _rows(tokenizer, texts, seq_len)


def _rows(tokenizer, texts: list[str], seq_len: int) -> np.ndarray:
    """[len(texts), seq_len] int64: EOS + each text's tokens, cut to seq_len."""
    eos = tokenizer.eos_token_id
    rows = np.empty((len(texts), seq_len), dtype=np.int64)
    for row, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        ids = [eos, *ids]
        if len(ids) < seq_len:
            raise ValueError(f"an ICL sequence has {len(ids)} < {seq_len} tokens")
        rows[row] = ids[:seq_len]
    return rows

"""Structured input -> output sequences under random mappings, mixed into pico's training data
so that its checkpoints have in-context learning to find.

Each sequence draws K distinct input words (label words of the built-in ICL tasks), maps each
to a random label token, fresh per sequence, and writes lines ``template(input, label)`` drawn
from those K pairs until the sequence is full. A mapping is never reused, so the only way to
predict a label is to find the same input earlier in the context: the model can learn
in-context retrieval, never the answers of a built-in task (label-memo tasks draw their random
labels per seed at evaluation).

Repeated random segments (``repeated_segments``) come first in training, as a curriculum for
the copying that retrieval needs.
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from ckptlab.icl.builtin_data import CATEGORY_WORDS, LABEL_MEMO, SENTIMENT_PHRASES
from ckptlab.icl.tasks import DEFAULT_TEMPLATE, label_token_pool, render


def mixture_inputs() -> list[str]:
    """The input words the mixture draws from: the label words of the built-in classification
    tasks and their label-memo words (a small set keeps the induction warm-up short)."""
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
    """``count`` token sequences [count, seq_len] int64, each EOS + lines of one random mapping."""
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


REPEAT_MIN, REPEAT_MAX = 2, 8


def repeated_segments(alphabet: np.ndarray, count: int, seq_len: int, seed: int) -> np.ndarray:
    """``count`` rows [count, seq_len] int64: a random segment of REPEAT_MIN..REPEAT_MAX tokens
    of ``alphabet`` repeated to the end of the row. Every token after the first copy is
    predictable only by finding its earlier occurrence: the dense signal that makes induction
    heads form (Olsson et al. 2022), which retrieval in the mapping sequences builds on. A
    small alphabet (the mapping sequences' own tokens) makes them form within a few hundred
    steps in pico-s instead of ~900 over the whole vocabulary (measured)."""
    rng = np.random.default_rng(seed)
    rows = np.empty((count, seq_len), dtype=np.int64)
    for row in range(count):
        segment = rng.choice(alphabet, size=int(rng.integers(REPEAT_MIN, REPEAT_MAX + 1)))
        rows[row] = np.resize(segment, seq_len)
    return rows

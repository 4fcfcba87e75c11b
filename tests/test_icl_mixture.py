"""The pico ICL mixture: each sequence is one consistent random mapping; segments repeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptlab.hub import fetch_snapshot, load_tokenizer
from ckptlab.icl.tasks import label_token_pool
from ckptlab.pico.icl_mixture import icl_sequences, mixture_inputs, repeated_segments


def test_mapping_sequences_are_consistent_random_mappings(pico_hub: Path):
    folder, _ = fetch_snapshot("pico/pico-s", "step0", pico_hub, local_only=True)
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    rows = icl_sequences(tokenizer, 40, 128, seed=0)
    assert rows.shape == (40, 128) and (rows[:, 0] == tokenizer.eos_token_id).all()
    labels, inputs = set(label_token_pool(tokenizer)), set(mixture_inputs())
    mappings = []
    for row in rows:
        lines = tokenizer.decode(row[1:]).split("\n")[:-1]  # the last line may be cut
        mapping: dict[str, str] = {}
        for line in lines:
            word, label = line.split(" ")
            assert word in inputs and label in labels
            assert mapping.setdefault(word, label) == label  # one label per input in a row
        assert 2 <= len(mapping) <= 8 and len(set(mapping.values())) == len(mapping)
        mappings.append(mapping)
    # Fresh per sequence: the same input gets different labels across rows.
    seen: dict[str, set[str]] = {}
    for mapping in mappings:
        for word, label in mapping.items():
            seen.setdefault(word, set()).add(label)
    assert max(len(v) for v in seen.values()) > 1


def test_repeated_segments_repeat_with_a_period():
    alphabet = np.arange(10, 50)
    rows = repeated_segments(alphabet, 20, 64, seed=1)
    for row in rows:
        assert np.isin(row, alphabet).all()
        period = next(p for p in range(2, 9) if (row[p:] == row[:-p]).all())
        assert 2 <= period <= 8

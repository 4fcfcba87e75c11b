"""The pico ICL mixture: random-mapping rows are consistent and fresh; task-family rows follow
one fixed relabeling of the category task each."""

from __future__ import annotations

from pathlib import Path

from ckptlab.analyses.icl_tasks.builtin_data import CATEGORY_WORDS
from ckptlab.analyses.icl_tasks.tasks import label_token_pool
from ckptlab.hub import fetch_snapshot, load_tokenizer
from ckptlab.pico.icl_mixture import (
    FAMILY_SIZE,
    icl_sequences,
    mixture_inputs,
    relabelings,
    task_family_sequences,
)


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


def test_task_family_rows_follow_one_fixed_relabeling(pico_hub: Path):
    folder, _ = fetch_snapshot("pico/pico-s", "step0", pico_hub, local_only=True)
    tokenizer = load_tokenizer(folder, trust_remote_code=False)
    categories = sorted(CATEGORY_WORDS)
    family = relabelings(len(categories), FAMILY_SIZE)
    assert family[0] == list(range(len(categories)))  # the natural labelling is a member
    for relabel in family[1:]:
        assert sorted(relabel) == family[0]  # a bijection of the category words ...
        assert all(relabel[i] != i for i in range(len(categories)))  # ... moving every one
    category_of = {w: c for c, ws in CATEGORY_WORDS.items() for w in ws}
    used = []
    for row in task_family_sequences(tokenizer, 30, 128, seed=0):
        assert row[0] == tokenizer.eos_token_id
        pairs = [line.split(" ") for line in tokenizer.decode(row[1:]).split("\n")[:-1]]
        matching = [
            k
            for k, relabel in enumerate(family)
            if all(
                label == categories[relabel[categories.index(category_of[word])]]
                for word, label in pairs
            )
        ]
        assert len(matching) == 1, pairs  # every line of a row follows the same relabeling
        used.append(matching[0])
    assert set(used) == set(range(FAMILY_SIZE))

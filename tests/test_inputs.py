"""Input sets: fixed, seeded, non-overlapping token windows with content ids."""

from __future__ import annotations

import numpy as np
import pytest
from huggingface_hub import snapshot_download

from ckptlab.hub import load_tokenizer
from ckptlab.inputs import InputSetError, materialize, token_ids_id
from ckptlab.spec import InputSet


@pytest.fixture(scope="module")
def tokenizer(pico_hub):
    from pathlib import Path

    folder = snapshot_download(
        "pico/pico-xs", revision="step0", cache_dir=pico_hub, local_files_only=True
    )
    return load_tokenizer(Path(folder))


def test_file_input_sets_cut_non_overlapping_windows_of_the_stream(tmp_path, tokenizer):
    # Random letters: every 20-token window occurs once, so its position is unambiguous.
    letters = np.random.default_rng(0).choice(list("abcdefghij "), size=20_000)
    text = "".join(letters)
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    spec = InputSet(name="mine", file=path, num_sequences=5, seq_len=20, seed=3)
    inputs = materialize(spec, tokenizer, tokenizer_of="pico/pico-xs")
    stream = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert inputs.token_ids.shape == (5, 20)
    starts = []
    for window in inputs.token_ids:
        # Each window is a slice of the stream at a multiple of seq_len.
        matches = [s for s in range(len(stream) - 19) if stream[s : s + 20] == list(window)]
        assert len(matches) == 1 and matches[0] % 20 == 0, matches
        starts.append(matches[0])
    assert starts == sorted(set(starts))
    assert inputs.source == f"file:{path}"
    assert inputs.input_set_id == token_ids_id(inputs.token_ids)


def test_same_seed_same_windows_other_seed_other_windows(tokenizer):
    spec = InputSet(name="p", builtin="pydoc_topics", num_sequences=4, seq_len=32, seed=0)
    a = materialize(spec, tokenizer, "m")
    b = materialize(spec.model_copy(update={"name": "renamed"}), tokenizer, "m")
    c = materialize(spec.model_copy(update={"seed": 1}), tokenizer, "m")
    assert np.array_equal(a.token_ids, b.token_ids)
    assert a.input_set_id == b.input_set_id  # the id is the content, not the name
    assert a.input_set_id != c.input_set_id
    train = materialize(spec.model_copy(update={"split": "train"}), tokenizer, "m")
    assert not np.array_equal(a.token_ids, train.token_ids)


def test_a_corpus_too_small_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "tiny.txt"
    path.write_text("def f(x): return x\n")
    with pytest.raises(InputSetError, match=r"input_sets.tiny: file:.* has \d+ tokens"):
        materialize(InputSet(name="tiny", file=path, num_sequences=2, seq_len=64), tokenizer, "m")

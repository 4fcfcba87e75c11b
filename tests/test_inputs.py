"""Input sets: fixed, seeded, non-overlapping token windows with content ids."""

from __future__ import annotations

from pathlib import Path

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


def lay_out_dataset(cache: Path, repo: str, files: dict[str, list[str | None]]) -> str:
    """A dataset revision in the hub cache, as huggingface_hub writes it: refs/main -> commit,
    snapshots/<commit>/<files>. Values are the rows' ``text`` field, written as parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    commit = "d" * 40
    storage = cache / f"datasets--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)  # no trailing newline, as the hub writes
    for name, rows in files.items():
        path = storage / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": rows, "other": [1] * len(rows)}), path)
    return commit


def test_hub_dataset_input_sets_read_the_split_from_the_hub_cache(tmp_path, tokenizer,
                                                                   monkeypatch):  # fmt: skip
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    lines = [f"line {i}: the {['cat', 'dog', 'fox'][i % 3]} ran {i} times." for i in range(300)]
    commit = lay_out_dataset(
        cache,
        "org/wiki",
        {
            "wiki-raw/validation-00000-of-00001.parquet": [*lines[:150], "", None],
            "wiki-raw/validation-00001-of-00001.parquet": lines[150:],
            "wiki-raw/train-00000-of-00001.parquet": ["never read"] * 50,
            "other/validation-00000-of-00001.parquet": ["nor this"] * 50,
        },
    )
    corpus = {"repo": "org/wiki", "config": "wiki-raw", "split": "validation"}
    spec = InputSet(name="wiki", hub=corpus, num_sequences=3, seq_len=16, seed=0)
    inputs = materialize(spec, tokenizer, "m")
    assert inputs.source == f"hub:org/wiki@{commit[:12]}/wiki-raw/validation:text"
    eos = [tokenizer.eos_token_id]
    stream = [i for t in lines for i in tokenizer(t, add_special_tokens=False)["input_ids"] + eos]
    for window in inputs.token_ids.tolist():
        starts = [s for s in range(0, len(stream) - 15, 16) if stream[s : s + 16] == window]
        assert len(starts) == 1  # a window of the validation split's rows, in file order
    # The content is the id: other rows, another input set.
    other = tmp_path / "other-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    lay_out_dataset(other, "org/wiki", {"wiki-raw/validation-0.parquet": lines[::-1]})
    assert materialize(spec, tokenizer, "m").input_set_id != inputs.input_set_id


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ({"repo": "org/absent"}, "dataset org/absent@main is not in the local hub cache"),
        ({"repo": "org/wiki", "split": "test"}, "no parquet, JSON or text file matches"),
        ({"repo": "org/wiki", "config": "c", "field": "body"}, "body"),
    ],
)
def test_a_bad_hub_dataset_is_one_line(tmp_path, tokenizer, monkeypatch, corpus, message):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    lay_out_dataset(cache, "org/wiki", {"c/validation-0.parquet": ["some text here"] * 99})
    spec = InputSet(name="w", hub=corpus, num_sequences=1, seq_len=8)
    with pytest.raises(InputSetError) as caught:
        materialize(spec, tokenizer, "m")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("input_sets.w.hub: ")


def test_windows_come_back_from_the_cache_exactly_and_only_for_the_same_inputs(
    tmp_path, pico_hub, tokenizer, monkeypatch
):
    """`plan` keeps each input set's windows, keyed by what they depend on; a second plan
    reads them without a tokenizer. A changed text or tokenizer file is a miss, a new name is
    not; a damaged entry is recomputed."""
    import shutil

    import ckptlab.hub
    from ckptlab.inputs import materialize_all, tokenizer_identity

    hub_folder = Path(
        snapshot_download(
            "pico/pico-xs", revision="step0", cache_dir=pico_hub, local_files_only=True
        )
    )
    # A local copy under a `.cache` folder, as the default $CKPTLAB_HOME (~/.cache/ckptlab)
    # is: plain files, hashed by content.
    folder = tmp_path / ".cache" / "tokenizer"
    shutil.copytree(hub_folder, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    names = [name for name, _ in tokenizer_identity(folder)]
    assert "tokenizer.json" in names and "config.json" in names
    assert "model.safetensors" not in [name for name, _ in tokenizer_identity(hub_folder)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"w{i % 97}" for i in range(5_000)))
    spec = InputSet(name="c", file=corpus, num_sequences=3, seq_len=16, seed=1)
    cache = tmp_path / "cache"
    fresh = materialize(spec, tokenizer, "m")
    for source in (hub_folder, folder):  # symlinks to hub blobs, and plain files
        [first] = materialize_all([spec], source, "m", cache).values()
        assert np.array_equal(first.token_ids, fresh.token_ids)
    entries = len(list(cache.iterdir()))  # 1: pico's blobs are named by their sha256

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("a cached input set loaded a tokenizer")

    other = spec.model_copy(update={"name": "other"})
    with monkeypatch.context() as patched:
        patched.setattr(ckptlab.hub, "load_tokenizer", no_tokenizer)
        [again] = materialize_all([other], folder, "m", cache).values()
    assert np.array_equal(again.token_ids, fresh.token_ids)
    assert (again.name, again.input_set_id) == ("other", fresh.input_set_id)
    assert again.source == fresh.source

    corpus.write_text(" ".join(f"v{i % 89}" for i in range(5_000)))  # another text
    [changed] = materialize_all([spec], folder, "m", cache).values()
    assert len(list(cache.iterdir())) == entries + 1
    assert np.array_equal(changed.token_ids, materialize(spec, tokenizer, "m").token_ids)
    assert changed.input_set_id != fresh.input_set_id

    # Another tokenizer file (here a key AutoTokenizer ignores): another entry, never the
    # first tokenizer's windows.
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"ckptlab_test": 1, ', 1))
    materialize_all([spec], folder, "m", cache)
    assert len(list(cache.iterdir())) == entries + 2

    for entry in cache.iterdir():  # damaged entries: recomputed, never an error
        entry.write_bytes(b"not an array")
    [mended] = materialize_all([spec], folder, "m", cache).values()
    assert np.array_equal(mended.token_ids, changed.token_ids)

    # A tokenizer that runs remote code is never cached (its code may live in another repo).
    before = sorted(cache.iterdir())
    materialize_all([spec], folder, "m", cache, trust_remote_code=True)
    assert sorted(cache.iterdir()) == before

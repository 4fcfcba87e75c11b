"""ICL task construction: variants, compositions, prompts (the pico tokenizer, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ckptlab.analyses.icl_tasks import builtin_data as B
from ckptlab.analyses.icl_tasks.tasks import (
    TaskDataError,
    TaskSpec,
    build_instance,
    builtin_task,
    compose,
    load_task_data,
    make_prompts,
    vocab_permutation,
)
from ckptlab.hub import fetch_snapshot, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(pico_hub: Path):
    folder, _ = fetch_snapshot("pico/pico-s", "step100", pico_hub, local_only=True)
    return load_tokenizer(folder, trust_remote_code=False)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_vocab_permutation_is_a_bijection_with_fixed_points():
    fixed = {0, 5, 17, 99}
    permutation = vocab_permutation(100, fixed, seed=3)
    assert sorted(permutation.tolist()) == list(range(100))
    assert all(permutation[i] == i for i in fixed)
    assert sum(permutation[i] != i for i in range(100) if i not in fixed) > 80  # really shuffled


@pytest.mark.parametrize("data", ["category", "sentiment"])
def test_permuted_vocab_leaves_label_tokens_fixed(tokenizer, data: str):
    spec = TaskSpec(data=data, variant="permuted_vocab")
    instance = build_instance(spec, builtin_task(data), tokenizer, seed=1)
    permutation = instance.permutation
    assert sorted(permutation.tolist()) == list(range(len(tokenizer)))
    label_tokens = {t for c in instance.candidates for t in _ids(tokenizer, " " + c)}
    assert label_tokens and all(permutation[t] == t for t in label_tokens)
    assert permutation[tokenizer.eos_token_id] == tokenizer.eos_token_id
    # Every other prompt token is moved: the prompts really are permuted.
    _, (batch,) = make_prompts(instance, tokenizer, [4], 8, seed=1)
    plain = tokenizer(batch.texts, add_special_tokens=False)["input_ids"]
    for prompt, original in zip(batch.prompts, plain, strict=True):
        assert prompt == permutation[np.asarray(original)].tolist()
        moved = [t for t in original if t not in label_tokens]
        assert sum(permutation[t] != t for t in moved) >= 0.9 * len(moved)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("variant", ["random_labels", "memo_random"])
def test_random_labels_never_collide_with_label_words(tokenizer, seed: int, variant: str):
    data = builtin_task("category")
    originals = sorted({e.label for e in data.examples})
    instance = build_instance(TaskSpec(data="category", variant=variant), data, tokenizer, seed)
    assert len(instance.candidates) == len(originals) == len(set(instance.candidates))
    original_first_tokens = {_ids(tokenizer, " " + o)[0] for o in originals}
    for label in instance.candidates:
        assert label not in originals
        ids = _ids(tokenizer, " " + label)
        assert len(ids) == 1 and ids[0] not in original_first_tokens
    if variant == "random_labels":  # same inputs, labels renamed consistently per class
        renamed = {}
        for e_orig, e_new in zip(data.examples, _all_examples(instance), strict=False):
            renamed.setdefault(e_orig.label, set()).add(e_new.label)
        assert all(len(v) == 1 for v in renamed.values())


def _all_examples(instance):
    by_input = {e.input: e for e in instance.pool + instance.test}
    return [by_input[e.input] for e in builtin_task("category").examples]


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_synonym_compositions_are_m_steps(m: int):
    step = {e.input: e.label for e in builtin_task("synonym").examples}
    composed = compose(builtin_task("synonym").examples, m)
    assert len(composed) == sum(len(chain) - m for chain in B.SYNONYM_CHAINS)
    for e in composed:
        chain = next(c for c in B.SYNONYM_CHAINS if e.input in c)
        assert e.label == chain[chain.index(e.input) + m]
        walk = [e.input]
        for _ in range(m):
            walk.append(step[walk[-1]])
        assert walk[-1] == e.label and len(set(walk)) == m + 1  # m distinct steps, no return


def test_next_number_composition_adds_m():
    composed = compose(builtin_task("next_number").examples, 3)
    assert all(int(e.label) == int(e.input) + 3 for e in composed)
    assert len(composed) == B.NUMBER_MAX - 2
    with pytest.raises(TaskDataError, match="outputs are not inputs"):
        compose(builtin_task("country_capital").examples, 2)


def test_prompts_are_nested_reproducible_and_split(tokenizer):
    spec = TaskSpec(data="category", template="Word: {input}\nClass: {label}\n\n")
    instance = build_instance(spec, builtin_task("category"), tokenizer, seed=0)
    assert not {e.input for e in instance.pool} & {e.input for e in instance.test}
    candidates, batches = make_prompts(instance, tokenizer, [0, 2, 8], 20, seed=0)
    again = make_prompts(instance, tokenizer, [0, 2, 8], 20, seed=0)[1]
    other = make_prompts(instance, tokenizer, [0, 2, 8], 20, seed=1)[1]
    assert [b.prompts for b in batches] == [b.prompts for b in again]
    assert batches[2].prompts != other[2].prompts
    assert candidates == [_ids(tokenizer, " " + c) for c in instance.candidates]
    zero, two, eight = batches
    for j in range(20):
        query = zero.query_inputs[j]
        assert zero.texts[j] == f"Word: {query}\nClass:"
        assert eight.demo_inputs[j][:2] == two.demo_inputs[j]  # nested demonstrations
        demos = "".join(
            f"Word: {x}\nClass: {y}\n\n"
            for x, y in zip(eight.demo_inputs[j], eight.demo_labels[j], strict=True)
        )
        assert eight.texts[j] == demos + f"Word: {query}\nClass:"
        assert eight.prompts[j] == _ids(tokenizer, eight.texts[j])
        gold = instance.candidates[eight.gold[j]]
        assert B.CATEGORY_WORDS[gold].count(query) == 1
        assert not eight.query_seen[j]  # disjoint split: the query is never a demonstration


def test_label_memo_tasks(tokenizer):
    data = builtin_task("sentiment")
    antonym = build_instance(TaskSpec(data="sentiment", variant="memo_antonym"), data, tokenizer, 0)
    assert {(e.input, e.label) for e in antonym.test} == {
        ("negative", "positive"),
        ("positive", "negative"),
    }
    assert antonym.pool == antonym.test and antonym.shared_inputs
    with pytest.raises(TaskDataError, match="no antonym"):
        build_instance(
            TaskSpec(data="category", variant="memo_antonym"),
            builtin_task("category"),
            tokenizer,
            0,
        )


def test_template_and_name_validation():
    with pytest.raises(ValidationError, match="exactly once"):
        TaskSpec(data="category", template="{input} {input} {label}")
    with pytest.raises(ValidationError, match="before"):
        TaskSpec(data="category", template="{label} {input}")
    with pytest.raises(ValidationError):
        TaskSpec(data="no_such_task")
    assert TaskSpec(data="synonym", compose=3).label == "synonym/m3"
    assert TaskSpec(data="category", variant="random_labels").label == "category/random_labels"


def test_jsonl_task_data(tmp_path: Path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": f"review {i}", "y": "good" if i % 2 else "bad"} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = TaskSpec.model_validate(
        {"data": {"file": str(path), "input_field": "text", "label_field": "y"}}
    )
    data = load_task_data(spec)
    assert spec.label == "reviews" and len(data.examples) == 12
    assert data.examples[1].input == "review 1" and data.examples[1].label == "good"
    before = data.fingerprint()
    path.write_text(path.read_text().replace("review 3", "review three"))
    assert load_task_data(spec).fingerprint() != before
    path.write_text('{"text": "x"}\n')
    with pytest.raises(TaskDataError, match=r"reviews\.jsonl:1: KeyError"):
        load_task_data(spec)


def test_hub_dataset_task_reads_the_hub_cache(tmp_path: Path):
    """A hub dataset task goes through hf_hub_download; offline it is served from the cache
    (the standard layout: refs/main -> snapshots/<commit>/<file>), and a dataset that is not
    there is a one-line error."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "datasets--someone--reviews"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    rows = [{"input": f"text {i}", "label": "a" if i % 3 else "b"} for i in range(9)]
    (snapshot / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = TaskSpec.model_validate({"data": {"hub": "someone/reviews", "filename": "test.jsonl"}})
    data = load_task_data(spec, hub_dir=tmp_path)
    assert [e.label for e in data.examples] == [r["label"] for r in rows]
    assert spec.label == "test"
    missing = TaskSpec.model_validate({"data": {"hub": "someone/absent", "filename": "x.jsonl"}})
    with pytest.raises(TaskDataError, match=r"dataset someone/absent/x\.jsonl"):
        load_task_data(missing, hub_dir=tmp_path)

"""ICL scoring and metrics against a naive per-example, per-label float64 implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ckptlab.analyses import get_analysis
from ckptlab.analyses.capture import Capture
from ckptlab.analyses.icl_tasks.baseline import bow_predict
from ckptlab.analyses.icl_tasks.scoring import score_candidates
from ckptlab.analyses.icl_tasks.tasks import TaskSpec, build_instance, builtin_task, make_prompts
from ckptlab.hub import fetch_snapshot, load_model, load_tokenizer


@pytest.fixture(scope="module")
def checkpoint(pico_hub: Path):
    folder, _ = fetch_snapshot("pico/pico-s", "step100", pico_hub, local_only=True)
    model = load_model(folder, "float32", "cpu", trust_remote_code=False)
    return model, load_tokenizer(folder, trust_remote_code=False)


def naive_scores(model, prompts, candidates) -> np.ndarray:
    """One full forward pass per (prompt, label), log-softmax in float64, a plain loop."""
    out = np.zeros((len(prompts), len(candidates)))
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            for c, label in enumerate(candidates):
                ids = torch.tensor([prompt + label])
                log_probs = model(input_ids=ids).logits[0].double().log_softmax(-1)
                out[i, c] = sum(
                    log_probs[len(prompt) - 1 + t, token].item() for t, token in enumerate(label)
                )
    return out


@pytest.mark.parametrize(
    ("spec", "batch_tokens"),
    [
        (TaskSpec(data="category"), 16_384),  # multi-token labels
        (TaskSpec(data="category", variant="memo_random"), 16_384),  # single-token labels
        (TaskSpec(data="country_capital", variant="permuted_vocab"), 300),  # many small batches
    ],
)
def test_batched_scoring_equals_naive(checkpoint, spec: TaskSpec, batch_tokens: int):
    model, tokenizer = checkpoint
    instance = build_instance(spec, builtin_task(spec.data), tokenizer, seed=0)
    candidates, batches = make_prompts(instance, tokenizer, [0, 3], 6, seed=0)
    for batch in batches:
        batched = score_candidates(model, batch.prompts, candidates, batch_tokens)
        np.testing.assert_allclose(
            batched, naive_scores(model, batch.prompts, candidates), atol=2e-4, rtol=0
        )


def test_icl_metrics_recomputed_from_naive_scores(checkpoint):
    model, tokenizer = checkpoint
    definition = get_analysis("icl")
    spec = TaskSpec(data="sentiment", name="sent")
    params = definition.params_model(tasks=[spec], shots=[0, 2], n_test=10, seeds=[3])
    values = definition.run(Capture(model=model, tokenizer=tokenizer), params)
    got = {(v.metric, v.shots): v.value for v in values}
    assert {v.task for v in values} == {"sent"} and {v.task_seed for v in values} == {3}

    instance = build_instance(spec, builtin_task("sentiment"), tokenizer, seed=3)
    candidates, batches = make_prompts(instance, tokenizer, [0, 2], 10, seed=3)
    for batch in batches:
        scores = naive_scores(model, batch.prompts, candidates)
        gold = np.asarray(batch.gold)
        predicted = scores.argmax(1)
        assert got[("accuracy", batch.shots)] == pytest.approx(np.mean(predicted == gold))
        rank = [  # ties count against the gold label
            1 + sum(row[c] >= row[g] for c in range(len(row)) if c != g)
            for row, g in zip(scores, gold, strict=True)
        ]
        assert got[("mean_gold_rank", batch.shots)] == pytest.approx(np.mean(rank))
        f1s = []
        for label in sorted(set(gold.tolist())):
            tp = np.sum((predicted == label) & (gold == label))
            precision = tp / max(1, np.sum(predicted == label))
            recall = tp / np.sum(gold == label)
            f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
        assert got[("macro_f1", batch.shots)] == pytest.approx(np.mean(f1s))
        assert got[("chance_accuracy", batch.shots)] == pytest.approx(1 / len(candidates))
        assert got[("n_prompts", batch.shots)] == 10


def test_bow_baseline_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    # Token 7 marks class 1, token 8 class 0; the rest is noise.
    demos = [[7, 30 + i] if i % 2 else [8, 30 + i] for i in range(10)]
    labels = [i % 2 for i in range(10)]
    assert bow_predict(demos, labels, [7, 99], 2, rng) == 1
    assert bow_predict(demos, labels, [8, 98], 2, rng) == 0
    assert bow_predict([[1], [2]], [1, 1], [3], 3, rng) == 1  # one label seen: that label
    picks = {bow_predict([], [], [3], 3, rng) for _ in range(50)}
    assert picks == {0, 1, 2}  # no demonstrations: uniform over the candidates

"""In-context learning probes over checkpoints (the structured task hypothesis)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ckptlab.analyses.capture import CheckpointContext
from ckptlab.analyses.icl_tasks.baseline import bow_predict
from ckptlab.analyses.icl_tasks.scoring import score_candidates
from ckptlab.analyses.icl_tasks.tasks import (
    TaskDataError,
    TaskDataNotCached,
    TaskInstance,
    TaskSpec,
    build_instance,
    load_task_data,
    make_prompts,
)
from ckptlab.analyses.registry import MetricValue, Need, analysis
from ckptlab.home import NotCached, hub_cache_dir
from ckptlab.lazy import LazyModule

sklearn_metrics = LazyModule("sklearn.metrics")  # 1.8 s to import: at first use


class IclParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tasks: list[TaskSpec] = Field(min_length=1)
    shots: list[int] = [0, 1, 2, 4, 8, 16, 32]  # demonstrations per prompt
    n_test: int = Field(256, ge=1)  # test prompts per task x shots x seed
    seeds: list[int] = Field([0], min_length=1)
    batch_tokens: int = Field(16_384, ge=256)  # tokens per forward batch

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots: list[int]) -> list[int]:
        if not shots or any(s < 0 for s in shots) or len(set(shots)) != len(shots):
            raise ValueError(f"shots must be distinct non-negative counts, got {shots}")
        return sorted(shots)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.label for t in tasks]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"task names must be unique; give a name to: {duplicated}")
        return tasks


def task_fingerprints(params: IclParams) -> dict:
    """The task data each task reads (built-in, file or hub), fingerprinted into the cell key."""
    fingerprints = {}
    for task in params.tasks:
        try:
            fingerprints[task.label] = load_task_data(task, hub_cache_dir()).fingerprint()
        except TaskDataNotCached as err:
            raise NotCached(f"task {task.label!r}: {err}") from None
        except TaskDataError as err:
            raise ValueError(f"task {task.label!r}: {err}") from None
    return {"task_data": fingerprints}


def _tokenizer_id(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


# BoW baseline results do not depend on the checkpoint, only on the prompts: a worker computes
# them once per (task, seed, shots, tokenizer) and reuses them for every checkpoint it runs.
_BASELINE_CACHE: dict[str, tuple[float, float]] = {}


def _baseline(instance: TaskInstance, batch, tokenizer, key: str, seed: int) -> tuple[float, float]:
    if key in _BASELINE_CACHE:
        return _BASELINE_CACHE[key]

    def tokens(text: str) -> list[int]:
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        return (instance.permutation[ids] if instance.permutation is not None else ids).tolist()

    rng = np.random.default_rng([seed, 4, batch.shots])
    index = {c: i for i, c in enumerate(instance.candidates)}
    predictions = [
        bow_predict(
            [tokens(x) for x in inputs],
            [index[y] for y in labels],
            tokens(query),
            len(instance.candidates),
            rng,
        )
        for inputs, labels, query in zip(
            batch.demo_inputs, batch.demo_labels, batch.query_inputs, strict=True
        )
    ]
    gold = np.asarray(batch.gold)
    result = (
        float(np.mean(np.asarray(predictions) == gold)),
        float(
            sklearn_metrics.f1_score(
                gold, predictions, labels=sorted(set(batch.gold)), average="macro"
            )
        ),
    )
    _BASELINE_CACHE[key] = result
    return result


@analysis(
    name="icl",
    version=1,
    needs={Need.MODEL},
    params=IclParams,
    context=task_fingerprints,
)
def icl(context: CheckpointContext, params: IclParams) -> list[MetricValue]:
    """In-context learning on structured tasks (Li, Hou, Sachan, Cotterell, ACL 2024, "What Do
    Language Models Learn in Context? The Structured Task Hypothesis"; task variants in
    analyses/icl_tasks/tasks.py).

    A prompt is L demonstrations rendered with the task's template, then the query up to its
    label. The prediction is the candidate label with the highest

        score(c) = sum_t log p(c_t | prompt, c_<t)

    (restricted to the task's candidate labels; multi-token labels sum their tokens). Per task x
    L x seed: ``accuracy``, ``macro_f1`` (over the gold labels present), ``mean_gold_rank``
    (1 = top; ties count against the gold label), ``chance_accuracy`` (1 / #candidates),
    ``query_seen_rate`` (prompts whose query input is among the demonstrations: retrieval is
    possible), ``bow_accuracy`` / ``bow_macro_f1`` (TF-IDF bag-of-words logistic regression
    trained on the same demonstrations, the learnability baseline), ``n_prompts`` and
    ``max_prompt_tokens``. Shot counts whose prompts exceed the model's context
    (max_position_embeddings) get only ``max_prompt_tokens`` and ``exceeds_context`` = 1.
    """
    model, tokenizer = context.require("model"), context.require("tokenizer")
    context = getattr(model.config, "max_position_embeddings", None)
    tokenizer_id = _tokenizer_id(tokenizer)
    values: list[MetricValue] = []
    for task in params.tasks:
        data = load_task_data(task, hub_cache_dir())
        fingerprint = data.fingerprint()
        for seed in params.seeds:
            instance = build_instance(task, data, tokenizer, seed)
            candidates, batches = make_prompts(
                instance, tokenizer, params.shots, params.n_test, seed
            )
            longest_label = max(len(c) for c in candidates)
            for batch in batches:
                facets = {"task": task.label, "shots": batch.shots, "task_seed": seed}

                def value(metric: str, number: float, facets=facets) -> MetricValue:
                    return MetricValue(metric, float(number), **facets)

                longest = max(len(p) for p in batch.prompts) + longest_label
                values.append(value("max_prompt_tokens", longest))
                if context is not None and longest > context:
                    values.append(value("exceeds_context", 1))
                    continue
                scores = score_candidates(  # [n_prompts, n_candidates]
                    model, batch.prompts, candidates, params.batch_tokens
                )
                gold = np.asarray(batch.gold)
                predicted = scores.argmax(axis=1)
                gold_scores = scores[np.arange(len(gold)), gold]
                ranks = (scores >= gold_scores[:, None]).sum(axis=1)  # [n_prompts]
                key = json.dumps(
                    [
                        task.model_dump(mode="json"),
                        fingerprint,
                        seed,
                        batch.shots,
                        params.n_test,
                        params.shots,
                        tokenizer_id,
                    ],
                    sort_keys=True,
                )
                bow_accuracy, bow_f1 = _baseline(instance, batch, tokenizer, key, seed)
                values += [
                    value("accuracy", np.mean(predicted == gold)),
                    value(
                        "macro_f1",
                        sklearn_metrics.f1_score(
                            gold, predicted, labels=sorted(set(batch.gold)), average="macro"
                        ),
                    ),
                    value("mean_gold_rank", np.mean(ranks)),
                    value("chance_accuracy", 1 / len(candidates)),
                    value("query_seen_rate", np.mean(batch.query_seen)),
                    value("bow_accuracy", bow_accuracy),
                    value("bow_macro_f1", bow_f1),
                    value("n_prompts", len(gold)),
                ]
    return values

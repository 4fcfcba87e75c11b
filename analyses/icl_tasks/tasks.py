"""ICL tasks: data (built-in, a JSONL file or a hub dataset), the paper's variants, the
pool / test split, and the exact prompts of a run.

Everything random is drawn from ``numpy.random.default_rng`` seeded by the task seed (and the
test prompt's index), so the prompts of a run are a function of the stored params, the task
data (fingerprinted into the cell key) and the checkpoint's tokenizer: ``ckptlab prompts``
prints them again.

Variants (Li, Hou, Sachan, Cotterell, ACL 2024):
- ``tau``: the original labels.
- ``random_labels`` (tau_RA): every label replaced by a random token of the vocabulary, a mapping
  never seen in training; never one of the original label words or their first tokens.
- ``permuted_vocab`` (tau_PA): a fixed random permutation of the vocabulary applied to every
  prompt token; label tokens (and special tokens) are fixed points, so the candidates stay.
- ``memo_random`` / ``memo_keyword`` / ``memo_synonym`` / ``memo_antonym``: label-memo tasks,
  input = a label word of the task, output = a random token / its class keyword / synonym /
  antonym. Their inputs are the few label words, so pool and test share them.
- ``compose: m``: the task's function applied m times (synonym of synonym ...); only for tasks
  whose outputs are inputs too.

Owns: ``TaskSpec`` and its data sources, the variants, the pool / test split and
``make_prompts``. Must not: draw from an unseeded generator (``ckptlab prompts`` rebuilds a
run's prompts exactly), or import torch or transformers: the tokenizer is passed in.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ckptlab.analyses.icl_tasks import builtin_data as B
from ckptlab.home import NotCached

DEFAULT_TEMPLATE = "{input} {label}\n"
TEST_FRACTION_BYTE = 86  # sha1(input)[0] < 86: ~1/3 of the inputs are test inputs

Variant = Literal[
    "tau",
    "random_labels",
    "permuted_vocab",
    "memo_random",
    "memo_keyword",
    "memo_synonym",
    "memo_antonym",
]
MEMO_KINDS = {"memo_keyword": "keyword", "memo_synonym": "synonym", "memo_antonym": "antonym"}


class TaskDataError(ValueError):
    """Task data that cannot be used as asked (a one-line reason)."""


class TaskDataNotCached(TaskDataError, NotCached):
    """Hub task data that is neither cached nor downloadable now (the hub offline or away)."""


# ----------------------------------------------------------------------------- spec


class FileData(BaseModel):
    """A JSONL file: one object per line with an input and a label field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: Path
    input_field: str = "input"
    label_field: str = "label"


class HubData(BaseModel):
    """A JSONL file of a hub dataset repo (needs hub access, or the file in the local cache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hub: str  # dataset repo id
    filename: str
    revision: str | None = None
    input_field: str = "input"
    label_field: str = "label"


BUILTIN_TASKS = (
    "category",
    "sentiment",
    "country_capital",
    "uppercase",
    "next_number",
    "synonym",
    "antonym",
)


class TaskSpec(BaseModel):
    """One ICL task of a spec: its data, variant, composition depth and prompt template."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    data: Literal[BUILTIN_TASKS] | FileData | HubData  # type: ignore[valid-type]
    name: str | None = None  # the task's name in results; default from data + variant
    variant: Variant = "tau"
    compose: int = Field(1, ge=1, le=4)
    template: str = DEFAULT_TEMPLATE

    @model_validator(mode="after")
    def _check_template(self) -> TaskSpec:
        for slot in ("{input}", "{label}"):
            if self.template.count(slot) != 1:
                raise ValueError(f"template must contain {slot} exactly once: {self.template!r}")
        if self.template.index("{input}") > self.template.index("{label}"):
            raise ValueError("template: {input} must come before {label}")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if isinstance(self.data, str):
            base = self.data
        elif isinstance(self.data, FileData):
            base = self.data.file.stem
        else:
            base = Path(self.data.filename).stem
        suffix = "" if self.variant == "tau" else f"/{self.variant}"
        return f"{base}{suffix}" + (f"/m{self.compose}" if self.compose > 1 else "")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Example:
    input: str
    label: str


@dataclass(frozen=True)
class TaskData:
    name: str
    examples: tuple[Example, ...]
    memo: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> label -> word

    def fingerprint(self) -> str:
        payload = json.dumps(
            [[(e.input, e.label) for e in self.examples], self.memo], sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def builtin_task(name: str) -> TaskData:
    if name == "category":
        pairs = [(w, c) for c, ws in B.CATEGORY_WORDS.items() for w in ws]
    elif name == "sentiment":
        pairs = [(p, s) for s, ps in B.SENTIMENT_PHRASES.items() for p in ps]
    elif name == "country_capital":
        pairs = list(B.COUNTRY_CAPITAL.items())
    elif name == "uppercase":
        pairs = [(w, w.upper()) for w in B.uppercase_words()]
    elif name == "next_number":
        pairs = [(str(n), str(n + 1)) for n in range(B.NUMBER_MAX)]
    elif name == "synonym":
        pairs = [(c[i], c[i + 1]) for c in B.SYNONYM_CHAINS for i in range(len(c) - 1)]
    elif name == "antonym":
        pairs = [p for a, b in B.ANTONYM_PAIRS for p in ((a, b), (b, a))]
    else:
        raise TaskDataError(f"unknown built-in task {name!r} (known: {', '.join(BUILTIN_TASKS)})")
    return TaskData(name, tuple(Example(x, y) for x, y in pairs), B.LABEL_MEMO.get(name, {}))


def _jsonl_examples(path: Path, input_field: str, label_field: str) -> tuple[Example, ...]:
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append(Example(str(row[input_field]), str(row[label_field])))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise TaskDataError(f"{path}:{number}: {type(err).__name__}: {err}") from None
    if not examples:
        raise TaskDataError(f"{path}: no examples")
    return tuple(examples)


def load_task_data(spec: TaskSpec, hub_dir: Path | None = None) -> TaskData:
    data = spec.data
    if isinstance(data, str):
        return builtin_task(data)
    if isinstance(data, FileData):
        if not data.file.is_file():
            raise TaskDataError(f"task data file not found: {data.file}")
        return TaskData(
            data.file.stem, _jsonl_examples(data.file, data.input_field, data.label_field)
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hf_hub_download(
            data.hub,
            data.filename,
            repo_type="dataset",
            revision=data.revision,
            cache_dir=hub_dir,
        )
    except LocalEntryNotFoundError:
        raise TaskDataNotCached(
            f"dataset {data.hub}/{data.filename}: not in the local hub cache ({hub_dir}) and "
            "the hub is offline or unreachable"
        ) from None
    except Exception as err:
        raise TaskDataError(f"dataset {data.hub}/{data.filename}: {type(err).__name__}") from None
    return TaskData(data.hub, _jsonl_examples(Path(path), data.input_field, data.label_field))


def compose(examples: tuple[Example, ...], m: int) -> tuple[Example, ...]:
    """The m-fold composition f∘…∘f of the function the examples define (first label wins)."""
    step: dict[str, str] = {}
    for e in examples:
        step.setdefault(e.input, e.label)
    composed = []
    for x in step:
        y = x
        for _ in range(m):
            if y not in step:
                break
            y = step[y]
        else:
            composed.append(Example(x, y))
    if not composed:
        raise TaskDataError(f"no input survives {m}-fold composition: outputs are not inputs")
    return tuple(composed)


# ----------------------------------------------------------------------------- tokens


def label_token_pool(tokenizer) -> list[str]:
    """Words that are single tokens " xyz" (a space and 2+ lowercase letters), in id order:
    what random labels are drawn from. Returned without the leading space."""
    vocab = tokenizer.get_vocab()
    words = []
    for _token, token_id in sorted(vocab.items(), key=lambda kv: kv[1]):
        text = tokenizer.decode([token_id])
        if re.fullmatch(r" [a-z]{2,}", text):
            words.append(text[1:])
    return words


def vocab_permutation(vocab_size: int, fixed: set[int], seed: int) -> np.ndarray:
    """A random bijection of range(vocab_size) [vocab] that maps every id in ``fixed`` to
    itself and shuffles the others among themselves."""
    permutation = np.arange(vocab_size, dtype=np.int64)
    movable = np.array(sorted(set(range(vocab_size)) - fixed), dtype=np.int64)
    permutation[movable] = np.random.default_rng(seed).permutation(movable)
    return permutation


def render(template: str, input_text: str, label: str) -> str:
    return template.replace("{input}", input_text).replace("{label}", label)


def label_prefix(template: str) -> str:
    """The whitespace right before {label}: it goes onto the label, so a candidate is scored as
    " label" (how BPE spells it in running text)."""
    before = template[: template.index("{label}")]
    return before[len(before.rstrip()) :]


def split_query(template: str, input_text: str) -> tuple[str, str]:
    """(query context, label prefix): the template up to {label}, without label_prefix."""
    before = template[: template.index("{label}")].replace("{input}", input_text)
    prefix = label_prefix(template)
    return before[: len(before) - len(prefix)], prefix


# ----------------------------------------------------------------------------- instances


@dataclass
class TaskInstance:
    """One task variant under one seed, ready to make prompts."""

    template: str
    pool: list[Example]
    test: list[Example]
    candidates: list[str]  # label strings, scored restricted to these
    permutation: np.ndarray | None = None  # tau_PA: [vocab] token id -> token id
    shared_inputs: bool = False  # label-memo: pool and test are the same few label words


def is_test_input(text: str) -> bool:
    return hashlib.sha1(text.encode()).digest()[0] < TEST_FRACTION_BYTE


def _random_labels(
    originals: list[str], tokenizer, rng: np.random.Generator, prefix: str
) -> dict[str, str]:
    """A random single-token word for each original label, distinct, never an original label
    word nor the first token of one."""
    first_tokens = {
        tokenizer(prefix + o, add_special_tokens=False)["input_ids"][0] for o in originals
    }
    pool = [
        w
        for w in label_token_pool(tokenizer)
        if w not in originals
        and tokenizer(prefix + w, add_special_tokens=False)["input_ids"][0] not in first_tokens
    ]
    if len(pool) < len(originals):
        raise TaskDataError(f"the vocabulary has {len(pool)} usable random-label tokens")
    chosen = rng.choice(len(pool), size=len(originals), replace=False)
    return {o: pool[i] for o, i in zip(originals, chosen, strict=True)}


def build_instance(spec: TaskSpec, data: TaskData, tokenizer, seed: int) -> TaskInstance:
    rng = np.random.default_rng([seed, 1])
    prefix = label_prefix(spec.template)
    examples = data.examples if spec.compose == 1 else compose(data.examples, spec.compose)
    originals = sorted({e.label for e in examples})

    if spec.variant.startswith("memo_"):
        if spec.variant == "memo_random":
            mapping = _random_labels(originals, tokenizer, rng, prefix)
        else:
            kind = MEMO_KINDS[spec.variant]
            mapping = data.memo.get(kind, {})
            missing = [o for o in originals if o not in mapping]
            if missing:
                raise TaskDataError(f"task {data.name!r} has no {kind} for labels {missing}")
        items = [Example(o, mapping[o]) for o in originals]
        return TaskInstance(
            spec.template,
            items,
            items,
            sorted({e.label for e in items}),
            shared_inputs=True,
        )

    if spec.variant == "random_labels":
        mapping = _random_labels(originals, tokenizer, rng, prefix)
        examples = tuple(Example(e.input, mapping[e.label]) for e in examples)
    pool = [e for e in examples if not is_test_input(e.input)]
    test = [e for e in examples if is_test_input(e.input)]
    if not pool or not test:
        raise TaskDataError(f"task {spec.label!r}: its inputs do not split into pool and test")
    candidates = sorted({e.label for e in examples})
    instance = TaskInstance(spec.template, pool, test, candidates)
    if spec.variant == "permuted_vocab":
        fixed = set(tokenizer.all_special_ids)
        for c in candidates:
            fixed |= set(tokenizer(prefix + c, add_special_tokens=False)["input_ids"])
        instance.permutation = vocab_permutation(len(tokenizer), fixed, seed)
    return instance


@dataclass
class PromptBatch:
    """The prompts of one task x shots x seed: token ids and the gold candidate of each."""

    shots: int
    prompts: list[list[int]]  # token ids of demonstrations + query, ending before the label
    gold: list[int]  # index into candidates
    query_seen: list[bool]  # the query's input appears among the demonstrations
    texts: list[str]  # before any permutation
    demo_inputs: list[list[str]]
    demo_labels: list[list[str]]
    query_inputs: list[str]


def make_prompts(
    instance: TaskInstance, tokenizer, shots: list[int], n_test: int, seed: int
) -> tuple[list[list[int]], list[PromptBatch]]:
    """(candidate token ids, one PromptBatch per shot count).

    Test prompt j queries test[order[j % len(test)]] (each test input used in turn when n_test
    exceeds them). Its demonstrations are the first L of one random draw from the pool made for
    j, so the L-shot prompt's demonstrations extend the smaller ones' (nested): a curve over L
    compares the same examples. Draws are without replacement unless the pool is smaller than
    the largest L (label-memo tasks)."""
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(len(instance.test))
    most = max(shots)
    queries = [instance.test[order[j % len(order)]] for j in range(n_test)]
    draws = [
        np.random.default_rng([seed, 3, j]).choice(
            len(instance.pool), size=most, replace=most > len(instance.pool)
        )
        for j in range(n_test)
    ]
    prefix = label_prefix(instance.template)
    candidate_ids = [
        tokenizer(prefix + c, add_special_tokens=False)["input_ids"] for c in instance.candidates
    ]
    batches = []
    for shots_n in shots:
        texts, demo_inputs, demo_labels, seen = [], [], [], []
        for query, draw in zip(queries, draws, strict=True):
            demos = [instance.pool[i] for i in draw[:shots_n]]
            context = split_query(instance.template, query.input)[0]
            texts.append(
                "".join(render(instance.template, d.input, d.label) for d in demos) + context
            )
            demo_inputs.append([d.input for d in demos])
            demo_labels.append([d.label for d in demos])
            seen.append(any(d.input == query.input for d in demos))
        prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        if instance.permutation is not None:
            prompts = [
                instance.permutation[np.asarray(p, dtype=np.int64)].tolist() for p in prompts
            ]
        gold = [instance.candidates.index(q.label) for q in queries]
        batches.append(
            PromptBatch(
                shots_n,
                prompts,
                gold,
                seen,
                texts,
                demo_inputs,
                demo_labels,
                [q.input for q in queries],
            )
        )
    return candidate_ids, batches

"""The run spec: suites x sizes x seeds x checkpoint steps, input sets, analyses, resources,
storage. YAML in, a validated frozen model out; every error names the field path."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationError,
    model_validator,
)

from ckptlab.catalog import SUITES


class SpecError(ValueError):
    """A spec that cannot run. ``str(err)`` is one line: '<field path>: <what is wrong>'."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- checkpoint step selectors


class StepRange(Strict):
    """Every ``every``-th step from ``start`` to ``stop`` (inclusive) among the suite's steps."""

    every: PositiveInt
    start: NonNegativeInt = 0
    stop: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _ordered(self) -> StepRange:
        if self.stop is not None and self.stop < self.start:
            raise ValueError(f"stop ({self.stop}) is before start ({self.start})")
        return self


class LogSpaced(Strict):
    """Pythia-style early steps: 0, 1, 2, 4, ... up to ``log_until`` (inclusive)."""

    log_until: NonNegativeInt


def _selector_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "log-spaced" if "log_until" in value else "step-range"
    return "log-spaced" if isinstance(value, LogSpaced) else "step-range"


Selector = Annotated[
    Annotated[StepRange, Tag("step-range")] | Annotated[LogSpaced, Tag("log-spaced")],
    Discriminator(_selector_kind),
]
StepItem = NonNegativeInt | Selector
Steps = Literal["all"] | Selector | Annotated[list[StepItem], Field(min_length=1)]

STEP_PATTERN = r"step(\d+)"


# ---------------------------------------------------------------------------- model sources


class SuiteModels(Strict):
    """Models from a catalogued suite (``pythia``, ``pico``)."""

    suite: str
    sizes: Annotated[list[str], Field(min_length=1)]
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)] = [0]
    deduped: bool = False
    steps: Steps = "all"


class HubModels(Strict):
    """An explicit hub repo and the revisions to analyse; the training step is read from each
    revision name with ``step_pattern`` (first group)."""

    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    revisions: Annotated[list[str], Field(min_length=1)]
    step_pattern: str = STEP_PATTERN


class LocalModels(Strict):
    """A local directory whose sub-directories are checkpoints (``step100/``, ...), each a
    ``save_pretrained`` folder."""

    path: Path
    revisions: Literal["all"] | Annotated[list[str], Field(min_length=1)] = "all"
    step_pattern: str = STEP_PATTERN


def _model_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("suite", "repo", "path"):
            if key in value:
                return f"{key}-source"
        return None
    kinds = {SuiteModels: "suite-source", HubModels: "repo-source", LocalModels: "path-source"}
    return kinds.get(type(value))


# Tag names carry a '-' so that error paths can drop them (users never write them).
ModelSource = Annotated[
    Annotated[SuiteModels, Tag("suite-source")]
    | Annotated[HubModels, Tag("repo-source")]
    | Annotated[LocalModels, Tag("path-source")],
    Discriminator(
        _model_kind,
        custom_error_type="model_source",
        custom_error_message="a model entry needs one of 'suite', 'repo' or 'path'",
    ),
]


# ------------------------------------------------------------------------------- input sets


class HubCorpus(Strict):
    """Documents of a hub dataset: the ``field`` of every row of the files of one config and
    split (parquet, JSON lines, JSON or text files), at a pinned revision. The files are
    ``files`` (glob patterns) or found by the hub's layouts: ``<config>/<split>-*``,
    ``<config>/<split>/*``, ``data/<split>-*``, ``<split>-*``, ``<split>.*``."""

    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")]
    config: str | None = None
    split: str = "validation"
    field: str = "text"
    revision: str = "main"
    files: Annotated[list[str], Field(min_length=1)] | None = None


class InputSet(Strict):
    """Token windows cut from a corpus: ``num_sequences`` windows of ``seq_len`` tokens, their
    start offsets drawn with ``seed``. The exact token ids are stored in the results DB."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z][\w-]*$")]
    builtin: Literal["pydoc_topics", "stdlib_code"] | None = None
    file: Path | None = None
    hub: HubCorpus | None = None  # a hub dataset (needs hub access or the hub cache)
    # Built-in corpora are split by document; pico models never train on "heldout".
    split: Literal["heldout", "train", "all"] = "heldout"
    num_sequences: PositiveInt = 16
    seq_len: Annotated[int, Field(ge=2)] = 128
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_source(self) -> InputSet:
        if [self.builtin, self.file, self.hub].count(None) != 2:
            raise ValueError("give exactly one of 'builtin', 'file' or 'hub'")
        return self


# -------------------------------------------------------------------------------- analyses


class AnalysisSpec(Strict):
    name: str
    # Distinguishes two entries of the same analysis with different params (MLflow keys).
    label: Annotated[str, Field(pattern=r"^[A-Za-z][\w-]*$")] | None = None
    params: dict[str, Any] = {}

    @property
    def key(self) -> str:
        return self.label or self.name


class Resources(Strict):
    workers: PositiveInt | None = None  # None: as many as the cluster's CPUs/GPUs allow
    cpus_per_worker: PositiveFloat = 1
    # "auto": sized to each model from its config (shares of a GPU for small models, whole
    # GPUs for large ones; none on a cluster without GPUs), or a fixed number per worker.
    gpus_per_worker: Literal["auto"] | Annotated[float, Field(ge=0)] = "auto"
    gpu_memory_gib: PositiveFloat | None = None  # per GPU; default: read on a GPU node
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: PositiveInt = 8
    max_retries: NonNegativeInt = 1  # Ray retries of a unit whose worker process died
    # Bytes of checkpoints a worker may hold (prefetched next + finished, evictable) in
    # ckptlab's own hub cache; None: no limit, nothing evicted.
    disk_budget_gib: PositiveFloat | None = None
    prefetch: bool = True  # download each worker's next checkpoint while it computes
    # Memory one worker may use: on a GPU, that much of the GPU (PyTorch's per-process
    # fraction); on CPUs, that much heap growth (RLIMIT_DATA). A pass that runs out is
    # retried with half the batch, down to one sequence, then its cells fail.
    memory_limit_gib: PositiveFloat | None = None


class Storage(Strict):
    db: Path | None = None  # default: $CKPTLAB_HOME/results.duckdb; --db wins
    tracking_uri: str | None = None  # default: sqlite under $CKPTLAB_HOME; --tracking-uri wins


class Loading(Strict):
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False  # safetensors only unless a spec opts in


class Spec(Strict):
    name: Annotated[str, Field(pattern=r"^[\w.-]+$")]
    description: str = ""
    models: Annotated[list[ModelSource], Field(min_length=1)]
    input_sets: list[InputSet] = []
    analyses: Annotated[list[AnalysisSpec], Field(min_length=1)]
    resources: Resources = Resources()
    storage: Storage = Storage()
    loading: Loading = Loading()

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


# ------------------------------------------------------------------------ semantic checks


def _format_loc(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part[:1].isupper() or "[" in part or "-" in part:
            continue  # union branch names pydantic inserts; the user never wrote them
        else:
            path += f".{part}" if path else str(part)
    return path


_WRONG_BRANCH = ("literal_error", "model_type", "list_type", "int_type", "dict_type")
_STEPS_FORMS = "expected 'all', a list of steps, {every, start, stop} or {log_until}"


def _first_error(err: ValidationError) -> SpecError:
    """The most telling error: inside a union (steps), a branch that merely has the wrong type
    says less than one whose own check failed (e.g. stop before start)."""
    errors = err.errors()
    e = min(
        errors,
        key=lambda e: (e["type"] in _WRONG_BRANCH, e["type"] == "missing", -len(e["loc"])),
    )
    path = _format_loc(e["loc"])
    if e["type"] == "extra_forbidden":
        return SpecError(path, "unknown field")
    if e["type"] in _WRONG_BRANCH and path.endswith("steps"):
        return SpecError(path, f"{_STEPS_FORMS} (got {e['input']!r})")
    message = e["msg"].removeprefix("Value error, ")
    if e["type"] in ("literal_error", "enum", "model_source") or "input" not in e:
        return SpecError(path, message)
    return SpecError(path, f"{message} (got {e['input']!r})")


def select_steps(steps: Steps, schedule: list[int], path: str) -> list[int]:
    """Resolve a step selector against a suite's checkpoint schedule (sorted, unique)."""
    if steps == "all":
        return list(schedule)
    items = steps if isinstance(steps, list) else [steps]
    available = set(schedule)
    chosen: set[int] = set()
    for i, item in enumerate(items):
        where = f"{path}[{i}]" if isinstance(steps, list) else path
        if isinstance(item, int):
            if item not in available:
                near = sorted(schedule, key=lambda s: abs(s - item))[:2]
                raise SpecError(where, f"step {item} is not a checkpoint (nearest: {near})")
            chosen.add(item)
            continue
        if isinstance(item, StepRange):
            stop = item.stop if item.stop is not None else schedule[-1]
            picked = {
                s
                for s in schedule
                if item.start <= s <= stop and (s - item.start) % item.every == 0
            }
        else:
            picked = {s for s in schedule if s <= item.log_until and (s == 0 or s & (s - 1) == 0)}
        if not picked:
            raise SpecError(where, "selects no checkpoint of this suite")
        chosen |= picked
    return sorted(chosen)


def step_from_revision(revision: str, pattern: str, path: str) -> int:
    match = re.search(pattern, revision)
    if not match:
        raise SpecError(path, f"cannot read a training step from {revision!r}; set step_pattern")
    return int(match.group(1))


def _check_semantics(spec: Spec) -> None:
    from ckptlab.analyses.registry import registered_analyses

    for i, source in enumerate(spec.models):
        where = f"models[{i}]"
        if isinstance(source, SuiteModels):
            suite = SUITES.get(source.suite)
            if suite is None:
                raise SpecError(
                    f"{where}.suite", f"unknown suite {source.suite!r} (known: {', '.join(SUITES)})"
                )
            for j, size in enumerate(source.sizes):
                if size not in suite.sizes:
                    raise SpecError(
                        f"{where}.sizes[{j}]",
                        f"unknown size {size!r} for suite {suite.name} "
                        f"(known: {', '.join(suite.sizes)})",
                    )
                if any(s > 0 for s in source.seeds) and size not in suite.seeded_sizes:
                    raise SpecError(f"{where}.seeds", f"size {size!r} has no seed variants")
            for j, seed in enumerate(source.seeds):
                if seed > suite.max_seed:
                    raise SpecError(
                        f"{where}.seeds[{j}]", f"{suite.name} has seeds 0..{suite.max_seed}"
                    )
            if source.deduped and not suite.has_deduped:
                raise SpecError(f"{where}.deduped", f"suite {suite.name} has no deduped models")
            select_steps(source.steps, list(suite.schedule), f"{where}.steps")
        elif isinstance(source, HubModels):
            for j, revision in enumerate(source.revisions):
                step_from_revision(revision, source.step_pattern, f"{where}.revisions[{j}]")
        else:
            if not source.path.is_dir():
                raise SpecError(f"{where}.path", f"no such directory: {source.path}")

    names = [s.name for s in spec.input_sets]
    for i, input_set in enumerate(spec.input_sets):
        if names.index(input_set.name) != i:
            raise SpecError(f"input_sets[{i}].name", f"duplicate input set {input_set.name!r}")
        if input_set.file is not None and not input_set.file.is_file():
            raise SpecError(f"input_sets[{i}].file", f"no such file: {input_set.file}")

    known = registered_analyses()
    keys: list[str] = []
    configurations: dict[str, int] = {}  # (name, params) -> first entry: same config = same cells
    for i, entry in enumerate(spec.analyses):
        where = f"analyses[{i}]"
        if entry.name not in known:
            raise SpecError(
                f"{where}.name",
                f"unknown analysis {entry.name!r} (known: {', '.join(sorted(known))})",
            )
        definition = known[entry.name]
        try:
            params = definition.params_model.model_validate(entry.params)
        except ValidationError as err:
            inner = _first_error(err)
            raise SpecError(f"{where}.params.{inner.path}".rstrip("."), inner.message) from None
        configuration = json.dumps([entry.name, params.model_dump(mode="json")], sort_keys=True)
        if configuration in configurations:
            first = configurations[configuration]
            raise SpecError(where, f"same analysis and params as analyses[{first}]")
        configurations[configuration] = i
        if entry.key in keys:
            raise SpecError(where, f"duplicate analysis {entry.key!r}; give each a unique label")
        keys.append(entry.key)
        if definition.needs_forward_pass and not spec.input_sets:
            raise SpecError(where, f"{entry.name} runs the model on inputs: add an input set")


def parse_spec(data: Any) -> Spec:
    if not isinstance(data, dict):
        raise SpecError("", "a spec is a YAML mapping at the top level")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise _first_error(err) from None
    _check_semantics(spec)
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and fully validate a spec file. Raises SpecError (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError("", f"cannot read {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed"
        raise SpecError("", f"invalid YAML{where}: {problem}") from None
    return parse_spec(data)

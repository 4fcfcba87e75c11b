"""The run spec: suites x sizes x seeds x checkpoint steps, input sets, analyses, resources,
storage. YAML in, a validated frozen model out; every error names the field path.

Relative paths in a spec (plug-in files, ``file:`` input sets, task files, local models,
``storage.db``) resolve against the spec file's folder (``Spec.folder``, ``Spec.resolve``), as
in compose and kustomize. Cells keep the paths as written; ``resolved_paths`` gives what a
process opens.

Owns: the spec's schema, its checks (``parse_spec``), the step and token selectors, and that
path rule. Must not: reach the hub or the results database, or import torch or the analyses at
module level (every command imports this module; the registry is imported inside the checks).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import reprlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    Tag,
    ValidationError,
    model_validator,
)

from ckptlab.catalog import SUITES, Checkpoint, Suite, parse_token_count
from ckptlab.errors import one_line


class SpecError(ValueError):
    """A spec that cannot run. ``str(err)`` is one line: '<field path>: <what is wrong>'."""

    def __init__(self, path: str, message: str):
        # A key or value from the file may hold a line break; escaped, the error stays one line.
        self.path = _escape_line_breaks(path)
        self.message = _escape_line_breaks(message)
        super().__init__(f"{self.path}: {self.message}" if self.path else self.message)


_LINE_BREAK = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")  # what splitlines() splits


def _escape_line_breaks(text: str) -> str:
    """A user's text on one line, its line breaks shown as escapes (a key may hold one)."""
    return _LINE_BREAK.sub(lambda m: repr(m.group())[1:-1], text)


class Strict(BaseModel):
    # No .inf or .nan: as CPUs, GiB or a fraction of a GPU they are typos, which Ray or the
    # memory limits would trip on later, not here.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


def _token_count(value: Any) -> Any:
    try:
        return parse_token_count(value)
    except ValueError as err:
        raise ValueError(str(err)) from None


# Editors (``ckptlab schema``) see what users write: a number or a string such as '10B'.
TokenCount = Annotated[int, BeforeValidator(_token_count, json_schema_input_type=int | str)]


class TokenRange(Strict):
    """Every checkpoint nearest each multiple of ``every_tokens`` tokens seen (0, 10B, 20B, ...
    up to the last checkpoint's tokens); ``10B``, ``500M``, ``2.5T`` or a plain integer."""

    every_tokens: TokenCount


class LogPoints(Strict):
    """About ``log_points`` checkpoints log-spaced in tokens seen over the whole schedule
    (in steps where a suite records no tokens seen), the first and last always included."""

    log_points: Annotated[int, Field(ge=2)]


_SELECTOR_KEYS = (
    ("log_until", "log-spaced"),
    ("every_tokens", "token-range"),
    ("log_points", "log-points"),
)
_SELECTOR_TYPES = {
    LogSpaced: "log-spaced",
    TokenRange: "token-range",
    LogPoints: "log-points",
    StepRange: "step-range",
}


def _selector_kind(value: Any) -> str:
    if isinstance(value, dict):
        return next((kind for key, kind in _SELECTOR_KEYS if key in value), "step-range")
    return _SELECTOR_TYPES.get(type(value), "step-range")


Selector = Annotated[
    Annotated[StepRange, Tag("step-range")]
    | Annotated[LogSpaced, Tag("log-spaced")]
    | Annotated[TokenRange, Tag("token-range")]
    | Annotated[LogPoints, Tag("log-points")],
    Discriminator(_selector_kind),
]
StepItem = NonNegativeInt | Selector
Steps = Literal["all"] | Selector | Annotated[list[StepItem], Field(min_length=1)]

STEP_PATTERN = r"step(\d+)"


def _step_regex(pattern: str) -> str:
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise ValueError(f"not a regular expression: {err}") from None
    if groups < 1:
        raise ValueError("needs a group that captures the step, e.g. 'step(\\d+)'")
    return pattern


StepPattern = Annotated[str, AfterValidator(_step_regex)]


# ---------------------------------------------------------------------------- model sources


class SuiteModels(Strict):
    """Models from a catalogued suite (``ckptlab suites``: pythia, olmo2, smollm2, ...). A
    suite without a known schedule has the checkpoints its repos' revisions name."""

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
    step_pattern: StepPattern = STEP_PATTERN


class LocalModels(Strict):
    """A local directory whose sub-directories are checkpoints (``step100/``, ...), each a
    ``save_pretrained`` folder."""

    path: Path
    revisions: Literal["all"] | Annotated[list[str], Field(min_length=1)] = "all"
    step_pattern: StepPattern = STEP_PATTERN


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
    # Bytes of checkpoints a node's download queue may hold (downloaded ahead + finished,
    # evictable) in ckptlab's own hub cache; None: no limit, nothing evicted.
    disk_budget_gib: PositiveFloat | None = None
    # Download checkpoints ahead of their units (each worker's next one; on one machine the
    # driver's first ones while Ray starts); false: each when its unit starts.
    prefetch: bool = True
    # Memory one worker may use: on a GPU, that much of the GPU (PyTorch's per-process
    # fraction); on CPUs, that much heap growth (RLIMIT_DATA). A pass that runs out is
    # retried with half the batch, down to one sequence, then its cells fail.
    memory_limit_gib: PositiveFloat | None = None
    # A plug-in cell's time budget in one unit (checked between its calls); past it, that
    # cell fails and the unit goes on. Shipped analyses have none.
    plugin_timeout_s: PositiveFloat | None = 600


class Storage(Strict):
    db: Path | None = None  # default: $CKPTLAB_HOME/results.duckdb; --db wins
    # default: $MLFLOW_TRACKING_URI, else sqlite under $CKPTLAB_HOME; --tracking-uri wins
    tracking_uri: str | None = None


class Loading(Strict):
    trust_remote_code: bool = False
    # Pickled .bin weights (pythia-12b's shards) load through torch's weights_only unpickler,
    # which builds tensors and containers only; false refuses them. Safetensors always win.
    allow_pickle_weights: bool = True
    # A revision whose weight files all equal an earlier revision's (hub metadata, before any
    # download): skip = not downloaded or computed, its rows copied from the earlier one's and
    # flagged duplicate_of; compute = computed anyway (flagged too); fail = recorded as failed.
    duplicates: Literal["skip", "compute", "fail"] = "skip"


class Spec(Strict):
    name: Annotated[str, Field(pattern=r"^[\w.-]+$")]
    description: str = ""
    models: Annotated[list[ModelSource], Field(min_length=1)]
    input_sets: list[InputSet] = []
    # Analyses from outside ckptlab: .py files (relative to the spec's folder) or modules.
    plugins: list[Annotated[str, Field(min_length=1)]] = []
    analyses: Annotated[list[AnalysisSpec], Field(min_length=1)]
    resources: Resources = Resources()
    storage: Storage = Storage()
    loading: Loading = Loading()
    # The spec file's folder: the spec's relative paths (plug-in files, `file:` input sets,
    # task files, local models, storage.db) resolve against it, as in compose and kustomize.
    # Not a field: the same text has the same hash and the same cells wherever it lies.
    _folder: Path = PrivateAttr(default_factory=lambda: Path("."))

    @property
    def folder(self) -> Path:
        return self._folder

    def resolve(self, path: str | Path) -> Path:
        """A path the spec names, as this process opens it."""
        return resolved_paths(Path(path), self._folder)

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def paths_in(value: Any, where: tuple = ()) -> Iterator[tuple[tuple, Path]]:
    """(location, path) of every Path value inside a validated params model."""
    if isinstance(value, Path):
        yield where, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from paths_in(getattr(value, name), (*where, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from paths_in(item, (*where, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from paths_in(item, (*where, key))


def resolved_paths(value: Any, folder: Path) -> Any:
    """A validated params model (or any value in it) with every relative Path resolved
    against ``folder`` (the spec's): what an analysis opens. Its cell key keeps the path as
    written, so a spec folder moved elsewhere finds its results. A value holding no Path is
    returned as it is."""
    if isinstance(value, Path):
        return value if value.is_absolute() else folder / value
    if not any(paths_in(value)):
        return value
    if isinstance(value, BaseModel):
        return value.model_copy(
            update={
                name: resolved_paths(getattr(value, name), folder)
                for name in type(value).model_fields
            }
        )
    if isinstance(value, list | tuple):
        items = [resolved_paths(item, folder) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {key: resolved_paths(item, folder) for key, item in value.items()}
    return value


# ------------------------------------------------------------------------ semantic checks


_KEY = re.compile(r"[A-Za-z_][\w-]*")


def _short(value: Any) -> str:
    """A bounded repr: an error quotes what the user wrote, never a 1 MB string in full."""
    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = 60
    brief.maxlist = brief.maxtuple = brief.maxdict = brief.maxset = 4
    brief.maxlevel = 2
    text = brief.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_text(key: Any, path: str) -> str:
    if isinstance(key, str) and _KEY.fullmatch(key):
        return f".{key}" if path else key
    return f"[{_short(key)}]"  # quoted: a key with spaces, brackets or a line break


def _format_loc(loc: tuple, data: Any, *, missing: bool = False) -> str:
    """The path the user wrote, from pydantic's location: a part is kept when it is a key or
    index of the input (walked alongside), or the missing field itself; any other part is a
    union branch pydantic inserted ('suite-source', 'StepRange', ...) that the user never
    wrote. A key of the user's that looks like a branch name ('Steps') is still kept."""
    path = ""
    node = data
    for n, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path += _key_text(part, path)
            node = node[part]
        elif isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        elif missing and n == len(loc) - 1:
            path += _key_text(part, path)
    return path


_WRONG_BRANCH = ("literal_error", "model_type", "list_type", "int_type", "dict_type")
_STEPS_FORMS = (
    "expected 'all', a list of steps, {every, start, stop}, {log_until}, {every_tokens} or "
    "{log_points}"
)


def _first_error(err: ValidationError, data: Any) -> SpecError:
    """The most telling error: inside a union (steps), a branch that merely has the wrong type
    says less than one whose own check failed (e.g. stop before start)."""
    errors = err.errors()
    e = min(
        errors,
        key=lambda e: (e["type"] in _WRONG_BRANCH, e["type"] == "missing", -len(e["loc"])),
    )
    if e["type"] == "invalid_key":  # its location is the bad key itself, which YAML allows
        path = _format_loc(e["loc"][:-1], data)
        return SpecError(path, f"field names are strings (got {_short(e['input'])})")
    path = _format_loc(e["loc"], data, missing=e["type"] == "missing")
    if e["type"] == "extra_forbidden":
        return SpecError(path, "unknown field")
    if e["type"] in _WRONG_BRANCH and path.endswith("steps"):
        return SpecError(path, f"{_STEPS_FORMS} (got {_short(e['input'])})")
    message = e["msg"].removeprefix("Value error, ")
    if e["type"] in ("literal_error", "enum", "model_source", "missing") or "input" not in e:
        return SpecError(path, message)
    return SpecError(path, f"{message} (got {_short(e['input'])})")


def _items(steps: Steps, path: str) -> list[tuple[str, Any]]:
    """(field path, selector) of each item of a ``steps`` value."""
    if steps == "all":
        return []
    if isinstance(steps, list):
        return [(f"{path}[{i}]", item) for i, item in enumerate(steps)]
    return [(path, steps)]


def _nearest(values: list[int], target: float) -> int:
    """The value nearest ``target`` (the smaller one on a tie); ``values`` sorted, unique."""
    at = bisect.bisect_left(values, target)
    candidates = values[max(at - 1, 0) : at + 1]
    return min(candidates, key=lambda v: (abs(v - target), v))


def _nearest_log(values: list[int], target: float) -> int:
    """The positive value nearest ``target`` on a log scale (the smaller one on a tie)."""
    at = bisect.bisect_left(values, target)
    candidates = [v for v in values[max(at - 1, 0) : at + 1] if v > 0]
    return min(candidates, key=lambda v: (abs(math.log(v / target)), v))


def every_tokens_targets(values: list[int], every: int) -> set[int]:
    """The axis values picked by ``every_tokens``: for each multiple k * every (k = 0, 1, ...,
    up to the largest value), the nearest value."""
    return {_nearest(values, k * every) for k in range(values[-1] // every + 1)}


def log_points_targets(values: list[int], points: int) -> set[int]:
    """The axis values picked by ``log_points``: the first and the last, and the values
    nearest (on a log scale) to ``points`` targets spaced evenly in log between the smallest
    positive value and the largest (``points - 1`` targets when the first value is 0, which
    counts as one of the points)."""
    picked = {values[0], values[-1]}
    positive = [v for v in values if v > 0]
    if not positive:
        return picked
    lo, hi = positive[0], positive[-1]
    count = points - 1 if values[0] == 0 else points
    if count <= 1 or lo == hi:
        return picked | {hi}
    ratio = math.log(hi / lo) / (count - 1)
    return picked | {_nearest_log(positive, lo * math.exp(i * ratio)) for i in range(count)}


def _axis(checkpoints: list[Checkpoint], item: Any, where: str) -> dict[int, list[Checkpoint]]:
    """Axis value -> checkpoints, for the token selectors: tokens seen; for ``log_points`` in
    a single-stage suite that records no tokens, the step."""
    if all(c.tokens is not None for c in checkpoints):
        key = "tokens"
    elif isinstance(item, LogPoints) and len({c.stage for c in checkpoints}) == 1:
        key = "step"
    else:
        field_name = "every_tokens" if isinstance(item, TokenRange) else "log_points"
        raise SpecError(
            where,
            f"{field_name}: this suite's checkpoints have no tokens seen (tokens per step "
            "unconfirmed); use every, log_until or a list of steps",
        )
    axis: dict[int, list[Checkpoint]] = {}
    for c in checkpoints:
        axis.setdefault(getattr(c, key), []).append(c)
    return axis


def select_checkpoints(steps: Steps, checkpoints: list[Checkpoint], path: str) -> list[Checkpoint]:
    """Resolve a step selector against a repo's checkpoints; the result is in axis order.
    Step selectors (a step, ``every``, ``log_until``) match the step a revision names, in
    every stage; ``every_tokens`` and ``log_points`` work on tokens seen, one axis across
    stages (a value several checkpoints share, like OLMo 2's ingredients, picks all)."""
    if not checkpoints:
        raise SpecError(path, "this model has no checkpoints to select from")
    if steps == "all":
        return list(checkpoints)
    schedule = sorted({c.step for c in checkpoints})
    chosen: set[Checkpoint] = set()
    for where, item in _items(steps, path):
        if isinstance(item, int):
            picked = {c for c in checkpoints if c.step == item}
            if not picked:
                # The checkpoints either side: the two closest could both be on one side.
                below = [s for s in schedule if s < item][-1:]
                near = below + [s for s in schedule if s > item][:1]
                raise SpecError(where, f"step {item} is not a checkpoint (nearest: {near})")
        elif isinstance(item, StepRange):
            stop = item.stop if item.stop is not None else schedule[-1]
            picked = {
                c
                for c in checkpoints
                if item.start <= c.step <= stop and (c.step - item.start) % item.every == 0
            }
        elif isinstance(item, LogSpaced):
            picked = {
                c
                for c in checkpoints
                if c.step <= item.log_until and (c.step == 0 or c.step & (c.step - 1) == 0)
            }
        else:
            axis = _axis(checkpoints, item, where)
            values = sorted(axis)
            if isinstance(item, TokenRange):
                targets = every_tokens_targets(values, item.every_tokens)
            else:
                targets = log_points_targets(values, item.log_points)
            picked = {c for value in targets for c in axis[value]}
        if not picked:
            raise SpecError(where, "selects no checkpoint of this suite")
        chosen |= picked
    return sorted(chosen, key=lambda c: c.order)


def select_steps(
    steps: Steps, schedule: list[int], path: str, tokens_per_step: int | None = None
) -> list[int]:
    """Resolve a step selector against a suite's checkpoint schedule (sorted, unique steps;
    tokens seen = step x ``tokens_per_step`` for the token selectors)."""
    checkpoints = [
        Checkpoint(f"step{s}", s, None if tokens_per_step is None else s * tokens_per_step)
        for s in schedule
    ]
    return sorted({c.step for c in select_checkpoints(steps, checkpoints, path)})


def _check_suite_steps(source: SuiteModels, suite: Suite, size: str, where: str) -> None:
    """Validation without the hub: a known schedule is resolved as planning will; for suites
    whose repos are listed, only what the catalog can tell (token selectors need tokens)."""
    known = suite.checkpoints(size)
    if known is not None:
        select_checkpoints(source.steps, known, f"{where}.steps")
        return
    for item_path, item in _items(source.steps, f"{where}.steps"):
        needs_tokens = isinstance(item, TokenRange) or (
            isinstance(item, LogPoints) and suite.stages_restart
        )
        if needs_tokens and not suite.records_tokens(size):
            field_name = "every_tokens" if isinstance(item, TokenRange) else "log_points"
            raise SpecError(
                item_path,
                f"{field_name}: suite {suite.name} records no tokens seen for size "
                f"{size!r} (tokens per step unconfirmed); use every, log_until or steps",
            )


def step_from_revision(revision: str, pattern: str, path: str) -> int:
    match = re.search(pattern, revision)
    step = match.group(1) if match else None
    # Digits only: an optional group may match nothing, and int() would take '١' or ' 7'.
    if step is None or not re.fullmatch(r"[0-9]+", step):
        raise SpecError(path, f"cannot read a training step from {revision!r}; set step_pattern")
    return int(step)


def _listed_once(listed: dict[str, str], repo: str, entry: str, where: str) -> None:
    if repo in listed:
        raise SpecError(
            where,
            f"{repo} is already listed in {listed[repo]}; list each model once "
            "(one entry's steps can combine selectors)",
        )
    listed[repo] = entry


def _check_semantics(spec: Spec) -> None:
    from ckptlab.analyses.registry import registered_analyses

    # Hub repo -> the models entry that lists it. The same model in two entries would be one
    # set of units with two step selections (merged silently): a mistake, or a selection
    # that belongs in one entry's steps list.
    listed: dict[str, str] = {}
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
                if suite.seed_values is not None and seed not in suite.seed_values:
                    known_seeds = ", ".join(map(str, suite.seed_values))
                    raise SpecError(f"{where}.seeds[{j}]", f"{suite.name} has seeds {known_seeds}")
                if suite.seed_values is None and seed > suite.max_seed:
                    raise SpecError(
                        f"{where}.seeds[{j}]", f"{suite.name} has seeds 0..{suite.max_seed}"
                    )
            if source.deduped and not suite.has_deduped:
                raise SpecError(f"{where}.deduped", f"suite {suite.name} has no deduped models")
            for size in source.sizes:
                _check_suite_steps(source, suite, size, where)
            for name, values in (("sizes", source.sizes), ("seeds", source.seeds)):
                for j, value in enumerate(values):
                    if values.index(value) != j:
                        raise SpecError(
                            f"{where}.{name}[{j}]",
                            f"{value!r} is listed twice (also {name}[{values.index(value)}])",
                        )
            for j, size in enumerate(source.sizes):
                for seed in source.seeds:
                    _listed_once(
                        listed,
                        suite.repo_id(size, seed, source.deduped),
                        where,
                        f"{where}.sizes[{j}]",
                    )
        elif isinstance(source, HubModels):
            for j, revision in enumerate(source.revisions):
                step_from_revision(revision, source.step_pattern, f"{where}.revisions[{j}]")
            _listed_once(listed, source.repo, where, f"{where}.repo")
        else:
            if not spec.resolve(source.path).is_dir():
                raise SpecError(f"{where}.path", _missing("directory", source.path, spec))

    names = [s.name for s in spec.input_sets]
    for i, input_set in enumerate(spec.input_sets):
        if names.index(input_set.name) != i:
            raise SpecError(f"input_sets[{i}].name", f"duplicate input set {input_set.name!r}")
        if input_set.file is not None and not spec.resolve(input_set.file).is_file():
            raise SpecError(f"input_sets[{i}].file", _missing("file", input_set.file, spec))

    from ckptlab.analyses.plugins import PluginError, load_all

    try:
        load_all(spec.plugins, spec.folder)
        known = registered_analyses()
    except PluginError as err:
        where, _, message = str(err).partition(": ")
        if not where.startswith("plugins["):
            where, message = "", str(err)
        raise SpecError(where, message) from None
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
            inner = _first_error(err, entry.params)
            joint = "." if inner.path[:1] not in ("", "[") else ""
            raise SpecError(f"{where}.params{joint}{inner.path}", inner.message) from None
        # A shipped analysis' paths are files it reads; a plug-in's may name what it writes.
        for location, path in paths_in(params) if definition.shipped else ():
            if not spec.resolve(path).is_file():
                inner = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in location)
                raise SpecError(f"{where}.params{inner}", _missing("file", path, spec))
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


def _missing(kind: str, path: Path, spec: Spec) -> str:
    """'no such file: x', saying where a relative x was looked for when that is not here."""
    here = spec.folder.resolve() == Path.cwd().resolve()
    where = "" if path.is_absolute() or here else f" in {spec.folder}"
    return f"no such {kind}: {path}{where}"


_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def parse_spec(data: Any, folder: Path | None = None) -> Spec:
    """Validate a spec's data; its relative paths resolve against ``folder`` (the spec
    file's folder; default: the current directory)."""
    if data is None:
        raise SpecError("", "the spec is empty: expected a mapping with name, models, analyses")
    if not isinstance(data, dict):
        kind = _KINDS.get(type(data), type(data).__name__)
        raise SpecError("", f"a spec is a YAML mapping at the top level (got {kind})")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise _first_error(err, data) from None
    if folder is not None:
        spec._folder = folder.absolute()  # workers started elsewhere open the same files
    try:
        _check_semantics(spec)
    except RecursionError:  # pydantic guards its own depth; json.dumps of params does not
        raise SpecError("", "nested too deeply") from None
    return spec


# A spec is a page of YAML. A bigger file is a mistake (a log, a dataset) that PyYAML would
# take seconds per 10 MB to parse, and its text is stored with every run.
MAX_SPEC_BYTES = 1 << 20


class _SpecLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML keeps
    the last value silently, so a second ``analyses:`` would drop the first list."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as err:
            # A scalar PyYAML resolves but cannot build ('2024-13-45' is a date, an int of
            # 5000 digits, '!!int abc' a ValueError, '!!int ' an IndexError): raised without
            # a position, which this adds.
            what = _short(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what}: {err}", node.start_mark
            ) from None


def _construct_mapping(loader: _SpecLoader, node: yaml.MappingNode) -> dict:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *defaults' then overriding a key is what merge keys are for
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first_line.get(key)
        except TypeError:
            continue  # unhashable: construct_mapping says so with its position
        if seen is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{_short(key)} is given twice (first at line {seen})",
                key_node.start_mark,
            )
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _reason(err: Exception) -> str:
    """An OS error's own words ('No such file or directory'), else the error's one line."""
    return getattr(err, "strerror", None) or one_line(err)


def read_spec_file(path: str | Path) -> str:
    """A spec file's text: a regular file of at most MAX_SPEC_BYTES of UTF-8."""
    path = Path(path)
    try:
        info = path.stat()
    except (OSError, ValueError) as err:  # ValueError: a path with a NUL byte
        raise SpecError("", f"cannot read {path}: {_reason(err)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError("", f"{path} is a directory, not a spec file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise SpecError("", f"{path} is not a regular file")
    if info.st_size > MAX_SPEC_BYTES:  # refused before reading a byte
        size = f"{info.st_size / 2**20:.1f}"
        size = f"{info.st_size / 2**20:.4f}" if size == "1.0" else size  # not "1.0 MB > 1 MB"
        raise SpecError("", f"spec file is {size} MB; the limit is 1 MB")
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)  # it may have grown since stat
    except OSError as err:
        raise SpecError("", f"cannot read {path}: {_reason(err)}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError("", "spec file is over 1 MB; the limit is 1 MB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise SpecError(
            "", f"not UTF-8 text: byte 0x{raw[err.start]:02x} at line {line} (save it as UTF-8)"
        ) from None


def parse_spec_text(text: str, folder: Path | None = None) -> Spec:
    """Parse and fully validate a spec's YAML text, read from a file in ``folder``. Raises
    SpecError (one line)."""
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader: no Python tags
    except yaml.reader.ReaderError as err:  # a control character; it has a position only
        line = text[: err.position].count("\n") + 1
        raise SpecError(
            "", f"invalid YAML at line {line}: character #x{err.character:04x}: {err.reason}"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed"
        context = getattr(err, "context", None)
        if context and problem.startswith("but "):  # "expected a single document ..., but"
            problem = f"{context}, {problem}"
        raise SpecError("", f"invalid YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise SpecError("", "invalid YAML: nested too deeply") from None
    return parse_spec(data, folder)


def load_spec(path: str | Path) -> Spec:
    """Read and fully validate a spec file. Raises SpecError (one line) on any problem."""
    return parse_spec_text(read_spec_file(path), Path(path).parent)

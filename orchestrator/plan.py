"""Expand a spec into checkpoint-major work units and content-keyed cells.

A unit is one checkpoint: loaded once, one forward pass per input set, every analysis on it.
A cell is one (commit sha, analysis, version, params, input set) and its key is a hash of
exactly those, so a rerun finds what is already stored and a changed parameter invalidates only
the cells of that analysis.

``build_plan`` takes the checkpoints, their commits and weight layouts from
``checkpoints.py``, reads each model's config and tokenizer once (``_ModelFiles``), cuts the
input sets (``ckptlab/inputs.py``), keys every cell, asks the results
database which keys it holds (``done_keys``), and names the reference sketches that
cross-checkpoint cells read (``SketchRequest``, ``Plan.sketches``, ``Cell.sketch_key``). A
``Cell`` keeps its params as the spec wrote them (``params_json``, in its key);
``run_params_json`` has its paths resolved against the spec's folder.

Owns: ``Cell``, ``SketchRequest``, ``Unit``, ``Plan``, the cells' keys, the choice of
references and the duplicate policy. Must not: download a weight file
(only tokenizer and config files), write to the results database (``done_keys`` only reads), or
import torch, transformers or Ray at module level (``ckptlab plan`` is a light command).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from ckptlab import architectures
from ckptlab.analyses.plugins import PluginCode, loaded_code
from ckptlab.analyses.registry import AnalysisDef, Need, get_analysis
from ckptlab.architectures import declared_logit_op
from ckptlab.errors import one_line
from ckptlab.home import NotCached, ckptlab_home
from ckptlab.hub import CheckpointError, hub_offline, not_cached_reason
from ckptlab.inputs import InputSetError, MaterializedInputSet, materialize_all
from ckptlab.keys import DEFAULT_DTYPE, canonical_json, cell_identity, sha256_hex
from ckptlab.orchestrator.checkpoints import (
    CheckpointRef,
    Listing,
    expand_checkpoints,
    resolve,
    tokenizer_folder,
    weight_layouts,
)
from ckptlab.spec import (
    Spec,
    SpecError,
    resolved_paths,
)
from ckptlab.weights import (
    WeightLayout,
    repo_cache_folder,
    snapshot_folder,
)


@dataclass(frozen=True)
class Cell:
    key: str | None  # None when the checkpoint could not be resolved to a commit
    analysis: str
    entry_key: str  # the spec's key of this analysis entry, its label else its name (MLflow)
    version: int
    params_json: str
    params_hash: str
    input_set: str | None  # name in the spec; None for weight-only analyses
    input_set_id: str | None
    sketch_key: str | None = None  # the reference sketch a cross-checkpoint cell reads
    # The analysis' own params, its relative paths resolved against the spec's folder
    # (params_json keeps them as written, and may also record context such as the reference).
    run_params_json: str | None = None


@dataclass(frozen=True)
class SketchRequest:
    """A reference sketch to make (or find cached): the hidden states of one checkpoint at
    a seeded sample of ``max_tokens`` positions of one input set, which cross-checkpoint
    analyses (CKA) compare every other checkpoint with. The plan names the checkpoint whose
    unit makes it; that unit's pass takes it (``ReferenceSketch`` is what it gives)."""

    key: str
    input_set: str
    input_set_id: str
    max_tokens: int
    seed: int
    checkpoint: CheckpointRef | None = None
    commit: str | None = None


@dataclass
class Unit:
    checkpoint: CheckpointRef
    commit: str | None  # None when the revision could not be resolved
    error: str | None = None  # why it cannot run (unresolved, no weights, ...): cells fail
    cells: list[Cell] = field(default_factory=list)  # every cell the spec asks for
    missing: list[Cell] = field(default_factory=list)  # those not yet in the results DB
    layout: WeightLayout | None = None  # its weight files, from the hub's metadata
    # The earlier revision with the same weights whose rows this one's are copied from
    # (loading.duplicates: skip): never downloaded or computed.
    duplicate_of: CheckpointRef | None = None

    @property
    def stored_keys(self) -> list[str]:
        """Keys of this unit's cells that the results DB already has."""
        missing = {c.key for c in self.missing}
        return [c.key for c in self.cells if c.key and c.key not in missing]


@dataclass(frozen=True)
class Duplicate:
    """A revision whose weight files (all: ``whole``; else some shards) equal those of an
    earlier revision of the same model, by the hub's sha256 of each file."""

    unit: CheckpointRef
    same_as: CheckpointRef
    files: tuple[str, ...]  # the weight files they share
    whole: bool


@dataclass
class Plan:
    spec: Spec
    units: list[Unit]
    input_sets: dict[str, dict[str, MaterializedInputSet]]  # model -> input set name -> tokens
    sketches: dict[str, SketchRequest] = field(default_factory=dict)  # by sketch key
    reference_errors: dict[str, str] = field(default_factory=dict)  # model -> why none
    model_configs: dict[str, dict] = field(default_factory=dict)  # model -> its config.json
    plugins: list[PluginCode] = field(default_factory=list)  # what every unit carries
    duplicates: list[Duplicate] = field(default_factory=list)  # weights repeated, in whole or part
    hub_dir: Path | None = None  # the hub cache the plan read (what is already downloaded)

    @property
    def total_cells(self) -> int:
        return sum(len(u.cells) for u in self.units)

    @property
    def missing_cells(self) -> int:
        return sum(len(u.missing) for u in self.units)

    @property
    def todo(self) -> list[Unit]:
        return [u for u in self.units if u.missing]

    def bytes_to_download(self) -> dict:
        """Weight bytes a run of this plan downloads, per model and in total: the files of
        the units with work that run on a worker (not whole duplicates, not unresolved), each
        distinct file once, less the blobs the hub cache already holds."""
        per_model: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        for unit in self.todo:
            ref = unit.checkpoint
            if ref.source != "hub" or ref.local_only:
                continue
            per_model.setdefault(ref.model, 0)
            if unit.layout is None or unit.error or unit.duplicate_of:
                continue
            blobs = repo_cache_folder(self.hub_dir or Path("."), ref.model) / "blobs"
            for f in unit.layout.files:
                identity = (ref.model, f.sha256 or f"{unit.commit}/{f.path}")
                if identity in seen or (f.sha256 and (blobs / f.sha256).is_file()):
                    continue
                seen.add(identity)
                per_model[ref.model] += f.size
        return {"total": sum(per_model.values()), "models": per_model}


def cell_key(
    commit: str,
    definition: AnalysisDef,
    params_json: str,
    input_set_id: str | None,
    dtype: str = DEFAULT_DTYPE,
):
    """The cell's content key (``ckptlab.keys``): bf16 and fp32 values differ, so the dtype
    the weights ran in is part of it."""
    return cell_identity(
        commit,
        definition.name,
        definition.version,
        params_json,
        input_set_id,
        definition.origin.source_hash,
        dtype,
    )


def sketch_key(
    commit: str, input_set_id: str, max_tokens: int, seed: int, dtype: str = DEFAULT_DTYPE
) -> str:
    identity = [commit, input_set_id, max_tokens, seed]
    if dtype != DEFAULT_DTYPE:  # as in cell_key: float32 sketches keep their keys
        identity.append(dtype)
    return sha256_hex(canonical_json(identity))[:32]


def pick_references(
    spec: Spec, refs: list[CheckpointRef], commits: dict
) -> tuple[dict[tuple[str, str], CheckpointRef], dict[str, str]]:
    """(model, analysis entry key) -> the reference checkpoint of each cross-checkpoint
    analysis, and model -> error for models whose reference cannot be used."""
    chosen: dict[tuple[str, str], CheckpointRef] = {}
    errors: dict[str, str] = {}
    by_model: dict[str, list[CheckpointRef]] = {}
    for ref in refs:
        by_model.setdefault(ref.model, []).append(ref)
    for i, entry in enumerate(spec.analyses):
        definition = get_analysis(entry.name)
        if not definition.cross_checkpoint:
            continue
        wanted = definition.params_model.model_validate(entry.params).reference
        for model, model_refs in by_model.items():
            if wanted == "last":
                reference = max(model_refs, key=lambda r: r.order)
            else:
                matches = [r for r in model_refs if r.step == wanted]
                if not matches:
                    steps = sorted(r.step for r in model_refs)
                    raise SpecError(
                        f"analyses[{i}].params.reference",
                        f"step {wanted} is not among the selected steps of {model}: {steps}",
                    )
                reference = matches[0]
            if isinstance(commits[reference], CheckpointError):
                errors[model] = f"reference {reference.label} unavailable: {commits[reference]}"
            chosen[(model, entry.key)] = reference
    return chosen, errors


def analysis_contexts(
    spec: Spec, not_cached: Callable[[str], None] | None = None
) -> dict[str, dict]:
    """Entry key -> what each analysis reads beyond its params (data fingerprints), computed
    once on the driver; unusable data is a spec error naming the entry. With ``not_cached``,
    hub data missing from the cache while downloads are off (``ckptlab validate``) is told
    to it, one line, and that entry is skipped."""
    contexts = {}
    for i, entry in enumerate(spec.analyses):
        definition = get_analysis(entry.name)
        if definition.context is None:
            continue
        params = definition.params_model.model_validate(entry.params)
        params = resolved_paths(params, spec.folder)
        try:
            contexts[entry.key] = {"context": definition.context(params)}
        except ValueError as err:
            if isinstance(err, NotCached) and not_cached is not None:
                not_cached(f"analyses[{i}].params: {err}")
                continue
            raise SpecError(f"analyses[{i}].params", str(err)) from None
    return contexts


# Where a config.json says how many positions the model has (GPT-NeoX/Llama, GPT-2, others).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def context_length(config: dict) -> int | None:
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_context(spec: Spec, model: str, config: dict) -> None:
    """An input set longer than a model's context is a spec error, found when planning reads
    the model's config: its forward passes would fail (or read past trained positions) on
    every checkpoint."""
    context = context_length(config)
    if context is None:
        return
    for i, input_set in enumerate(spec.input_sets):
        if input_set.seq_len > context:
            raise SpecError(
                f"input_sets[{i}].seq_len",
                f"{input_set.seq_len} tokens is beyond the context of {model} "
                f"({context} positions)",
            )


def build_plan(
    spec: Spec, hub_dir: Path, done_keys, before_tokenizing: Callable[[], None] | None = None
) -> Plan:
    """Resolve checkpoints, materialize input sets (one tokenization per model) and key every
    cell. ``done_keys(keys) -> set`` says which cells the results DB already has;
    ``before_tokenizing()`` is called when an input set must be tokenized (not cached)."""
    # Which checkpoints, at which commits, with which weight files (hub metadata only).
    listings: dict[str, Listing | CheckpointError] = {}
    refs = expand_checkpoints(spec, hub_dir, listings)
    commits = resolve(refs, hub_dir, listings)
    # The spec's own mistakes (a reference step not selected, unusable task data) first.
    reference_of, reference_errors = pick_references(spec, refs, commits)
    entries = _entries(spec)
    layouts = weight_layouts(spec, refs, commits, hub_dir)
    models = _ModelFiles(spec, hub_dir, before_tokenizing)

    # One unit per checkpoint, with a cell per analysis entry (and input set).
    units: list[Unit] = []
    sketches: dict[str, SketchRequest] = {}
    for ref in refs:
        unit = _unit(ref, commits[ref], layouts.get(ref), models.errors)
        models.read(unit)
        unit.cells = _cells(unit, spec, entries, models, reference_of, commits, sketches)
        units.append(unit)
    # A model refused after some of its units were made (its first checkpoint had no
    # weights, a later one had the config): every unit of it carries the reason.
    for unit in units:
        if unit.error is None and unit.checkpoint.model in models.errors:
            unit.error, unit.layout = models.errors[unit.checkpoint.model], None

    # Repeated weights, then what the results DB already holds.
    duplicates = find_duplicates(units)
    apply_duplicate_policy(spec, units, duplicates, set(reference_of.values()))
    done = done_keys([c.key for u in units for c in u.cells if c.key])
    for unit in units:
        unit.missing = [c for c in unit.cells if c.key is None or c.key not in done]
    require_cached_weights([u for u in units if u.missing], hub_dir)
    needed = {c.sketch_key for u in units for c in u.missing if c.sketch_key}
    sketches = {k: v for k, v in sketches.items() if k in needed}
    plugins = [code for entry in spec.plugins if (code := loaded_code(entry)) is not None]
    return Plan(
        spec,
        units,
        models.input_sets,
        sketches,
        reference_errors,
        models.configs,
        plugins,
        duplicates,
        Path(hub_dir),
    )


@dataclass(frozen=True)
class _Entry:
    """One analysis entry of the spec, validated once for every checkpoint."""

    key: str
    definition: AnalysisDef
    params: BaseModel
    keyed_params: dict  # its params as written, and the context it reads (data fingerprints)
    run_params_json: str  # what it runs with: its files as this run opens them


def _entries(spec: Spec) -> list[_Entry]:
    contexts = analysis_contexts(spec)
    entries = []
    for entry in spec.analyses:
        definition = get_analysis(entry.name)
        params = definition.params_model.model_validate(entry.params)
        keyed = params.model_dump(mode="json") | contexts.get(entry.key, {})
        run_params = resolved_paths(params, spec.folder).model_dump(mode="json")
        entries.append(_Entry(entry.key, definition, params, keyed, canonical_json(run_params)))
    return entries


def _unit(
    ref: CheckpointRef,
    commit: str | CheckpointError,
    layout: WeightLayout | str | None,
    model_errors: dict[str, str],
) -> Unit:
    """A checkpoint's unit, with why it cannot run if it cannot: unresolved, no usable
    weights, or its model refused."""
    unit = Unit(ref, None if isinstance(commit, CheckpointError) else commit)
    if unit.commit is None:
        unit.error = commit.reason
    elif isinstance(layout, str):
        unit.error = layout
    elif ref.model in model_errors:
        unit.error = model_errors[ref.model]
    else:
        unit.layout = layout
    return unit


class _ModelFiles:
    """What the plan reads once per model, from its first resolved checkpoint (config and
    tokenizer files only, which one without weights has too): the config sizes its workers
    and says whether the model can run; the tokenizer cuts its input sets."""

    def __init__(self, spec: Spec, hub_dir: Path, before_tokenizing: Callable[[], None] | None):
        self.spec, self.hub_dir, self.before_tokenizing = spec, hub_dir, before_tokenizing
        self.configs: dict[str, dict] = {}  # model -> its config.json
        self.input_sets: dict[str, dict[str, MaterializedInputSet]] = {}  # model -> name -> set
        self.errors: dict[str, str] = {}  # model -> why none of its checkpoints can run

    def read(self, unit: Unit) -> None:
        """Read the unit's model, unless read already; a refused model records why (in
        ``errors`` and on the unit), a checkpoint whose files fail leaves the model to its
        next one and fails itself."""
        ref, spec = unit.checkpoint, self.spec
        if unit.commit is None or ref.model in self.configs or ref.model in self.errors:
            return
        try:
            folder = tokenizer_folder(ref, self.hub_dir, spec.loading.trust_remote_code)
            config_file = folder / "config.json"
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            refused = remote_code_needed(config, spec)
            if refused:  # its config says no checkpoint of this model can run
                self.errors[ref.model] = unit.error = refused
                unit.layout = None
                return
            check_context(spec, ref.model, config)
            self.input_sets[ref.model] = materialize_all(
                spec.input_sets,
                folder,
                spec_folder=spec.folder,
                tokenizer_of=ref.model,
                cache_dir=ckptlab_home() / "input-sets",
                trust_remote_code=spec.loading.trust_remote_code,
                before_tokenizing=self.before_tokenizing,
            )
            self.configs[ref.model] = config
        except (InputSetError, SpecError):  # the spec's fault: no checkpoint would do
            raise
        except Exception as err:  # this checkpoint fails; the model's next one may serve
            reason = err.reason if isinstance(err, CheckpointError) else str(err)
            first = one_line(reason, first=True) or type(err).__name__
            if unit.error is None:
                unit.commit, unit.error, unit.layout = None, f"tokenizer: {first}", None


def _cells(
    unit: Unit,
    spec: Spec,
    entries: list[_Entry],
    models: _ModelFiles,
    reference_of: dict[tuple[str, str], CheckpointRef],
    commits: dict[CheckpointRef, str | CheckpointError],
    sketches: dict[str, SketchRequest],
) -> list[Cell]:
    """The unit's cells: one per analysis entry, and per input set for those that read the
    model's outputs. A cross-checkpoint cell also names the sketch it reads (added to
    ``sketches``)."""
    ref, dtype = unit.checkpoint, spec.resources.dtype
    materialized = models.input_sets.get(ref.model, {})
    post = declared_logit_op(models.configs.get(ref.model, {}))
    cells = []
    for entry in entries:
        definition, params = entry.definition, entry.params
        keyed = dict(entry.keyed_params)
        if post and definition.needs & {Need.TOKEN_NLL, Need.READOUT}:
            # Logits post-processed by the family (Granite, Cohere, Gemma 2) were read
            # without it before the architecture table: their cells are new ones, never
            # the stored wrong values. Every other family keeps its keys.
            keyed["logits"] = post
        reference = reference_of.get((ref.model, entry.key))
        if reference is not None:
            # The reference's commit is part of the cell: a new reference, new cells.
            reference_commit = commits[reference]
            keyed |= {
                "reference_revision": reference.revision,
                "reference_commit": None
                if isinstance(reference_commit, CheckpointError)
                else reference_commit,
            }
        params_json = canonical_json(keyed)
        targets: list[tuple[str | None, str | None]] = [(None, None)]
        if definition.needs_forward_pass:
            targets = [
                (s.name, materialized[s.name].input_set_id if materialized else None)
                for s in spec.input_sets
            ]
        for name, input_set_id in targets:
            # An unresolved checkpoint has no content key: its cells can only fail.
            key = cell_key(unit.commit, definition, params_json, input_set_id, dtype)
            sketch = None
            commit_of_reference = keyed.get("reference_commit")
            if reference is not None and commit_of_reference and input_set_id:
                sketch = sketch_key(
                    commit_of_reference, input_set_id, params.max_tokens, params.seed, dtype
                )
                sketches[sketch] = SketchRequest(
                    sketch,
                    name,
                    input_set_id,
                    params.max_tokens,
                    params.seed,
                    checkpoint=reference,
                    commit=commit_of_reference,
                )
            cells.append(
                Cell(
                    key if unit.commit else None,
                    definition.name,
                    entry.key,
                    definition.version,
                    params_json,
                    sha256_hex(params_json)[:16],
                    name,
                    input_set_id,
                    sketch,
                    entry.run_params_json,
                )
            )
    return cells


def remote_code_needed(config: dict, spec: Spec) -> str | None:
    """One line when a model's ``model_type`` is unknown to the installed transformers (its
    repo's own code would build it) and the spec does not trust remote code; else None. Read
    from config.json before the tokenizer: transformers' own error is a multi-KB ValueError
    listing every model type it knows."""
    if spec.loading.trust_remote_code:
        return None
    if config.get("model_type") in architectures.TABLE and architectures.table_is_known():
        # A family of ckptlab's table, with a transformers that has them all: no need to
        # import transformers (1 s) and the torch it brings (2 s) to plan.
        return None
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        return None
    what = f"model_type {model_type!r}" if model_type else "a config without model_type"
    return (
        f"{what} is not in transformers {transformers.__version__}: it needs the repo's own "
        "code; set loading.trust_remote_code: true to run it"
    )


def find_duplicates(units: list[Unit]) -> list[Duplicate]:
    """Per model, in training order: each revision whose weight files all equal an earlier
    revision's (whole), or that shares some files (shards) with one, by sha256."""
    duplicates: list[Duplicate] = []
    by_model: dict[str, list[Unit]] = {}
    for unit in units:
        if unit.layout is not None and unit.error is None:
            by_model.setdefault(unit.checkpoint.model, []).append(unit)
    for model_units in by_model.values():
        first_of_digest: dict[str, Unit] = {}
        first_of_file: dict[str, Unit] = {}  # a weight file's sha256 -> first unit with it
        for unit in sorted(model_units, key=lambda u: u.checkpoint.order):
            files = unit.layout.files
            digest = unit.layout.digest
            if digest is not None and digest in first_of_digest:
                earlier = first_of_digest[digest].checkpoint
                duplicates.append(Duplicate(unit.checkpoint, earlier, unit.layout.names, True))
                continue
            if digest is not None:
                first_of_digest[digest] = unit
            shared = [f for f in files if f.sha256 and f.sha256 in first_of_file]
            if shared:
                earlier = first_of_file[shared[0].sha256].checkpoint
                names = tuple(f.path for f in shared)
                duplicates.append(Duplicate(unit.checkpoint, earlier, names, False))
            for f in files:
                if f.sha256:
                    first_of_file.setdefault(f.sha256, unit)
    return duplicates


def require_cached_weights(units: list[Unit], hub_dir: Path) -> None:
    """Offline, a unit that must load its weights needs them in the hub cache: one the hub
    listed earlier (its metadata is kept) but that was never downloaded is unresolved here,
    not a failed download later."""
    for unit in units:
        ref = unit.checkpoint
        if unit.error or unit.duplicate_of or unit.layout is None or ref.source != "hub":
            continue
        if not (ref.local_only or hub_offline()):
            continue
        folder = snapshot_folder(hub_dir, ref.model, unit.commit)
        missing = [name for name in unit.layout.names if not (folder / name).is_file()]
        if missing:
            unit.error = f"weights {not_cached_reason(True)}: {missing[0]}" + (
                f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            )


def apply_duplicate_policy(
    spec: Spec, units: list[Unit], duplicates: list[Duplicate], references: set[CheckpointRef]
) -> None:
    """``loading.duplicates`` on the whole duplicates: skip (copy the earlier revision's rows),
    fail (each is a failed checkpoint), or compute (nothing changes here). A reference
    checkpoint of a cross-checkpoint analysis runs whatever the policy, for its sketch."""
    policy = spec.loading.duplicates
    by_ref = {u.checkpoint: u for u in units}
    for duplicate in duplicates:
        unit = by_ref[duplicate.unit]
        # A reference checkpoint always runs: the other checkpoints' cells read its sketch.
        if not duplicate.whole or policy == "compute" or duplicate.unit in references:
            continue
        if policy == "fail":
            unit.error = f"same weights as {duplicate.same_as.revision} (loading.duplicates: fail)"
        else:
            unit.duplicate_of = duplicate.same_as

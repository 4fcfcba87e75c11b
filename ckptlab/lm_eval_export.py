"""lm-eval-compatible JSON per (model, checkpoint, num_fewshot), laid out like Pythia's
published evaluations, so a file of ours can be diffed against theirs.

The layout is that of ``evals/pythia-v1/`` in https://github.com/EleutherAI/pythia, e.g.

    evals/pythia-v1/pythia-160m/zero-shot/160m_step23000.json
    evals/pythia-v1/pythia-160m/five-shot/160m-5shot_step13000.json
    evals/pythia-v1/pythia-1.4b-deduped/zero-shot/1.4b-deduped_step0.json
    evals/pythia-v1/pythia-1.4b-deduped/five-shot/1.4b-deduped-5shot_step143000.json

so ``OUT`` here plays ``evals/pythia-v1``:

    OUT/<repo name>/<shots>/<label>[-<n>shot]_step<N>.json

- ``<repo name>``: the model id's last part (``EleutherAI/pythia-160m`` -> ``pythia-160m``);
  when two exported models share it, their full ids (``/`` -> ``__``) instead;
- ``<shots>``: ``zero-shot``, ``five-shot`` (Pythia's two), likewise ``one-shot`` to
  ``ten-shot``, else ``<n>-shot``;
- ``<label>``: the repo name without its first ``-`` word (``pythia-160m`` -> ``160m``,
  ``pythia-1.4b-deduped`` -> ``1.4b-deduped``, ``pico-xs`` -> ``xs``), ``-<n>shot`` added for
  n > 0 as Pythia does (``160m-5shot``);
- ``_step<N>`` when the revision is ``step<N>`` (Pythia, pico); otherwise ``_<revision>``
  (OLMo's ``stage1-step1000-tokens4B``), since there a step alone can name two checkpoints.

Each file has Pythia's top-level keys (those files come from the 2022 harness):

- ``results``: ``{task: {"acc": .., "acc_stderr": .., "acc_norm": .., ...}}``, metric names as
  stored: lm-eval's without its ``,none`` filter suffix (which is how Pythia's files spell
  them too; another filter stays as ``metric/filter``, ``metric_stderr/filter``); each metric
  followed by its ``_stderr`` where it has one (perplexity only with a bootstrap). NaN/inf
  are ``null`` (strict JSON);
- ``versions``: ``{task: task version}`` from the cell's lm-eval context (null if unknown);
- ``config``: Pythia's keys that still mean something (``model``, ``model_args``,
  ``num_fewshot``, ``batch_size``, ``device``, ``limit``, ``bootstrap_iters``), plus lm-eval
  0.4's ``model_revision``, ``model_sha`` and ``fewshot_seed``, and ``dtype``. The checkpoint
  identity is ckptlab's (model repo id, revision, commit sha of the ``checkpoints`` table),
  never what the harness recorded. Where the tasks of one file come from cells whose value
  differs, the value is null and ``ckptlab.cells`` has each cell's;

and, cheap to add from lm-eval 0.4's results file, ``n-shot`` ``{task: shots}``,
``n-samples`` ``{task: {"effective": docs[, "original": docs]}}`` (original only when the
cell had no ``limit``: then every document was evaluated) and ``lm_eval_version``. Not
written: ``configs`` (the full task YAMLs), ``higher_is_better``, ``samples``, ``groups``.
A ``ckptlab`` key says where every number came from: the checkpoint, and per cell its key,
run, spec, computed_at, params.

Which cells: ``analysis = 'lm_eval'`` rows with ``item`` NULL, a task, and a metric not
starting with ``doc_`` (per-document rows). When several stored cells give the same
(model, revision, task, num_fewshot), e.g. runs with different ``limit``, the one computed
last wins; the others are listed in ``ckptlab.superseded`` with their params and noted.

Owns: the files' layout and keys, and which stored cells are exported. Must not: write to the
results database (it is read read-only) or compute a value: every number is a stored one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ckptlab.errors import one_line
from ckptlab.results import ResultStore

ANALYSIS = "lm_eval"
N_DOCS = "n_docs"
STDERR = "_stderr"
SHOT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHOT_WORDS += ("ten",)
# Pythia's config keys that mean something for us; no_cache and description_dict do not.
PYTHIA_CONFIG_KEYS = ("model", "model_args", "num_fewshot", "batch_size", "device", "limit")
PYTHIA_CONFIG_KEYS += ("bootstrap_iters",)
NEVER = dt.datetime.min  # a cell without computed_at (hand-made rows) sorts first
HARNESS_MODEL = "hf"  # lm-eval 0.4's name for its transformers model class (HFLM)


class ExportError(ValueError):
    """Nothing to export, or a selection that names nothing; one line, exit code 1 (as
    ``ckptlab report`` and ``jobs`` for an unknown run or job)."""


@dataclass
class Exported:
    out: Path
    paths: list[Path] = field(default_factory=list)
    models: int = 0
    checkpoints: int = 0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- naming


def shot_folder(shots: int | None) -> str:
    if shots is None:
        return "default-shot"  # the task's own default; the analysis records shots, though
    return f"{SHOT_WORDS[shots]}-shot" if 0 <= shots < len(SHOT_WORDS) else f"{shots}-shot"


def repo_name(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


def label(model: str) -> str:
    """Pythia's file label: the repo name without its first word (``pythia-160m`` -> ``160m``)."""
    name = repo_name(model)
    return name.split("-", 1)[1] if "-" in name else name


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def relative_path(model: str, revision: str, step: int, shots: int | None, folder: str) -> Path:
    stem = label(model) + (f"-{shots}shot" if shots else "")
    tail = f"step{step}" if revision == f"step{step}" else _safe(revision)
    return Path(_safe(folder)) / shot_folder(shots) / f"{_safe(stem)}_{tail}.json"


def _folders(models: list[str]) -> dict[str, str]:
    """Each model's folder: its repo name, or its full id where two models share the name."""
    names = [repo_name(m) for m in models]
    return {
        m: (repo_name(m) if names.count(repo_name(m)) == 1 else m.replace("/", "__"))
        for m in models
    }


# ------------------------------------------------------------------------------ reading


def _selection_sql(store: ResultStore, spec_name: str | None, run_id: str | None):
    """The SQL filter and its parameters for a spec's or a run's cells (as ``ckptlab report``
    selects them), or none; ExportError for an unknown or ambiguous run or spec."""
    if spec_name is None and run_id is None:
        return "", [], "the database"
    from ckptlab.report import ReportError, resolve_selection

    try:
        selection = resolve_selection(store, spec_name, run_id)
    except ReportError as err:
        raise ExportError(str(err)) from None
    # A spec's cells: those its runs planned (run_cells), also when another spec's run
    # computed them first; a run's: its spec's cells as they were when it finished.
    runs = "SELECT run_id FROM runs WHERE spec_name = ?"
    if selection.run_id is not None:
        runs = "SELECT run_id FROM runs WHERE run_id = ?"
    sql = (
        " AND (r.cell_key IN (SELECT cell_key FROM run_cells WHERE run_id IN"
        f" ({runs})) OR r.spec_name = ?)"
    )
    params: list = [selection.run_id or selection.spec_name, selection.spec_name]
    if selection.run_id is not None and selection.until is not None:
        sql += " AND r.computed_at <= ?"
        params.append(selection.until)
    return sql, params, selection.describe()


def load_rows(
    store: ResultStore, spec_name: str | None = None, run_id: str | None = None
) -> tuple[pl.DataFrame, str]:
    """The lm_eval task-level rows to export (read-only), and what was selected, in words."""
    import duckdb

    if not store.path.exists():
        raise ExportError(f"no results database at {store.path}")
    where, params, selected = _selection_sql(store, spec_name, run_id)
    sql = (
        "SELECT r.model, r.revision, r.step, r.commit_sha, r.suite, r.size, r.seed,"
        " r.tokens_seen, r.duplicate_of, r.task, r.shots, r.metric, r.value, r.cell_key,"
        " r.params_json, r.params_hash, r.analysis_version, r.run_id, r.spec_name,"
        " r.computed_at, r.dtype, c.device"
        " FROM results r JOIN cells c USING (cell_key)"
        " WHERE r.analysis = ? AND r.item IS NULL AND r.layer IS NULL AND r.task IS NOT NULL"
        " AND NOT starts_with(r.metric, 'doc_')" + where
    )
    try:
        rows = store.query(sql, [ANALYSIS, *params])
    except duckdb.Error as err:
        first = one_line(str(err), first=True) or type(err).__name__
        raise ExportError(f"{store.path}: {first}") from None
    if rows.height == 0:
        raise ExportError(
            f"no {ANALYSIS} results in {selected} ({store.path}): run a spec with the "
            f"{ANALYSIS} analysis first"
        )
    return rows, selected


# ---------------------------------------------------------------------------- building


def _params(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _context(params: dict) -> dict:
    context = params.get("context")
    return context if isinstance(context, dict) else {}


def _task_context(params: dict, task: str) -> dict:
    tasks = _context(params).get("tasks")
    entry = tasks.get(task) if isinstance(tasks, dict) else None
    return entry if isinstance(entry, dict) else {}


def _iso(value) -> str | None:
    return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value


def _metrics(rows: pl.DataFrame) -> dict:
    """One task's metrics in lm-eval's order: each name, then its ``_stderr``."""
    values = {}
    for metric, value in rows.select("metric", "value").iter_rows():
        if metric != N_DOCS:
            values.setdefault(metric, _finite(value))

    def order(name: str) -> tuple[str, str, bool]:
        # A filter other than lm-eval's "none" is stored as "metric/filter", its stderr as
        # "metric_stderr/filter": keep each next to its metric.
        metric, _, filter_name = name.partition("/")
        stderr = metric.endswith(STDERR)
        return (metric[: -len(STDERR)] if stderr else metric, filter_name, stderr)

    return {name: values[name] for name in sorted(values, key=order)}


def _common(values: list, key: str, differ: list[str]):
    """The one value every cell of a file agrees on; None (and the key noted) otherwise."""
    distinct = {json.dumps(v, sort_keys=True, default=str) for v in values}
    if len(distinct) == 1:
        return values[0]
    differ.append(key)
    return None


def _cell_info(cell: dict, params: dict) -> dict:
    return {
        "run_id": cell["run_id"],
        "spec_name": cell["spec_name"],
        "computed_at": _iso(cell["computed_at"]),
        "analysis_version": cell["analysis_version"],
        "params_hash": cell["params_hash"],
        "device": cell["device"],
        "dtype": cell["dtype"],
        "params": params,
    }


def build_document(rows: pl.DataFrame, exported_by: str | None = None) -> tuple[dict, list[str]]:
    """The JSON of one (model, revision, commit, shots): ``rows`` are its lm_eval rows, every
    cell that gave any of its tasks. Returns it and notes (superseded cells)."""
    first = rows.row(0, named=True)
    model, revision, shots = first["model"], first["revision"], first["shots"]
    cells = {
        c["cell_key"]: c
        for c in rows.unique("cell_key", keep="first").drop("metric", "value", "task").to_dicts()
    }
    params = {key: _params(cell["params_json"]) for key, cell in cells.items()}
    results, versions, n_shot, n_samples = {}, {}, {}, {}
    chosen: dict[str, list[str]] = {}  # cell key -> the tasks it supplies here
    superseded, notes = [], []

    def when(key: str) -> tuple:
        # The cell computed last gives a task; ties (same instant): the larger key, so the
        # choice does not depend on row order.
        return (cells[key]["computed_at"] or NEVER, key)

    for (task,), task_rows in sorted(rows.group_by("task"), key=lambda g: g[0][0]):
        keys = sorted(set(task_rows["cell_key"]), key=when)
        key, older = keys[-1], keys[:-1]
        mine = task_rows.filter(pl.col("cell_key") == key)
        results[task] = _metrics(mine)
        versions[task] = _task_context(params[key], task).get("version")
        n_shot[task] = shots
        docs = mine.filter(pl.col("metric") == N_DOCS)["value"]
        if docs.len() and _finite(docs[0]) is not None:
            n_samples[task] = {"effective": int(docs[0])}
            if "limit" in params[key] and params[key]["limit"] is None:
                n_samples[task]["original"] = int(docs[0])
        chosen.setdefault(key, []).append(task)
        for old in older:
            info = _cell_info(cells[old], params[old])
            superseded.append({"task": task, "cell_key": old, "instead_of": key} | info)
        if older:
            notes.append(
                f"{model} {revision} {task} {shots}-shot: {len(keys)} cells, used the latest "
                f"({key[:12]}, computed {_iso(cells[key]['computed_at'])}); the others are in "
                "ckptlab.superseded"
            )
    used = [params[k] for k in chosen]
    differ: list[str] = []
    config = {
        "model": HARNESS_MODEL,
        "model_args": f"pretrained={model},revision={revision}",
        "model_revision": revision,
        "model_sha": first["commit_sha"],
        "num_fewshot": shots,
        "batch_size": _common([p.get("batch_size") for p in used], "batch_size", differ),
        "device": _common([cells[k]["device"] for k in chosen], "device", differ),
        "dtype": _common([cells[k]["dtype"] for k in chosen], "dtype", differ),
        "limit": _common([p.get("limit") for p in used], "limit", differ),
        "bootstrap_iters": _common(
            [p.get("bootstrap_iters") for p in used], "bootstrap_iters", differ
        ),
        "fewshot_seed": _common([p.get("fewshot_seed") for p in used], "fewshot_seed", differ),
    }
    version = _common([_context(p).get("lm_eval_version") for p in used], "lm_eval_version", differ)
    document = {
        "results": results,
        "versions": versions,
        "config": config,
        "n-shot": n_shot,
        "n-samples": n_samples,
        "lm_eval_version": version,
        "ckptlab": {
            "model": model,
            "revision": revision,
            "step": first["step"],
            "commit_sha": first["commit_sha"],
            "suite": first["suite"],
            "size": first["size"],
            "seed": first["seed"],
            "tokens_seen": first["tokens_seen"],
            "duplicate_of": first["duplicate_of"],
            "exported_by": exported_by,
            "differs_across_cells": differ,
            "cells": {
                k: {"tasks": tasks} | _cell_info(cells[k], params[k]) for k, tasks in chosen.items()
            },
            "superseded": superseded,
        },
    }
    return document, notes


# ----------------------------------------------------------------------------- writing


def _write_json(path: Path, document: dict) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text + "\n", encoding="utf-8")
    partial.replace(path)


def export_lm_eval(
    db: Path,
    out: Path,
    spec_name: str | None = None,
    run_id: str | None = None,
    models: list[str] | None = None,
) -> Exported:
    """Write one JSON per (model, checkpoint, num_fewshot) under ``out``; ``models``: model
    ids or repo names (``pythia-160m``) to keep, default all."""
    from ckptlab.code_version import code_version

    rows, selected = load_rows(ResultStore(db), spec_name, run_id)
    if models:
        known = sorted(set(rows["model"]))
        wanted = {m for m in known if m in models or repo_name(m) in models}
        missing = [m for m in models if not any(m in (k, repo_name(k)) for k in wanted)]
        if missing:
            raise ExportError(
                f"no {ANALYSIS} results for model {', '.join(map(repr, missing))} in "
                f"{selected} (models: {', '.join(known)})"
            )
        rows = rows.filter(pl.col("model").is_in(sorted(wanted)))
    folders = _folders(sorted(set(rows["model"])))
    exported, version = Exported(Path(out)), code_version()
    targets: dict[Path, tuple] = {}  # path -> (latest computed_at, commit) of what is written
    groups = rows.group_by("model", "revision", "commit_sha", "shots")
    for (model, revision, commit, shots), group in sorted(groups, key=lambda g: str(g[0])):
        step = group["step"][0]
        path = exported.out / relative_path(model, revision, step, shots, folders[model])
        latest = group["computed_at"].max() or NEVER
        # A branch re-uploaded under the same name (a second commit): one file per name, the
        # commit computed last; never a mix of two commits' numbers.
        if path in targets and targets[path] >= (latest, commit):
            exported.notes.append(f"{model} {revision}: skipped commit {commit[:12]} (older)")
            continue
        if path in targets:
            exported.notes.append(
                f"{model} {revision}: skipped commit {targets[path][1][:12]} (older)"
            )
        document, notes = build_document(group, version)
        _write_json(path, document)
        targets[path] = (latest, commit)
        exported.notes.extend(notes)
    exported.paths = sorted(targets)
    exported.models = len(folders)
    exported.checkpoints = rows.select("model", "revision").unique().height
    return exported

"""``ckptlab sync``: MLflow lineage of runs that could not log it (the tracking server was
unreachable), rebuilt from DuckDB. Idempotent: a run whose MLflow parent is complete is
skipped; a parent cut short is deleted and logged again.

Owns: ``sync`` and what counts as a complete MLflow parent (its ``ckptlab.lineage`` tag). Must
not: change a run's cells or metrics (it reads them; its one write is the run's ``lineage``
column), or log anything the results database does not hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl
import yaml

from ckptlab.lineage import Lineage, Value
from ckptlab.results import ResultStore
from ckptlab.spec import Spec


class SyncError(RuntimeError):
    """MLflow cannot take the lineage now; ``str(err)`` is one line."""


@dataclass(frozen=True)
class _Checkpoint:  # what Lineage.log_checkpoint reads of a checkpoint
    model: str
    revision: str
    step: int
    suite: str | None
    size: str | None
    seed: int | None
    tokens_seen: int | None = None
    stage: str | None = None


def _labels(spec: Spec) -> list[tuple[str, str, dict]]:
    """(analysis, entry label, its params) of the spec's entries: a cell's label is the
    entry whose params its stored params contain."""
    from ckptlab.analyses.registry import get_analysis

    out = []
    for entry in spec.analyses:
        params = get_analysis(entry.name).params_model.model_validate(entry.params)
        out.append((entry.name, entry.key, params.model_dump(mode="json")))
    return out


def _label_of(labels, analysis: str, params_json: str) -> str:
    stored = json.loads(params_json)
    for name, label, params in labels:
        if name == analysis and all(stored.get(k) == v for k, v in params.items()):
            return label
    return analysis


def sync(store: ResultStore, tracking_uri: str, run_ids: list[str] | None = None) -> list[str]:
    """Log the pending runs (or ``run_ids``) to MLflow; returns the runs logged."""
    where = "run_id IN (SELECT unnest(?))" if run_ids else "lineage = 'pending'"
    runs = store.query(
        f"SELECT run_id, spec_yaml, code_version, status, cells_computed, cells_cached,"
        f" cells_failed FROM runs WHERE {where} ORDER BY started_at",
        [run_ids] if run_ids else None,
    )
    logged = []
    for run in runs.iter_rows(named=True):
        spec = Spec.model_validate(yaml.safe_load(run["spec_yaml"]))  # no file checks now
        lineage = Lineage(tracking_uri, spec, run["spec_yaml"], run["run_id"], run["code_version"])
        if lineage.pending:
            raise SyncError(lineage.pending)
        if _complete_parent(lineage, run["run_id"]):
            store.set_lineage(run["run_id"], "logged", None)
            continue
        parent = lineage.start()
        labels = _labels(spec)
        # The cells the run's plan covered (run_cells), stored ones an earlier run computed
        # included, as the live run logs them: each MLflow run shows whole curves. Databases
        # older than run_cells have only the cells the run computed.
        rows = store.query(
            "SELECT ch.model, ch.revision, ch.step, ch.suite, ch.size, ch.seed, c.commit_sha,"
            " ch.tokens_seen, ch.stage, ch.weight_format, ch.duplicate_of,"
            " c.analysis, c.params_json, i.name AS input_set, m.metric, m.layer, m.value,"
            " m.task, m.shots, m.task_seed, c.run_id FROM metrics m JOIN cells c USING (cell_key)"
            " JOIN checkpoints ch ON ch.commit_sha = c.commit_sha"
            " LEFT JOIN input_sets i ON i.input_set_id = c.input_set_id"
            " WHERE m.item IS NULL AND (c.run_id = ? OR c.cell_key IN"
            " (SELECT cell_key FROM run_cells WHERE run_id = ?)) ORDER BY ch.model, ch.step",
            [run["run_id"], run["run_id"]],
        )
        by_checkpoint: dict[tuple, list[tuple]] = {}
        for r in rows.iter_rows(named=True):
            key = (r["model"], r["revision"], r["step"], r["suite"], r["size"], r["seed"],
                   r["commit_sha"], r["tokens_seen"], r["stage"], r["weight_format"],
                   r["duplicate_of"])  # fmt: skip
            label = _label_of(labels, r["analysis"], r["params_json"])
            by_checkpoint.setdefault(key, []).append(
                Value(label, r["analysis"], r["metric"], r["layer"], r["input_set"], r["value"],
                      r["task"], r["shots"], r["task_seed"])
            )  # fmt: skip
        for key, values in by_checkpoint.items():
            model, revision, step, suite, size, seed, commit, tokens, stage, fmt, twin = key
            checkpoint = _Checkpoint(model, revision, step, suite, size, seed, tokens, stage)
            lineage.log_checkpoint(checkpoint, commit, values, fmt, twin)
        counts = {k: run[k] or 0 for k in ("cells_computed", "cells_cached", "cells_failed")}
        mine = rows.filter(pl.col("run_id") == run["run_id"]).height  # as the live run counts
        counts |= {"checkpoints": len(by_checkpoint), "metric_rows": mine}
        lineage.log_report(store.path)
        lineage.finish((run["status"] or "finished").upper(), counts)
        if lineage.pending:
            raise SyncError(lineage.pending)
        store.set_lineage(run["run_id"], "logged", parent)
        logged.append(run["run_id"])
    return logged


def _complete_parent(lineage: Lineage, run_id: str) -> bool:
    """Whether MLflow already holds this run's complete lineage; a partial one is deleted."""
    client = lineage.client
    experiment = client.get_experiment_by_name(lineage.spec.name)
    if experiment is None:
        return False
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`ckptlab.run_id` = '{run_id}'"
    )
    for parent in found:
        if parent.data.tags.get("ckptlab.lineage") == "complete":
            return True
        children = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        )
        for child in children:
            client.delete_run(child.info.run_id)
        client.delete_run(parent.info.run_id)
    return False

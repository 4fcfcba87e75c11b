"""``ckptlab validate``, ``schema``, ``plan`` and ``run``.

Owns: those commands' options, the plan's and the run's ``--json`` shapes, the spec's JSON
schema, the choice of executor and a run's exit code. Must not: import ``orchestrator/``, the
results store or anything heavy at module level (``validate``, ``plan`` and a ``run`` with
nothing to do import no torch: tests/test_cli_imports.py), or write results itself
(``orchestrator/runner.py`` does).
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ckptlab.cli.app import (
    DbOption,
    JsonOption,
    Spec,
    SpecArg,
    SpecError,
    TrackingOption,
    WaitForWorkersOption,
    app,
    console,
    db_of,
    emit_json,
    err_console,
    fail,
    hub_cache_dir,
    human,
    load,
    plan_of,
    redacted,
    tracking_of,
)


@app.command()
def validate(spec_path: SpecArg) -> None:
    """Check a spec without running anything (exit code 2 when it is invalid)."""
    from ckptlab.home import hub_downloads_off
    from ckptlab.orchestrator.plan import analysis_contexts

    spec, _ = load(spec_path)
    unchecked: list[str] = []
    # What an analysis reads beyond its params (a task's data, an lm-eval task name), from
    # what is here: validate never downloads, so hub data not cached yet is a note.
    try:
        with hub_downloads_off():
            analysis_contexts(spec, not_cached=unchecked.append)
    except SpecError as err:
        raise fail(f"{spec_path}: {err}", 2) from None
    for line in unchecked:
        err_console.print(f"note: not checked, {line}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]ok[/green] {spec_path}: spec {spec.name!r}, hash {spec.spec_hash()[:12]}"
    )


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def spec_json_schema() -> dict:
    """The spec's JSON Schema (pydantic's, draft 2020-12), for editors and other tools. It
    checks the shape (fields, types, unknown fields); ``ckptlab validate`` also checks what
    only the catalog and the registry know (sizes, steps, analyses' params)."""
    generated = Spec.model_json_schema()
    generated.pop("title", None)
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "ckptlab spec",
        "description": "A ckptlab run: models x checkpoint steps, input sets, analyses "
        "(docs/specs.md). `ckptlab validate SPEC` checks what a schema cannot: "
        "suites, sizes, steps, analyses and their params.",
        **generated,
    }


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (for editors: docs/specs.md, 'Editor support')."""
    sys.stdout.write(json.dumps(spec_json_schema(), indent=2) + "\n")


def plan_summary(spec: Spec, the_plan) -> dict:
    """``ckptlab plan --json``: the plan's counts and its units, for scripts."""
    return {
        "spec": spec.name,
        "spec_hash": spec.spec_hash(),
        "checkpoints": len(the_plan.units),
        "checkpoints_todo": len(the_plan.todo),
        "cells_total": the_plan.total_cells,
        "cells_done": the_plan.total_cells - the_plan.missing_cells,
        "cells_todo": the_plan.missing_cells,
        "units": [
            {
                "model": u.checkpoint.model,
                "revision": u.checkpoint.revision,
                "step": u.checkpoint.step,
                "commit": u.commit,
                "cells": len(u.cells),
                "missing": len(u.missing),
                "weight_format": u.layout.format if u.layout else None,
                "weights": [
                    {"file": f.path, "size": f.size, "sha256": f.sha256}
                    for f in (u.layout.files if u.layout else ())
                ],
                "duplicate_of": u.duplicate_of.revision if u.duplicate_of else None,
            }
            for u in the_plan.units
        ],
        "unresolved": [
            {
                "model": u.checkpoint.model,
                "revision": u.checkpoint.revision,
                "step": u.checkpoint.step,
                "error": u.error,
            }
            for u in the_plan.units
            if u.error is not None and u.missing  # all stored: nothing it could not do
        ],
        "duplicates": [
            {
                "model": d.unit.model,
                "revision": d.unit.revision,
                "same_as": d.same_as.revision,
                "files": list(d.files),
                "whole": d.whole,
            }
            for d in the_plan.duplicates
        ],
        "bytes_to_download": the_plan.bytes_to_download(),
    }


@app.command()
def plan(spec_path: SpecArg, db: DbOption = None, json_output: JsonOption = False) -> None:
    """Dry run: units, cells, what is already done, which checkpoints. Starts no Ray."""
    spec, _ = load(spec_path)
    the_plan = plan_of(spec, spec_path, db_of(spec, db))
    if json_output:
        emit_json(plan_summary(spec, the_plan))
        return
    table = Table(title=f"plan for {spec.name}")
    for column in ("model", "checkpoints", "steps", "cells", "done", "to compute", "unresolved"):
        table.add_column(column)
    by_model: dict[str, list] = {}
    for unit in the_plan.units:
        by_model.setdefault(unit.checkpoint.model, []).append(unit)
    for model, units in by_model.items():
        steps = [u.checkpoint.step for u in units]
        shown = ", ".join(map(str, steps[:8])) + (f", ... {steps[-1]}" if len(steps) > 8 else "")
        cells = sum(len(u.cells) for u in units)
        missing = sum(len(u.missing) for u in units)
        table.add_row(
            model,
            str(len(units)),
            shown,
            str(cells),
            str(cells - missing),
            str(missing),
            str(sum(bool(u.error and u.missing) for u in units)),
        )
    console.print(table)
    unresolved_count = sum(bool(u.error and u.missing) for u in the_plan.units)
    console.print(
        f"{len(the_plan.units)} checkpoints ({len(the_plan.todo)} with work), "
        f"{the_plan.total_cells} cells: {the_plan.total_cells - the_plan.missing_cells} done, "
        f"{the_plan.missing_cells} to compute"
        + (f"; {unresolved_count} checkpoints unresolved" if unresolved_count else ""),
        soft_wrap=True,
    )
    for line in weights_summary(the_plan):
        console.print(line, highlight=False, soft_wrap=True)
    # One line per model and reason: an offline plan of 154 Pythia steps is one line.
    unresolved: dict[tuple[str, str], list] = {}
    for unit in the_plan.units:
        if unit.error and unit.missing:
            unresolved.setdefault((unit.checkpoint.model, unit.error), []).append(unit)
    for (model, reason), units in unresolved.items():
        revisions = [u.checkpoint.revision for u in units]
        shown = ", ".join(revisions[:4]) + (
            f", ... ({len(revisions)})" if len(revisions) > 4 else ""
        )
        console.print(
            f"[yellow]unresolved[/yellow] {model}: {shown}: {reason}",
            highlight=False,
            soft_wrap=True,
        )


def weights_summary(the_plan) -> list[str]:
    """Per model: how its weights are stored, what a run downloads, and which revisions
    repeat another's weights (whole, or some shards), from the hub's metadata."""
    from ckptlab.weights import format_bytes

    to_download = the_plan.bytes_to_download()["models"]
    lines = []
    by_model: dict[str, list] = {}
    for unit in the_plan.units:
        by_model.setdefault(unit.checkpoint.model, []).append(unit)
    policy = the_plan.spec.loading.duplicates
    for model, units in by_model.items():
        formats = sorted({u.layout.format for u in units if u.layout})
        if not formats:
            continue
        files = max(len(u.layout.files) for u in units if u.layout)
        download = (
            f", {format_bytes(to_download[model])} to download" if model in to_download else ""
        )
        lines.append(
            f"{model}: {' + '.join(formats)} weights ({files} file{'s' * (files > 1)} per "
            f"revision){download}"
        )
        whole = [d for d in the_plan.duplicates if d.unit.model == model and d.whole]
        if whole:
            groups: dict[str, list[str]] = {}
            for d in whole:
                groups.setdefault(d.same_as.revision, []).append(d.unit.revision)
            # Each group: its members and the revision they repeat; a long one by its count.
            shown = ", ".join(
                f"{' and '.join(members) if len(members) <= 2 else f'{len(members)} revisions'}"
                f" = {revision}"
                for revision, members in sorted(groups.items(), key=lambda g: -len(g[1]))
            )
            action = {"skip": "copied, not computed", "compute": "computed anyway",
                      "fail": "failed"}[policy]  # fmt: skip
            lines.append(
                f"[yellow]duplicates[/yellow] {model}: {len(whole)} of {len(units)} revisions "
                f"repeat an earlier revision's weights ({shown}): {action} "
                f"(loading.duplicates: {policy})"
            )
        for d in the_plan.duplicates:
            if d.unit.model == model and not d.whole:
                lines.append(
                    f"[yellow]shared shards[/yellow] {model}@{d.unit.revision} shares "
                    f"{', '.join(d.files)} with {d.same_as.revision} (computed: other shards "
                    "differ)"
                )
    return lines


class Executor(StrEnum):
    ray = "ray"
    inline = "inline"


AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster to attach to: auto, HOST:PORT or ray://HOST:PORT. Default: "
        "RAY_ADDRESS when set (as inside a Ray Job), else a private local Ray on 127.0.0.1.",
    ),
]


@app.command()
def run(
    spec_path: SpecArg,
    db: DbOption = None,
    tracking_uri: TrackingOption = None,
    address: AddressOption = None,
    executor: Annotated[
        Executor, typer.Option(help="ray (default) or inline: units in this process.")
    ] = Executor.ray,
    wait_for_workers: WaitForWorkersOption = 0,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed", help="Compute only the cells that failed before (not new ones)."
        ),
    ] = False,
    expect_version: Annotated[
        str | None,
        typer.Option(
            "--expect-version",
            hidden=True,  # set by `ckptlab submit --code image`
            help="Refuse to run unless this ckptlab has that release; say so when its code "
            "(git commit) differs.",
        ),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="At the end, also render the report (ckptlab report) into the MLflow parent "
            "run's artifacts (seconds after the last unit).",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Run a spec: compute the missing cells, store them in DuckDB, log them to MLflow.

    Exit code 0 when every cell was stored, 1 when cells failed (the summary names them) or
    the cluster or the results file was not usable, 2 for a bad spec or option, 130 when
    interrupted."""
    spec, text = load(spec_path)  # a bad spec fails before the heavy imports below
    db_path, uri = db_of(spec, db), tracking_of(spec, tracking_uri)
    # With --json, stdout carries the one JSON object: whatever else would be written there
    # while the run goes (the progress, a library's print) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext():
        summary = _run_spec(
            spec,
            text,
            spec_path,
            db_path,
            uri,
            _Backend(executor, address, wait_for_workers),
            retry_failed,
            expect_version,
            human(json_output),
            report,
        )
    if json_output:
        emit_json(run_summary(spec, summary, db_path, uri))
        if summary.cells_failed:
            raise typer.Exit(1)
        return
    if summary.nothing_to_do:
        return
    table = Table(title=f"{spec.name}: run {summary.run_id[:8]}", show_header=False)
    table.add_row("checkpoints", f"{summary.checkpoints} ({summary.checkpoints_run} with work)")
    table.add_row("cells computed", str(summary.cells_computed))
    if summary.cells_copied:
        table.add_row("cells copied (duplicate weights)", str(summary.cells_copied))
    table.add_row("cells already stored", str(summary.cells_cached))
    table.add_row("cells failed", str(summary.cells_failed))
    table.add_row("metric rows written", str(summary.metric_rows))
    table.add_row("time", f"{summary.seconds:.1f}s")
    table.add_row("results", str(db_path))
    table.add_row("mlflow", f"{redacted(uri)} (run {summary.mlflow_run_id})")
    console.print(table)
    for failure in summary.failures[:20]:
        console.print(f"[red]failed[/red] {failure}", highlight=False, soft_wrap=True)
    if len(summary.failures) > 20:
        console.print(f"... and {len(summary.failures) - 20} more (SELECT * FROM failures)")
    if summary.lineage_pending:
        console.print(
            f"[yellow]lineage pending[/yellow]: {summary.lineage_pending}; log it later with "
            f"`ckptlab sync --db {db_path}`",
            highlight=False,
            soft_wrap=True,
        )
    if summary.cells_failed:
        console.print(
            f"{summary.cells_failed} cells failed; `ckptlab run {spec_path} --retry-failed` "
            "computes only those",
            highlight=False,
        )
        raise typer.Exit(1)


@dataclass
class _Backend:
    executor: Executor
    address: str | None
    wait_for_workers: float


def _run_spec(
    spec: Spec,
    text: str,
    spec_path: Path,
    db_path: Path,
    uri: str,
    backend: _Backend,
    retry_failed: bool,
    expect_version: str | None,
    out: Console,
    report: bool = False,
):
    """Plan and run: the RunSummary (run_id None when there was nothing to compute); the text
    for people goes to ``out``."""
    import ckptlab
    from ckptlab.code_version import code_version

    if expect_version:
        release = expect_version.split("+")[0]
        if release != ckptlab.__version__:
            raise fail(
                f"this is ckptlab {ckptlab.__version__}, the job was planned with "
                f"{expect_version}; install that version or submit with --code ship",
                2,
            )
        if expect_version != code_version():
            out.print(
                f"[yellow]note[/yellow] this install is ckptlab {code_version()}; the job was "
                f"planned with {expect_version} (same release, other code?)",
                highlight=False,
            )
    from ckptlab.orchestrator.cluster import AddressError
    from ckptlab.orchestrator.executors import InlineExecutor, RayExecutor

    try:  # a bad --address or RAY_ADDRESS fails before any planning
        executor = (
            RayExecutor(spec.resources, backend.address, backend.wait_for_workers)
            if backend.executor == Executor.ray
            else InlineExecutor(spec.resources)
        )
    except AddressError as err:
        raise fail(str(err), 2) from None
    try:
        return _plan_and_run(
            spec, text, spec_path, db_path, uri, executor, retry_failed, out, report
        )
    except KeyboardInterrupt:  # planning's reads included (ResultStore converts DuckDB's)
        raise fail(
            "interrupted: every finished checkpoint is stored; run again to resume", 130
        ) from None


def _plan_and_run(spec, text, spec_path, db_path, uri, executor, retry_failed, out, report):
    """The plan against what the DB holds, then the run of what is missing."""
    from ckptlab.orchestrator.cluster import ClusterError
    from ckptlab.orchestrator.executors import ResourceError
    from ckptlab.orchestrator.runner import RunSummary, run_plan
    from ckptlab.results import ResultsBusy

    # Ray starts (seconds) while the plan is made, when there is surely or likely work: the
    # results file is new, or an input set must be tokenized, so none of its cells can be
    # stored yet (unless the results file came from elsewhere: then Ray is shut down again).
    warm_up = None if retry_failed else executor.warm_up
    if warm_up is not None and not Path(db_path).exists():
        warm_up()
    try:
        the_plan = plan_of(spec, spec_path, db_path, before_tokenizing=warm_up)
        if retry_failed:
            try:
                only_failed(the_plan, db_path)
            except ResultsBusy as err:
                raise fail(str(err), 1) from None
        if not the_plan.todo:
            if retry_failed:
                out.print(
                    f"Nothing to retry: no failed cell of {spec.name!r} is missing from {db_path}."
                )
            else:
                out.print(
                    f"Nothing to compute: all {the_plan.total_cells} cells of {spec.name!r} over "
                    f"{len(the_plan.units)} checkpoints are already in {db_path}."
                )
            total = the_plan.total_cells
            return RunSummary(None, len(the_plan.units), 0, total, total - the_plan.missing_cells)
        try:
            return run_plan(
                the_plan,
                text,
                db_path,
                uri,
                hub_cache_dir(),
                executor,
                out,
                report_to_mlflow=report,
            )
        except (ResourceError, ClusterError, ResultsBusy) as err:
            raise fail(str(err), 1) from None
    finally:  # a Ray started for a plan that then had nothing to run, or failed
        executor.close()


def run_summary(spec: Spec, summary, db_path, tracking_uri: str) -> dict:
    """``ckptlab run --json``: the run's summary, for scripts (run_id null: nothing to do)."""
    return {
        "spec": spec.name,
        "spec_hash": spec.spec_hash(),
        "run_id": summary.run_id,
        "mlflow_run_id": summary.mlflow_run_id,
        "checkpoints": summary.checkpoints,
        "checkpoints_run": summary.checkpoints_run,
        "cells_total": summary.cells_total,
        "cells_computed": summary.cells_computed,
        "cells_copied": summary.cells_copied,
        "cells_cached": summary.cells_cached,
        "cells_failed": summary.cells_failed,
        "metric_rows": summary.metric_rows,
        "seconds": round(summary.seconds, 3),
        "failures": summary.failures,
        "duplicates": summary.duplicates,
        "lineage_pending": summary.lineage_pending,
        "db": str(db_path),
        "tracking_uri": redacted(tracking_uri),
    }


def only_failed(the_plan, db_path) -> None:
    """Keep, of the plan's missing cells, those that failed in an earlier run."""
    from ckptlab.results import ResultStore

    keys, unresolved = ResultStore(db_path).failed()
    for unit in the_plan.units:
        ref = unit.checkpoint
        unit.missing = [
            c
            for c in unit.missing
            # A checkpoint that did not resolve then (missing revision) may resolve now:
            # its cells have keys this time, and all of them are retried.
            if c.key in keys or (ref.model, ref.revision) in unresolved
        ]

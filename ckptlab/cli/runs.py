"""``ckptlab validate``, ``plan`` and ``run``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from ckptlab.cli.app import (
    DbOption,
    SpecArg,
    TrackingOption,
    WaitForWorkersOption,
    app,
    console,
    db_of,
    fail,
    hub_cache_dir,
    load,
    plan_of,
    redacted,
    tracking_of,
)


@app.command()
def validate(spec_path: SpecArg) -> None:
    """Check a spec without running anything (exit code 2 when it is invalid)."""
    spec, _ = load(spec_path)
    console.print(
        f"[green]ok[/green] {spec_path}: spec {spec.name!r}, hash {spec.spec_hash()[:12]}"
    )


@app.command()
def plan(spec_path: SpecArg, db: DbOption = None) -> None:
    """Dry run: units, cells, what is already done, which checkpoints. Starts no Ray."""
    spec, _ = load(spec_path)
    the_plan = plan_of(spec, spec_path, db_of(spec, db))
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
            str(sum(u.commit is None for u in units)),
        )
    console.print(table)
    unresolved_count = sum(u.commit is None for u in the_plan.units)
    console.print(
        f"{len(the_plan.units)} checkpoints ({len(the_plan.todo)} with work), "
        f"{the_plan.total_cells} cells: {the_plan.total_cells - the_plan.missing_cells} done, "
        f"{the_plan.missing_cells} to compute"
        + (f"; {unresolved_count} checkpoints unresolved" if unresolved_count else ""),
        soft_wrap=True,
    )
    # One line per model and reason: an offline plan of 154 Pythia steps is one line.
    unresolved: dict[tuple[str, str], list] = {}
    for unit in the_plan.units:
        if unit.error:
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
) -> None:
    """Run a spec: compute the missing cells, store them in DuckDB, log them to MLflow."""
    spec, text = load(spec_path)  # a bad spec fails before the heavy imports below
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
            console.print(
                f"[yellow]note[/yellow] this install is ckptlab {code_version()}; the job was "
                f"planned with {expect_version} (same release, other code?)",
                highlight=False,
            )
    from ckptlab.orchestrator.cluster import AddressError, ClusterError
    from ckptlab.orchestrator.executors import (
        InlineExecutor,
        RayExecutor,
        ResourceError,
    )
    from ckptlab.orchestrator.runner import run_plan
    from ckptlab.results import ResultsBusy

    try:  # a bad --address or RAY_ADDRESS fails before any planning
        backend = (
            RayExecutor(spec.resources, address, wait_for_workers)
            if executor == Executor.ray
            else InlineExecutor(spec.resources)
        )
    except AddressError as err:
        raise fail(str(err), 2) from None
    db_path = db_of(spec, db)
    the_plan = plan_of(spec, spec_path, db_path)
    if retry_failed:
        only_failed(the_plan, db_path)
    if not the_plan.todo:
        console.print(
            f"Nothing to compute: all {the_plan.total_cells} cells of {spec.name!r} over "
            f"{len(the_plan.units)} checkpoints are already in {db_path}."
        )
        return
    try:
        summary = run_plan(
            the_plan,
            text,
            db_path,
            tracking_of(spec, tracking_uri),
            hub_cache_dir(),
            backend,
            console,
        )
    except (ResourceError, ClusterError, ResultsBusy) as err:
        raise fail(str(err), 1) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted: every finished checkpoint is stored; run again to resume", 130
        ) from None

    table = Table(title=f"{spec.name}: run {summary.run_id[:8]}", show_header=False)
    table.add_row("checkpoints", f"{summary.checkpoints} ({summary.checkpoints_run} with work)")
    table.add_row("cells computed", str(summary.cells_computed))
    table.add_row("cells already stored", str(summary.cells_cached))
    table.add_row("cells failed", str(summary.cells_failed))
    table.add_row("metric rows written", str(summary.metric_rows))
    table.add_row("time", f"{summary.seconds:.1f}s")
    table.add_row("results", str(db_path))
    uri = redacted(tracking_of(spec, tracking_uri))
    table.add_row("mlflow", f"{uri} (run {summary.mlflow_run_id})")
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

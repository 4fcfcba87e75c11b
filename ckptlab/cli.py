"""``ckptlab``: run, plan, validate, query, pico build, analyses."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ckptlab.home import default_db_path, default_tracking_uri, hub_cache_dir
from ckptlab.spec import Spec, SpecError, load_spec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Representation analyses over every checkpoint of LM training runs.",
)
pico_app = typer.Typer(no_args_is_help=True, help="The pico suite: tiny GPT-NeoX models.")
app.add_typer(pico_app, name="pico")
console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[Path | None, typer.Option("--db", help="Results DuckDB file.")]
TrackingOption = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow URI.")]
SpecArg = Annotated[Path, typer.Argument(help="Spec YAML file.")]


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(path: Path) -> tuple[Spec, str]:
    try:
        spec = load_spec(path)
    except SpecError as err:
        raise _fail(f"{path}: {err}", 2) from None
    return spec, path.read_text()


def _plan(spec: Spec, spec_path: Path, db_path: Path):
    """The plan, or a one-line exit-2 error when an input set cannot be cut from its corpus."""
    from ckptlab.inputs import InputSetError
    from orchestrator.runner import make_plan

    try:
        return make_plan(spec, db_path, hub_cache_dir())
    except (InputSetError, SpecError) as err:  # SpecError: e.g. an ICL task file is missing
        raise _fail(f"{spec_path}: {err}", 2) from None


def _db(spec: Spec | None, db: Path | None) -> Path:
    return db or (spec.storage.db if spec and spec.storage.db else None) or default_db_path()


def _tracking(spec: Spec, uri: str | None) -> str:
    return uri or spec.storage.tracking_uri or default_tracking_uri()


@app.command()
def validate(spec_path: SpecArg) -> None:
    """Check a spec without running anything (exit code 2 when it is invalid)."""
    spec, _ = _load(spec_path)
    console.print(
        f"[green]ok[/green] {spec_path}: spec {spec.name!r}, hash {spec.spec_hash()[:12]}"
    )


@app.command()
def plan(spec_path: SpecArg, db: DbOption = None) -> None:
    """Dry run: units, cells, what is already done, which checkpoints. Starts no Ray."""
    spec, _ = _load(spec_path)
    the_plan = _plan(spec, spec_path, _db(spec, db))
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
    console.print(
        f"{len(the_plan.units)} checkpoints ({len(the_plan.todo)} with work), "
        f"{the_plan.total_cells} cells: {the_plan.total_cells - the_plan.missing_cells} done, "
        f"{the_plan.missing_cells} to compute"
    )
    for unit in the_plan.units:
        if unit.error:
            console.print(f"[yellow]unresolved[/yellow] {unit.checkpoint.label}: {unit.error}")


class Executor(StrEnum):
    ray = "ray"
    inline = "inline"


@app.command()
def run(
    spec_path: SpecArg,
    db: DbOption = None,
    tracking_uri: TrackingOption = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Attach to a running Ray cluster.")
    ] = None,
    executor: Annotated[
        Executor, typer.Option(help="ray (default) or inline: units in this process.")
    ] = Executor.ray,
) -> None:
    """Run a spec: compute the missing cells, store them in DuckDB, log them to MLflow."""
    from orchestrator.executors import (
        InlineExecutor,
        RayExecutor,
        ResourceError,
    )
    from orchestrator.runner import run_plan

    spec, text = _load(spec_path)
    db_path = _db(spec, db)
    the_plan = _plan(spec, spec_path, db_path)
    if not the_plan.todo:
        console.print(
            f"Nothing to compute: all {the_plan.total_cells} cells of {spec.name!r} over "
            f"{len(the_plan.units)} checkpoints are already in {db_path}."
        )
        return
    backend = (
        RayExecutor(spec.resources, address)
        if executor == Executor.ray
        else InlineExecutor(spec.resources)
    )
    try:
        summary = run_plan(
            the_plan,
            text,
            db_path,
            _tracking(spec, tracking_uri),
            hub_cache_dir(),
            backend,
            console,
        )
    except ResourceError as err:
        raise _fail(str(err), 1) from None

    table = Table(title=f"{spec.name}: run {summary.run_id[:8]}", show_header=False)
    table.add_row("checkpoints", f"{summary.checkpoints} ({summary.checkpoints_run} with work)")
    table.add_row("cells computed", str(summary.cells_computed))
    table.add_row("cells already stored", str(summary.cells_cached))
    table.add_row("cells failed", str(summary.cells_failed))
    table.add_row("metric rows written", str(summary.metric_rows))
    table.add_row("time", f"{summary.seconds:.1f}s")
    table.add_row("results", str(db_path))
    table.add_row("mlflow", f"{_tracking(spec, tracking_uri)} (run {summary.mlflow_run_id})")
    console.print(table)
    for failure in summary.failures[:20]:
        console.print(f"[red]failed[/red] {failure}", highlight=False)
    if summary.cells_failed:
        raise typer.Exit(1)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the results DB (read-only).")],
    db: DbOption = None,
    format: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (needed for parquet).")
    ] = None,
) -> None:
    """Answer SQL from the results (a read-only connection; works while a run is writing)."""
    import duckdb

    from ckptlab.results import ResultStore

    store = ResultStore(_db(None, db))
    try:
        frame = store.query(sql)
    except FileNotFoundError as err:
        raise _fail(str(err), 1) from None
    except duckdb.Error as err:
        raise _fail(str(err).splitlines()[0], 1) from None
    if format == Format.parquet:
        if output is None:
            raise _fail("--format parquet needs --output FILE", 2)
        frame.write_parquet(output)
        return
    if format == Format.csv:
        text = frame.write_csv()
    elif format == Format.json:
        text = frame.write_json()
    else:
        table = Table()
        for column in frame.columns:
            table.add_column(column)
        for row in frame.iter_rows():
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        console.print(table)
        return
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def prompts(
    cell_key: Annotated[str, typer.Argument(help="An icl cell's key (results.cell_key).")],
    task: Annotated[str, typer.Option("--task", help="The task's name in results.task.")],
    shots: Annotated[int, typer.Option("--shots", help="Number of demonstrations.")],
    seed: Annotated[int | None, typer.Option("--seed", help="Default: the cell's first.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Prompts to print.")] = 3,
    db: DbOption = None,
) -> None:
    """Print the exact prompts an icl cell scored, rebuilt from its stored params and commit."""
    from ckptlab.icl.replay import ReplayError, stored_prompts
    from ckptlab.results import ResultStore

    try:
        candidates, batch = stored_prompts(
            ResultStore(_db(None, db)), cell_key, task, shots, seed, hub_cache_dir()
        )
    except (ReplayError, FileNotFoundError) as err:
        raise _fail(str(err), 1) from None
    for i in range(min(limit, len(batch.prompts))):
        gold = candidates[batch.gold[i]]
        console.rule(f"prompt {i}: {len(batch.prompts[i])} tokens, gold label {gold!r}")
        sys.stdout.write(batch.texts[i] + "\n")
        sys.stdout.flush()


@app.command("analyses")
def list_analyses() -> None:
    """List the registered analyses with their versions and what they need."""
    from analyses.registry import registered_analyses

    table = Table()
    for column in ("name", "version", "needs", "summary"):
        table.add_column(column)
    for name, definition in sorted(registered_analyses().items()):
        first_line = definition.doc.strip().splitlines()[0]
        table.add_row(
            name, str(definition.version), ", ".join(sorted(definition.needs)), first_line
        )
    console.print(table)


@pico_app.command("build")
def pico_build(
    sizes: Annotated[str, typer.Option(help="Comma-separated sizes.")] = "xs,s,m",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    max_step: Annotated[int, typer.Option(help="Training steps.")] = 1000,
    force: Annotated[bool, typer.Option(help="Rebuild even if published.")] = False,
) -> None:
    """Train the pico suite and publish it as step<N> revisions into $CKPTLAB_HOME/hub."""
    from rich.progress import Progress

    from ckptlab.catalog import SUITES
    from ckptlab.pico.build import PicoRecipe, build_pico

    size_list = tuple(s.strip() for s in sizes.split(",") if s.strip())
    unknown = [s for s in size_list if s not in SUITES["pico"].sizes]
    if unknown:
        raise _fail(f"--sizes: unknown pico size(s) {unknown}", 2)
    seed_list = tuple(int(s) for s in seeds.split(","))
    hub = hub_cache_dir()
    with Progress(console=console) as progress:
        bars: dict[str, int] = {}

        def on_step(repo: str, step: int, total: int) -> None:
            if repo not in bars:
                bars[repo] = progress.add_task(f"training {repo}", total=total)
            progress.update(bars[repo], completed=step)

        reports = build_pico(
            hub, size_list, seed_list, PicoRecipe(max_step=max_step), force, on_step
        )
    for report in reports:
        if report.built:
            losses = report.loss_by_step
            first, last = min(losses), max(losses)
            console.print(
                f"{report.repo}: {report.params:,} params, {report.seconds:.1f}s, train loss "
                f"{losses[first]:.3f} (step {first}) -> {losses[last]:.3f} (step {last})"
            )
        else:
            console.print(f"{report.repo}: already published in {hub}")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()

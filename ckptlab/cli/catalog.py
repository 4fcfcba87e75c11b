"""``ckptlab analyses`` and ``pico build``: what ckptlab knows and the suite it makes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ckptlab.cli.app import app, console, fail, hub_cache_dir, pico_app


@app.command("analyses")
def list_analyses() -> None:
    """List the registered analyses with their versions and what they need."""
    from ckptlab.analyses.registry import registered_analyses

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
        raise fail(f"--sizes: unknown pico size(s) {unknown}", 2)
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

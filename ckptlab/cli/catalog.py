"""``ckptlab analyses``, ``suites`` and ``pico build``: what ckptlab knows and the suite it
makes.

Owns: those commands' options, tables and ``--json`` shapes. Must not: import ``ckptlab.pico``
at module level (torch and transformers; only ``pico build`` needs it), or train and publish
checkpoints itself (``ckptlab/pico/build.py`` does).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ckptlab.cli.app import JsonOption, app, console, fail, hub_cache_dir, load, pico_app


@app.command("analyses")
def list_analyses(
    spec_path: Annotated[
        Path | None,
        typer.Option("--spec", help="Also load this spec's plugins: and list theirs."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """List the registered analyses: shipped, installed (entry points) and plug-ins, with
    their versions, what they need and where their code comes from."""
    from ckptlab.analyses.plugins import PluginError
    from ckptlab.analyses.registry import registered_analyses

    if spec_path is not None:
        load(spec_path)  # loads its plug-ins; a bad spec or plug-in is one line, exit 2
    try:
        known = registered_analyses()
    except PluginError as err:
        raise fail(str(err), 2) from None
    rows = []
    for name, definition in sorted(known.items()):
        digest = definition.origin.source_hash
        rows.append(
            {
                "name": name,
                "version": definition.version,
                "needs": sorted(definition.needs),
                "origin": definition.origin.describe(),
                "source_sha256": digest,
                "summary": definition.doc.strip().splitlines()[0],
            }
        )
    if json_output:
        print(json.dumps(rows))
        return
    table = Table()
    for column in ("name", "version", "needs", "origin", "summary"):
        table.add_column(column)
    for row in rows:
        origin = row["origin"] + (f" ({row['source_sha256'][:12]})" if row["source_sha256"] else "")
        table.add_row(
            row["name"], str(row["version"]), ", ".join(row["needs"]), origin, row["summary"]
        )
    console.print(table)


def _seeds_text(suite) -> str:
    if suite.seed_values is not None:
        return ", ".join(map(str, suite.seed_values))
    if suite.max_seed and suite.seeded_sizes:
        sized = (
            ""
            if set(suite.seeded_sizes) == set(suite.sizes)
            else " (" + ", ".join(suite.seeded_sizes) + ")"
        )
        return f"0-{suite.max_seed}{sized}"
    return "0"


def _suite_summary(suite) -> dict:
    from ckptlab.catalog import format_tokens

    repos = {}
    for size in suite.sizes:
        for seed in suite.seeds_for(size):
            repos[f"{size}" if seed == 0 else f"{size}/seed{seed}"] = suite.repo_id(size, seed)
    return {
        "name": suite.name,
        "title": suite.title,
        "sizes": list(suite.sizes),
        "seeds": _seeds_text(suite),
        "deduped": suite.has_deduped,
        "checkpoints": suite.checkpoint_count(),
        "revisions": suite.convention,
        "tokens_per_step": {s: suite.step_tokens(s) for s in suite.sizes},
        "tokens_per_step_text": suite.tokens_per_step_text(),
        "stage1_tokens": {s: format_tokens(t) for s, t in suite.stage1_tokens.items()},
        "repos": repos if not suite.checkpoint_repos else list(suite.checkpoint_repos),
        "source": suite.source,
        "notes": suite.notes,
    }


@app.command("suites")
def list_suites(
    name: Annotated[
        str | None, typer.Argument(help="One suite: its repos, conventions and sources.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object on stdout, for scripts.")
    ] = False,
) -> None:
    """List the catalogued suites: sizes, seeds, checkpoints, revision names, tokens per step."""
    from ckptlab.catalog import SUITES

    if name is not None and name not in SUITES:
        raise fail(f"unknown suite {name!r} (known: {', '.join(SUITES)})", 2)
    chosen = [SUITES[name]] if name else list(SUITES.values())
    summaries = [_suite_summary(s) for s in chosen]
    if json_output:
        sys.stdout.write(json.dumps({"suites": summaries}) + "\n")
        return
    if name is None:
        table = Table()
        for column in ("suite", "sizes", "seeds", "checkpoints", "revisions", "tokens/step"):
            table.add_column(column)
        for s, summary in zip(chosen, summaries, strict=True):
            sizes = ", ".join(s.sizes) + (" (+deduped)" if s.has_deduped else "")
            table.add_row(
                s.name,
                sizes,
                summary["seeds"],
                summary["checkpoints"],
                s.convention,
                summary["tokens_per_step_text"],
            )
        console.print(table)
        console.print("ckptlab suites NAME: a suite's repos, sources and notes", highlight=False)
        return
    [summary] = summaries
    suite = chosen[0]
    console.print(f"[bold]{suite.name}[/bold]: {suite.title}", highlight=False)
    lines = [
        ("checkpoints", summary["checkpoints"]),
        ("revisions", suite.convention),
        ("tokens/step", summary["tokens_per_step_text"]),
        ("seeds", summary["seeds"]),
    ]
    if summary["stage1_tokens"]:
        stage1 = ", ".join(f"{k}: {v}" for k, v in summary["stage1_tokens"].items())
        lines.append(("stage 1 ends at", stage1))
    if suite.notes:
        lines.append(("notes", suite.notes))
    lines.append(("source", suite.source))
    for key, value in lines:
        console.print(f"  {key}: {value}", highlight=False, soft_wrap=True)
    repos = summary["repos"]
    console.print("  repos:", highlight=False)
    items = repos.items() if isinstance(repos, dict) else ((str(i), r) for i, r in enumerate(repos))
    for key, repo in items:
        console.print(f"    {key}: {repo}", highlight=False, soft_wrap=True)


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
    words = [s.strip() for s in seeds.split(",") if s.strip()]
    if not words or not all(w.isdigit() for w in words):
        raise fail(f"--seeds: expected comma-separated seed numbers (e.g. 0,1,2), got {seeds!r}", 2)
    seed_list = tuple(int(w) for w in words)
    most = SUITES["pico"].max_seed
    if most is not None and max(seed_list) > most:
        raise fail(f"--seeds: pico seeds are 0-{most}, got {max(seed_list)}", 2)
    if max_step < 1:
        raise fail(f"--max-step: at least 1, got {max_step}", 2)
    hub = hub_cache_dir()
    started: dict[str, float] = {}  # per size, from its first step
    with Progress(console=console) as progress:
        bars: dict[str, int] = {}

        def on_step(repo: str, step: int, total: int) -> None:
            if repo not in bars:
                bars[repo] = progress.add_task(f"training {repo}", total=total)
                started[repo] = time.perf_counter()
            progress.update(bars[repo], completed=step)
            # No live bar in a log file or CI: a line per quarter, so minutes are not silent.
            if not console.is_terminal and step * 4 // total != (step - 1) * 4 // total:
                elapsed = time.perf_counter() - started[repo]
                console.print(f"training {repo}: step {step}/{total} ({elapsed:.0f}s)")

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

"""``ckptlab report``: figures and one self-contained HTML page from the results DB.

Owns: the command's options, which spec or run is meant, and the default output folder. Must
not: select, compute or draw anything itself (``ckptlab/report/``), or import the report package
or the results store at module level.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer

from ckptlab.cli.app import DbOption, app, console, db_of, fail
from ckptlab.errors import one_line


def spec_name_and_db(spec: str) -> tuple[str, Path | None]:
    """A spec YAML file's ``name`` and ``storage.db``, or ``spec`` itself as a spec name."""
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        import yaml

        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise fail(f"{spec}: {one_line(str(err), first=True)}", 2) from None
        name = document.get("name") if isinstance(document, dict) else None
        if not isinstance(name, str):
            raise fail(f"{spec}: the spec has no name", 2)
        storage = document.get("storage")
        db = storage.get("db") if isinstance(storage, dict) else None
        return name, path.parent / db if isinstance(db, str) else None  # as the spec resolves it
    return spec, None


@app.command()
def report(
    spec: Annotated[
        str | None,
        typer.Argument(
            help="Spec YAML file or spec name: every run of it. Default: the DB's only spec."
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run", help="One run (id or unique prefix): its spec's cells at its end."),
    ] = None,
    db: DbOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder. Default: ./ckptlab-report/<spec name>[-<run>]."),
    ] = None,
    x: Annotated[
        str, typer.Option("--x", help="step, or tokens (where checkpoints have tokens_seen).")
    ] = "step",
) -> None:
    """Write PNG + SVG figures and a self-contained index.html of a spec's or a run's results,
    and correlations.csv: per model, Spearman rho across checkpoints between every
    representation metric and every task accuracy (lm_eval, icl)."""
    from ckptlab.report import ReportError, render_report, resolve_selection
    from ckptlab.results import ResultsBusy, ResultStore

    if x not in ("step", "tokens"):
        raise fail(f"--x: {x!r} is not step or tokens", 2)
    spec_name, spec_db = spec_name_and_db(spec) if spec is not None else (None, None)
    db_path = db_of(None, db or spec_db)
    started = time.perf_counter()
    try:
        if out is None:
            selection = resolve_selection(ResultStore(db_path), spec_name, run_id)
            folder = re.sub(r"[^A-Za-z0-9._-]+", "_", selection.spec_name)
            if selection.run_id:
                folder += f"-{selection.run_id[:8]}"
            out = Path("ckptlab-report") / folder
        written = render_report(db_path, out, spec_name=spec_name, run_id=run_id, x=x)
    except (ReportError, ResultsBusy) as err:
        raise fail(str(err), 1) from None
    figures = sum(1 for p in written if p.suffix == ".png")
    console.print(
        f"{figures} figures in {time.perf_counter() - started:.1f} s: {out / 'index.html'}",
        highlight=False,
    )
    table = out / "correlations.csv"
    if table in written:  # the page shows the top rows per model; the file has them all
        console.print(
            f"Spearman correlations over checkpoints: {table}", highlight=False, soft_wrap=True
        )

"""``ckptlab query``, ``prompts`` and ``sync``: reading what runs stored, and logging it to
MLflow later.

Owns: those commands' options, output formats and messages. Must not: write to the results
database (``query`` is read-only; ``sync``'s one write is ``ckptlab/sync.py``'s), or import
DuckDB, the results store, ``icl_replay`` or ``sync`` at module level.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ckptlab.cli.app import DbOption, app, console, db_of, fail, hub_cache_dir, redacted
from ckptlab.errors import one_line


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

    from ckptlab.results import QueryRefused, ResultsBusy, ResultStore

    if format == Format.parquet and output is None:  # a usage error: before any query
        raise fail("--format parquet needs --output FILE", 2)
    store = ResultStore(db_of(None, db))
    try:
        frame = store.user_query(sql)
    except (FileNotFoundError, QueryRefused, ResultsBusy) as err:
        raise fail(str(err), 1) from None
    except duckdb.Error as err:
        raise fail(one_line(str(err), first=True), 1) from None
    except KeyboardInterrupt:  # the store's reader turns DuckDB's form of it into this
        raise fail("interrupted", 130) from None
    if format == Format.parquet:
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
        if console.is_terminal:
            console.print(table)
        else:  # a pipe or a file: the table at its own width, not wrapped to rich's 80 columns
            natural = Measurement.get(console, console.options.update(max_width=100_000), table)
            Console(width=max(80, natural.maximum)).print(table)
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
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="The spec the cell came from: its task files named by relative paths lie in "
            "its folder. Default: the current directory.",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Print the exact prompts an icl cell scored, rebuilt from its stored params and commit."""
    from ckptlab.icl_replay import ReplayError, stored_prompts
    from ckptlab.results import ResultStore

    try:
        candidates, batch = stored_prompts(
            ResultStore(db_of(None, db)),
            cell_key,
            task,
            shots,
            seed,
            hub_cache_dir(),
            spec.absolute().parent if spec else Path("."),
        )
    except (ReplayError, FileNotFoundError) as err:
        raise fail(str(err), 1) from None
    for i in range(min(limit, len(batch.prompts))):
        gold = candidates[batch.gold[i]]
        console.rule(f"prompt {i}: {len(batch.prompts[i])} tokens, gold label {gold!r}")
        sys.stdout.write(batch.texts[i] + "\n")
        sys.stdout.flush()


@app.command()
def sync(
    db: DbOption = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow URI. Default: $MLFLOW_TRACKING_URI, else $CKPTLAB_HOME's store.",
        ),
    ] = None,
    run_id: Annotated[
        list[str] | None,
        typer.Option("--run", help="These runs (repeatable); default: every pending run."),
    ] = None,
) -> None:
    """Log to MLflow the runs whose lineage is pending (MLflow was unreachable), from DuckDB;
    running it again changes nothing."""
    from ckptlab.home import default_tracking_uri
    from ckptlab.results import ResultsBusy, ResultStore
    from ckptlab.sync import SyncError
    from ckptlab.sync import sync as sync_runs

    store = ResultStore(db_of(None, db))
    uri = tracking_uri or default_tracking_uri()
    try:
        logged = sync_runs(store, uri, run_id)
    except (SyncError, ResultsBusy, FileNotFoundError) as err:
        raise fail(str(err), 1) from None
    console.print(
        f"logged {len(logged)} run(s) to {redacted(uri)}"
        + (f": {', '.join(r[:8] for r in logged)}" if logged else ""),
        highlight=False,
    )

"""``ckptlab query`` and ``prompts``: reading what runs stored."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ckptlab.cli.app import DbOption, app, console, db_of, fail, hub_cache_dir


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

    store = ResultStore(db_of(None, db))
    try:
        frame = store.query(sql)
    except FileNotFoundError as err:
        raise fail(str(err), 1) from None
    except duckdb.Error as err:
        raise fail(str(err).splitlines()[0], 1) from None
    if format == Format.parquet:
        if output is None:
            raise fail("--format parquet needs --output FILE", 2)
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
    from ckptlab.icl_replay import ReplayError, stored_prompts
    from ckptlab.results import ResultStore

    try:
        candidates, batch = stored_prompts(
            ResultStore(db_of(None, db)), cell_key, task, shots, seed, hub_cache_dir()
        )
    except (ReplayError, FileNotFoundError) as err:
        raise fail(str(err), 1) from None
    for i in range(min(limit, len(batch.prompts))):
        gold = candidates[batch.gold[i]]
        console.rule(f"prompt {i}: {len(batch.prompts[i])} tokens, gold label {gold!r}")
        sys.stdout.write(batch.texts[i] + "\n")
        sys.stdout.flush()

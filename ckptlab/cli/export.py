"""``ckptlab export``: stored results in other tools' formats.

Owns: the command's options and messages. Must not: select or shape rows
(``ckptlab/lm_eval_export.py`` does), or import it or the results store at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckptlab.cli.app import DbOption, app, console, db_of, err_console, fail

export_app = typer.Typer(no_args_is_help=True, help="Write stored results in other formats.")
app.add_typer(export_app, name="export")


@export_app.command("lm-eval")
def lm_eval(
    out: Annotated[Path, typer.Option("--out", help="Folder (plays Pythia's evals/pythia-v1).")],
    spec: Annotated[
        str | None,
        typer.Option("--spec", help="Spec YAML file or spec name: its runs' cells."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run", help="One run (id or unique prefix): its spec's cells at its end."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model id or repo name (repeatable). Default: every one."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Write lm-eval-style JSON per (model, checkpoint, num_fewshot) of the lm_eval analysis,
    laid out like Pythia's published evals: OUT/<repo>/zero-shot/<label>_step<N>.json."""
    from ckptlab.cli.report import spec_name_and_db
    from ckptlab.lm_eval_export import ExportError, export_lm_eval
    from ckptlab.results import ResultsBusy

    if spec is not None and run_id is not None:
        raise fail("give --spec or --run, not both", 2)
    spec_name, spec_db = spec_name_and_db(spec) if spec is not None else (None, None)
    try:
        exported = export_lm_eval(db_of(None, db or spec_db), out, spec_name, run_id, model)
    except (ExportError, ResultsBusy) as err:
        raise fail(str(err), 1) from None
    except OSError as err:  # --out not writable, or a file where a folder goes
        raise fail(f"{err.filename or out}: {err.strerror or err}", 1) from None
    for note in exported.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(
        f"wrote {len(exported.paths)} files ({exported.models} models, "
        f"{exported.checkpoints} checkpoints) under {out}",
        highlight=False,
        soft_wrap=True,
    )

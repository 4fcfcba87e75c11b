"""The CLI's shared pieces: the typer app, consoles, common options, one-line failures.

Exit codes, the same for every command (docs/cli.md, "Exit codes"): 0 ok; 1 the command ran and
something failed (cells failed, the results file busy, a cluster or job problem, a query
refused or failing); 2 bad input (a bad spec, option or argument, a usage error); 130
interrupted (Ctrl-C).

Owns: the typer app, the consoles, the shared options, ``fail`` (one line on stderr and the exit
code), reading a command's spec (``load``) and the defaults of ``--db`` and ``--tracking-uri``.
Must not: import ``orchestrator/``, ``ckptlab.results`` or anything heavy at module level
(``plan_of`` imports them when called): every command module imports this one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.text import Text

from ckptlab.home import default_db_path, default_tracking_uri, hub_cache_dir
from ckptlab.spec import Spec, SpecError, parse_spec_text, read_spec_file

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


def _print_version(value: bool) -> None:
    if value:
        from ckptlab.code_version import code_version

        # code_version: the release (ckptlab.__version__) plus the git commit of a checkout
        # (+g<sha>[.dirty]) or the version a shipped copy recorded.
        sys.stdout.write(f"ckptlab {code_version()}\n")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print ckptlab's version (release and code) and exit.",
        ),
    ] = False,
) -> None:
    """Representation analyses over every checkpoint of LM training runs."""


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="One JSON object on stdout, for scripts; progress and notes go to stderr. "
        "Errors stay one line on stderr with the same exit codes.",
    ),
]


def human(json_output: bool) -> Console:
    """Where a command's text for people goes: stdout, or stderr when stdout carries JSON."""
    return err_console if json_output else console


def emit_json(value: dict) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


DbOption = Annotated[Path | None, typer.Option("--db", help="Results DuckDB file.")]
TrackingOption = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow URI.")]
SpecArg = Annotated[Path, typer.Argument(help="Spec YAML file.")]
WaitForWorkersOption = Annotated[
    float,
    typer.Option(
        "--wait-for-workers",
        min=0,
        help="Seconds an autoscaling cluster may take to add the nodes a worker needs "
        "(GPU groups that scale from zero); 0 fails at once when no node fits.",
    ),
]


def redacted(uri: str) -> str:
    """A URI with any user:password part hidden, for printing."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    return parts._replace(
        netloc=f"***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    ).geturl()


def fail(message: str, code: int) -> typer.Exit:
    # A Text, not markup: the message quotes the user's spec, where '[/x]' would be a markup
    # error (a traceback) and ':smile:' an emoji.
    line = Text.assemble(("error:", "red"), " ", message)
    err_console.print(line, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load(path: Path) -> tuple[Spec, str]:
    """The spec and the text it was read from (stored with the run): one read, so they agree."""
    try:
        text = read_spec_file(path)
        spec = parse_spec_text(text, path.parent)
    except SpecError as err:
        raise fail(f"{path}: {err}", 2) from None
    return spec, text


def plan_of(spec: Spec, spec_path: Path, db_path: Path, before_tokenizing=None):
    """The plan, or a one-line exit-2 error when an input set cannot be cut from its corpus.
    ``before_tokenizing``: called when an input set must be tokenized (``build_plan``)."""
    from ckptlab.inputs import InputSetError
    from ckptlab.orchestrator.runner import make_plan
    from ckptlab.results import ResultsBusy

    try:
        return make_plan(spec, db_path, hub_cache_dir(), before_tokenizing)
    except (InputSetError, SpecError) as err:  # SpecError: e.g. an ICL task file is missing
        raise fail(f"{spec_path}: {err}", 2) from None
    except ResultsBusy as err:
        raise fail(str(err), 1) from None


def db_of(spec: Spec | None, db: Path | None) -> Path:
    if db is None and spec is not None and spec.storage.db is not None:
        db = spec.resolve(spec.storage.db)
    return db or default_db_path()


def tracking_of(spec: Spec, uri: str | None) -> str:
    return uri or spec.storage.tracking_uri or default_tracking_uri()

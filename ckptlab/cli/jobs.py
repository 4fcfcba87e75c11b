"""``ckptlab submit`` and ``ckptlab jobs list|status|logs|stop``: runs as Ray Jobs.

Owns: those commands' options, messages and exit codes (``--wait`` and ``logs --follow`` exit
with the job's status). Must not: import Ray or ``orchestrator/jobs.py`` at module level, or
stage the spec's files and code itself (``orchestrator/jobs.py`` does).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from ckptlab.cli.app import (
    SpecArg,
    WaitForWorkersOption,
    app,
    console,
    err_console,
    fail,
    load,
)
from ckptlab.errors import one_line

jobs_app = typer.Typer(no_args_is_help=True, help="Ray Jobs that `ckptlab submit` started.")
app.add_typer(jobs_app, name="jobs")

JobsAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The cluster's Jobs API, its dashboard: http://HEAD:8265. Default: "
        "RAY_API_SERVER_ADDRESS or RAY_ADDRESS.",
    ),
]
JobId = Annotated[str, typer.Argument(help="The job's submission id (ckptlab-<spec>-<hex>).")]


class Code(StrEnum):
    ship = "ship"
    image = "image"


def _client(address: str | None):
    from ckptlab.orchestrator.jobs import SubmitError, client

    if address is not None and not address.startswith(("http://", "https://")):
        raise fail(
            f"--address {address!r}: the Jobs API is the dashboard's http://HEAD:8265 "
            "(use `ckptlab run --address HOST:PORT` to attach a run to a cluster)",
            2,
        )
    try:
        return client(address)
    except SubmitError as err:
        raise fail(str(err), 1) from None


def _info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError:
        raise fail(f"no job {job_id!r} on this cluster", 1) from None


def _follow_and_exit(jobs, job_id: str) -> None:
    import aiohttp

    from ckptlab.orchestrator.jobs import exit_code, follow, status_of

    _info(jobs, job_id)  # an unknown id is one line, not a failed handshake

    def write(lines: str) -> None:
        sys.stdout.write(lines)
        sys.stdout.flush()

    try:
        follow(jobs, job_id, write)
    except KeyboardInterrupt:
        err_console.print(f"stopped following; the job goes on: ckptlab jobs stop {job_id}")
        raise typer.Exit(130) from None
    except (RuntimeError, aiohttp.ClientError, OSError) as err:
        raise fail(
            f"lost the log stream ({type(err).__name__}); the job goes on: "
            f"ckptlab jobs status {job_id}",
            1,
        ) from None
    info = _info(jobs, job_id)
    code = exit_code(info)
    # Ray's message for a failed job ends with its last 20,000 characters of logs.
    message = f" ({one_line(info.message, first=True)})" if code and info.message else ""
    (console if code == 0 else err_console).print(
        f"job {job_id}: {status_of(info)}{message}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


@app.command()
def submit(
    spec_path: SpecArg,
    address: JobsAddress = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Results DuckDB file as the head node sees it (shared storage for a team). "
            "Default: the spec's storage.db, else $CKPTLAB_HOME/results.duckdb on the head.",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow URI as the head node sees it."),
    ] = None,
    code: Annotated[
        Code,
        typer.Option(
            help="ship: carry this ckptlab package to the cluster (default); image: use the "
            "cluster's own install, which must be this version."
        ),
    ] = Code.ship,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="KEY=VALUE for the job's environment, e.g. HF_HUB_CACHE=/shared/hub "
            "(repeatable; secrets are refused).",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the logs; exit with the job's status.")
    ] = False,
    wait_for_workers: WaitForWorkersOption = 0,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="At the end of the job, also render the report (ckptlab report) into the "
            "MLflow parent run's artifacts, as `ckptlab run --report`.",
        ),
    ] = False,
) -> None:
    """Submit a spec as a Ray Job to a cluster (prints the job id)."""
    from ckptlab.orchestrator.jobs import (
        JobRequest,
        SubmitError,
        check_env_vars,
        check_request,
        submit,
    )

    spec, _ = load(spec_path)
    try:
        request = JobRequest(
            spec_path,
            spec,
            address,
            db,
            tracking_uri,
            code.value,
            check_env_vars(env or []),
            wait_for_workers,
            report,
        )
        check_request(request)
    except SubmitError as err:
        raise fail(f"{spec_path}: {err}", 2) from None
    jobs = _client(address)
    try:
        submitted = submit(request, jobs=jobs)
    except SubmitError as err:
        raise fail(str(err), 1) from None
    console.print(f"submitted job [bold]{submitted.job_id}[/bold]", highlight=False)
    console.print(f"  entrypoint: {submitted.entrypoint}", highlight=False, soft_wrap=True)
    if submitted.carried:
        console.print(f"  carried: {', '.join(submitted.carried)}", highlight=False)
    for note in submitted.notes:
        console.print(f"  [yellow]note[/yellow] {note}", highlight=False, soft_wrap=True)
    if not (db or spec.storage.db):
        console.print(
            "  results: $CKPTLAB_HOME/results.duckdb on the head node (give --db for shared "
            "storage)",
            highlight=False,
        )
    if wait:
        _follow_and_exit(jobs, submitted.job_id)
    where = f" --address {address}" if address else ""
    console.print(
        f"follow it: ckptlab jobs logs {submitted.job_id} --follow{where}", highlight=False
    )


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%m-%d %H:%M:%S")


def _took(start_ms: int | None, end_ms: int | None) -> str:
    if not (start_ms and end_ms):
        return ""
    seconds = round((end_ms - start_ms) / 1000)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@jobs_app.command("list")
def jobs_list(
    address: JobsAddress = None,
    all_jobs: Annotated[
        bool, typer.Option("--all", help="Also jobs that ckptlab did not submit.")
    ] = False,
) -> None:
    """The cluster's ckptlab jobs, newest first."""
    jobs = _client(address)
    found = [j for j in jobs.list_jobs() if all_jobs or (j.metadata or {}).get("ckptlab_spec")]
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("job", no_wrap=True)
    for column in ("status", "spec", "started (UTC)", "took"):
        table.add_column(column)
    for job in sorted(found, key=lambda j: j.start_time or 0, reverse=True):
        table.add_row(
            job.submission_id or job.job_id or "",
            str(job.status.value),
            (job.metadata or {}).get("ckptlab_spec", ""),
            _when(job.start_time),
            _took(job.start_time, job.end_time),
        )
    console.print(table)


@jobs_app.command("status")
def jobs_status(job_id: JobId, address: JobsAddress = None) -> None:
    """A job's status and message (exit code 0 once it succeeded, 1 when it failed)."""
    from ckptlab.orchestrator.jobs import TERMINAL, exit_code, status_of

    info = _info(_client(address), job_id)
    console.print(f"{job_id}: {status_of(info)}", highlight=False)
    if info.message:
        console.print(f"  {one_line(info.message, first=True)}", highlight=False, soft_wrap=True)
    if status_of(info) in TERMINAL:
        raise typer.Exit(exit_code(info))


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobId,
    address: JobsAddress = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
) -> None:
    """A job's logs (``--follow`` streams them and exits with the job's status)."""
    jobs = _client(address)
    if follow:
        _follow_and_exit(jobs, job_id)
    try:
        sys.stdout.write(jobs.get_job_logs(job_id))
    except RuntimeError:
        raise fail(f"no job {job_id!r} on this cluster", 1) from None


@jobs_app.command("stop")
def jobs_stop(job_id: JobId, address: JobsAddress = None) -> None:
    """Ask the cluster to stop a job (finished units stay stored)."""
    jobs = _client(address)
    try:
        stopped = jobs.stop_job(job_id)
    except RuntimeError:
        raise fail(f"no job {job_id!r} on this cluster", 1) from None
    console.print(f"{job_id}: {'stopping' if stopped else 'already ended'}", highlight=False)

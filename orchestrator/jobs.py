"""``ckptlab submit``: a spec run as a Ray Job on a cluster, through the Jobs SDK.

The job's entrypoint is ``python -m ckptlab run <spec>`` on the cluster's head node; inside a
job Ray sets ``RAY_ADDRESS``, so that run attaches to the cluster and its workers are the
cluster's. The runtime env carries what the run needs from the laptop:

- ``working_dir``: the spec and every local file it names (input-set text files, ICL task
  files, plug-in files), at the same relative paths, so a cell's key is the same on the
  cluster as at home, and the top-level package of each module plug-in at its root (pure
  Python only: compiled code, namespace packages and packages over 50 MiB are refused);
- ``py_modules`` (``--code ship``, the default): this very ckptlab package, so the cluster
  runs the code that planned the job without installing anything (its Python environment
  must have ckptlab's dependencies: the image of infra/Dockerfile has them). ``--code image``
  uses the cluster's own install instead and checks that its version is this one.

Tokens never travel in the runtime env (Ray's state API shows it): the Jobs client reads
``RAY_AUTH_TOKEN`` from this environment, and cluster nodes need their own ``HF_TOKEN``.

Owns: what a job carries (``stage_spec``, ``stage_code``, a module plug-in's package), the
environment variables it refuses, and the Jobs client. Must not: put a token in the runtime env,
or import Ray at module level (``ray.job_submission`` is imported when a client is made).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tenacity
import yaml

import ckptlab
from ckptlab.analyses.plugins import is_file_entry
from ckptlab.analyses.registry import get_analysis
from ckptlab.code_version import SHIPPED_VERSION_FILE, code_version, shipped
from ckptlab.errors import one_line
from ckptlab.spec import LocalModels, Spec, paths_in, resolved_paths

# Subpackages that an editable install maps from other folders (pyproject's package-dir).
_MAPPED_SUBPACKAGES = ("analyses", "orchestrator")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|API_KEY|ACCESS_KEY", re.IGNORECASE)
_ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_OUTSIDE = "_outside"  # where files named by absolute or ../ paths go in the working dir
AGENT_WAIT_S = 60.0  # how long a just-started cluster may take to accept jobs


class SubmitError(RuntimeError):
    """A job that cannot be submitted as asked; ``str(err)`` is one line."""


# ----------------------------------------------------------------------- what is carried


def spec_files(spec: Spec) -> list[tuple[tuple, Path]]:
    """Every local file a spec names, with its location in the spec and its path as written
    (relative ones lie in the spec's folder): the input sets' text files, plug-in files and
    any Path in an analysis' params (ICL task files). Files named by those files (a task
    YAML's data) come with their absolute paths."""
    found = [(("input_sets", i, "file"), s.file) for i, s in enumerate(spec.input_sets) if s.file]
    found += [(("plugins", i), Path(p)) for i, p in enumerate(spec.plugins) if is_file_entry(p)]
    for i, entry in enumerate(spec.analyses):
        definition = get_analysis(entry.name)
        params = definition.params_model.model_validate(entry.params)
        found += [(("analyses", i, "params", *loc), p) for loc, p in paths_in(params)]
        if definition.files is not None:  # named inside those files, not by the spec
            companions = definition.files(resolved_paths(params, spec.folder))
            found += [(("analyses", i, COMPANION, k), p) for k, p in enumerate(companions)]
    return found


# The location of a file named by another file (a task YAML's data), not by the spec: it is
# carried to the same place relative to the spec's folder, and the spec is left as it is.
COMPANION = "read by its files"


def _set(data: Any, location: tuple, value: str) -> None:
    for key in location[:-1]:
        data = data[key]
    data[location[-1]] = value


@dataclass
class StagedSpec:
    working_dir: Path
    spec_file: str  # relative to working_dir
    carried: list[str] = field(default_factory=list)  # files copied, as the spec names them
    notes: list[str] = field(default_factory=list)  # what is not carried, and why


def stage_spec(spec_path: Path, spec: Spec, working_dir: Path) -> StagedSpec:
    """Copy the spec and its local files into ``working_dir``, the spec at its root. A file
    inside the spec's folder keeps its place relative to the spec; others go under
    _outside/ and the staged spec names the copy."""
    data = yaml.safe_load(spec_path.read_text())
    staged = StagedSpec(working_dir, "spec.yaml")
    base = spec.folder
    for n, (location, path) in enumerate(spec_files(spec)):
        source = spec.resolve(path).resolve()
        try:
            relative = source.relative_to(base.resolve())
        except ValueError:
            where = ".".join(str(k) for k in location)
            if COMPANION in location:  # the file naming it cannot be rewritten to the copy
                staged.notes.append(
                    f"{where}: {path} is outside {base.resolve()} and is not carried; keep a "
                    "task's data files next to its YAML inside the project"
                )
                continue
            relative = Path(_OUTSIDE) / str(n) / source.name
            staged.notes.append(
                f"{where}: {path} is outside {base.resolve()}; carried as {relative}"
            )
        if COMPANION not in location and Path(path) != relative:
            _set(data, location, str(relative))  # absolute, or outside: the copy is named
        target = working_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        staged.carried.append(str(relative) if COMPANION in location else str(path))
    for entry in spec.plugins:
        if is_file_entry(entry):
            continue
        # A module plug-in travels as its top-level package at the working dir's root: the
        # working dir is on every worker's path, and unlike py_modules it does not shadow an
        # installed package of the same name on the nodes that have one.
        package = plugin_package(entry)
        target = working_dir / package.name
        if package.is_dir():
            shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(package, target)
        staged.carried.append(f"{entry} ({package})")
    for name, definition in sorted(_entry_point_analyses(spec).items()):
        staged.notes.append(
            f"analysis {name} comes from an installed package ({definition}); it is not "
            "carried: install that package on the cluster's nodes"
        )
    for i, source in enumerate(spec.models):
        if isinstance(source, LocalModels):
            # Not carried: named by its absolute path, which the job's folder cannot change.
            folder = spec.resolve(source.path).absolute()
            _set(data, ("models", i, "path"), str(folder))
            staged.notes.append(
                f"models[{i}].path: checkpoint folders are not carried; {folder} must "
                "exist at that path on the cluster's nodes (shared storage)"
            )
    (working_dir / staged.spec_file).write_text(yaml.safe_dump(data, sort_keys=False))
    return staged


MAX_PLUGIN_BYTES = 50 * 2**20  # a plug-in package bigger than this is data, not code
_COMPILED = (".so", ".pyd", ".dylib", ".dll")


def plugin_package(entry: str) -> Path:
    """The folder (or single file) that ships a module plug-in: its top-level package, so its
    sibling modules come along. One line when it cannot be shipped as files."""
    top = entry.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as err:
        raise SubmitError(f"plugins: {entry!r}: {err}") from None
    if spec is None:
        raise SubmitError(f"plugins: no module named {top!r} here: nothing to ship")
    if spec.submodule_search_locations is None:
        if not (spec.origin or "").endswith(".py"):
            raise SubmitError(
                f"plugins: {entry!r} is compiled code ({spec.origin}); it is not carried: "
                "install it on the cluster's nodes (the image)"
            )
        return Path(spec.origin)
    locations = list(spec.submodule_search_locations)
    if spec.origin in (None, "namespace") or len(locations) != 1:
        raise SubmitError(
            f"plugins: {top!r} is a namespace package (Ray's py_modules and working_dir cannot "
            "carry one, ray #50161): give it an __init__.py"
        )
    folder = Path(locations[0])
    files = [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    compiled = [p for p in files if p.suffix in _COMPILED]
    if compiled:
        raise SubmitError(
            f"plugins: {top!r} holds compiled code ({compiled[0].name}); it is not carried: "
            "install the package on the cluster's nodes (the image)"
        )
    size = sum(p.stat().st_size for p in files)
    if size > MAX_PLUGIN_BYTES:
        raise SubmitError(
            f"plugins: {top!r} is {size / 2**20:.0f} MiB; plug-ins travel as code (at most "
            f"{MAX_PLUGIN_BYTES // 2**20} MiB): put its data on shared storage"
        )
    return folder


def stage_code(dest: Path) -> Path:
    """A copy of the running ckptlab package, laid out as installed (ckptlab/analyses/,
    ckptlab/orchestrator/), for the runtime env's py_modules. Pure Python only."""
    import importlib

    root = Path(ckptlab.__file__).resolve().parent
    package = dest / "ckptlab"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info")
    shutil.copytree(root, package, ignore=skip)
    for name in _MAPPED_SUBPACKAGES:
        folder = Path(importlib.import_module(f"ckptlab.{name}").__file__).resolve().parent
        if not folder.is_relative_to(root):  # editable install: mapped from the repo's folder
            shutil.copytree(folder, package / name, ignore=skip)
    (package / SHIPPED_VERSION_FILE).write_text(shipped(code_version()))
    return package


# --------------------------------------------------------------------------------- submit


def check_env_vars(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs for the job's environment; secrets are refused (one line)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SubmitError(f"--env {pair!r}: expected KEY=VALUE")
        if _SECRET_NAME.search(key):
            raise SubmitError(
                f"--env {key}: secrets never go in a runtime env (Ray's state API and "
                "dashboard show it); set it on the cluster's nodes instead"
            )
        env[key] = value
    return env


@dataclass(frozen=True)
class JobRequest:
    spec_path: Path
    spec: Spec
    # The dashboard, http://HEAD:8265; None: RAY_API_SERVER_ADDRESS or RAY_ADDRESS.
    address: str | None
    db: str | None = None  # where results land, as a path on the head node (or shared storage)
    tracking_uri: str | None = None
    code: str = "ship"  # "ship" this package, or use the cluster "image"'s
    env: dict[str, str] = field(default_factory=dict)
    wait_for_workers: float = 0  # seconds an autoscaling cluster may take to add workers
    report: bool = False  # the run renders the report into its MLflow parent run (run --report)


def _entry_point_analyses(spec: Spec) -> dict[str, str]:
    """The spec's analyses that come from installed packages: name -> origin."""
    found = {}
    for entry in spec.analyses:
        definition = get_analysis(entry.name)
        if definition.origin.kind == "entry point":
            found[entry.name] = definition.origin.where
    return found


def check_request(request: JobRequest) -> None:
    """What would fail on the cluster, refused here with one line before anything is sent:
    a file the spec names that is missing, a plug-in that cannot travel as files, a results
    path relative to the job's temporary working dir, credentials in the tracking URI."""
    for location, path in spec_files(request.spec):
        if not request.spec.resolve(path).is_file():
            where = ".".join(str(k) for k in location)
            raise SubmitError(f"{where}: no such file: {path}")
    for entry in request.spec.plugins:
        if not is_file_entry(entry):
            plugin_package(entry)
    db = request.db or (str(request.spec.storage.db) if request.spec.storage.db else None)
    if db and not Path(db).is_absolute():
        raise SubmitError(
            f"results file {db!r} is relative: on the cluster it would land in the job's "
            "temporary working dir; give an absolute path (shared storage)"
        )
    uri = request.tracking_uri or request.spec.storage.tracking_uri
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise SubmitError(f"tracking URI {uri!r} is relative: give sqlite:////absolute/path")
    if uri and urlsplit(uri).password:
        raise SubmitError(
            "the tracking URI holds a password: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD on the cluster's nodes instead"
        )


@dataclass
class Submitted:
    job_id: str
    entrypoint: str
    carried: list[str]
    notes: list[str]


@contextmanager
def _explicit_address(address: str | None):
    """The Jobs SDK lets RAY_API_SERVER_ADDRESS and RAY_ADDRESS override the address it is
    given: hide them while it reads them, so an explicit --address is the one used."""
    hidden = {}
    if address is not None:
        hidden = {k: os.environ.pop(k) for k in _ADDRESS_VARIABLES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def client(address: str | None):
    """A Jobs SDK client; one-line SubmitError when the dashboard cannot be reached."""
    from ray.exceptions import AuthenticationError, RayError
    from ray.job_submission import JobSubmissionClient

    # The SDK logs each package upload at INFO; what matters is printed by the CLI.
    logging.getLogger("ray").setLevel(logging.WARNING)
    where = address or next((os.environ[k] for k in _ADDRESS_VARIABLES if k in os.environ), "")
    try:
        with _explicit_address(address):
            return JobSubmissionClient(address)
    except AuthenticationError as err:
        wrong = "invalid" in str(err).lower() or "incorrect" in str(err).lower()
        reason = "refused the token" if wrong else "needs a token"
        raise SubmitError(
            f"the Ray dashboard at {where} {reason}: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError, RayError) as err:
        first = one_line(str(err), first=True) or type(err).__name__
        raise SubmitError(f"cannot reach the Ray Jobs API at {where}: {first}") from None


def entrypoint(request: JobRequest, spec_file: str) -> str:
    args = ["python", "-m", "ckptlab", "run", spec_file]
    if request.db:
        args += ["--db", request.db]
    if request.tracking_uri:
        args += ["--tracking-uri", request.tracking_uri]
    if request.wait_for_workers:
        args += ["--wait-for-workers", f"{request.wait_for_workers:g}"]
    if request.report:
        args.append("--report")
    if request.code == "image":
        args += ["--expect-version", code_version()]
    return shlex.join(args)


@contextmanager
def staged(request: JobRequest):
    """The runtime env and entrypoint of a request, in a temporary folder that lives as long
    as the submission needs it (Ray uploads the folders when the job is submitted)."""
    with tempfile.TemporaryDirectory(prefix="ckptlab-submit-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        spec = stage_spec(request.spec_path, request.spec, work)
        env: dict[str, Any] = {
            "working_dir": str(work),
            "env_vars": {"TOKENIZERS_PARALLELISM": "false", **request.env},
        }
        if request.code == "ship":
            env["py_modules"] = [str(stage_code(Path(tmp) / "code"))]
        yield env, entrypoint(request, spec.spec_file), spec


def submit(request: JobRequest, jobs=None) -> Submitted:
    """Stage and submit (the spec's relative paths lie in its folder)."""
    check_request(request)
    jobs = jobs or client(request.address)
    metadata = {
        "ckptlab_spec": request.spec.name,
        "ckptlab_spec_hash": request.spec.spec_hash(),
        "ckptlab_code": code_version(),  # what --code image compares its install with
    }
    job_id = f"ckptlab-{request.spec.name}-{uuid.uuid4().hex[:8]}"
    # A cluster that has just started answers "No available agent to submit job, please try
    # again later" until its head's job agent is up: wait for it, boundedly.
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: "try again later" in str(e)),
        wait=tenacity.wait_exponential(multiplier=0.5, max=5),
        stop=tenacity.stop_after_delay(AGENT_WAIT_S),
        reraise=True,
    )
    with staged(request) as (runtime_env, command, spec):
        try:
            retrying(
                jobs.submit_job,
                entrypoint=command,
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata=metadata,
            )
        except (RuntimeError, ValueError) as err:
            first = one_line(str(err), first=True) or type(err).__name__
            hint = ""
            if "No available agent" in first:
                hint = (
                    " (the head's job agent is not up: see dashboard_agent.log in its Ray "
                    "logs; two Ray nodes on one machine need distinct "
                    "--dashboard-agent-listen-port)"
                )
            raise SubmitError(f"the cluster refused the job: {first}{hint}") from None
    return Submitted(job_id, command, spec.carried, spec.notes)


# ----------------------------------------------------------------------- follow and manage

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def follow(jobs, job_id: str, write: Callable[[str], None]) -> None:
    """Stream a job's logs until it ends."""

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())


def exit_code(info) -> int:
    """The job's outcome as this CLI's exit code: 0 succeeded; the driver's own code when it
    failed with one (2 = a bad spec on the cluster); 1 otherwise."""
    if status_of(info) == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def status_of(info) -> str:
    return str(getattr(info.status, "value", info.status))

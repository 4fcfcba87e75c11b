"""What `ckptlab submit` carries to a cluster: the spec and its files, this ckptlab package,
and never a secret. (The loopback-cluster runs are in test_cluster.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ckptlab.cli import app
from ckptlab.code_version import code_version, shipped
from ckptlab.orchestrator.jobs import (
    JobRequest,
    SubmitError,
    check_env_vars,
    entrypoint,
    spec_files,
    stage_code,
    stage_spec,
    staged,
)
from ckptlab.spec import load_spec


def write_spec(root: Path, outside: Path) -> Path:
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text("some text " * 200)
    (root / "tasks.jsonl").write_text(
        '{"input": "a", "label": "b"}\n{"input": "c", "label": "d"}\n'
    )
    outside.write_text("text from elsewhere " * 100)
    (root / "ckpts" / "step1").mkdir(parents=True)
    spec = {
        "name": "carried",
        "models": [{"suite": "pico", "sizes": ["xs"], "steps": [0]}, {"path": "ckpts"}],
        "input_sets": [
            {"name": "mine", "file": "data/corpus.txt"},
            {"name": "theirs", "file": str(outside)},
        ],
        "analyses": [
            {"name": "saturation"},
            {"name": "icl", "params": {"tasks": [{"data": {"file": "tasks.jsonl"}}]}},
        ],
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    path = write_spec(root, tmp_path / "elsewhere.txt")
    # Relative paths in a spec lie in its folder, wherever the command starts.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root, path


def test_spec_files_finds_input_files_and_paths_in_analysis_params(project):
    _, path = project
    found = dict(spec_files(load_spec(path)))
    assert found[("input_sets", 0, "file")] == Path("data/corpus.txt")
    assert found[("analyses", 1, "params", "tasks", 0, "data", "file")] == Path("tasks.jsonl")
    assert len(found) == 3


def test_stage_spec_keeps_relative_paths_and_moves_outside_ones(project, tmp_path):
    root, path = project
    work = tmp_path / "work"
    work.mkdir()
    staged_spec = stage_spec(path, load_spec(path), work)
    data = yaml.safe_load((work / staged_spec.spec_file).read_text())
    # Relative paths are kept, so a cell keyed by params (ICL task files) keeps its key.
    assert data["input_sets"][0]["file"] == "data/corpus.txt"
    assert data["analyses"][1]["params"]["tasks"][0]["data"]["file"] == "tasks.jsonl"
    assert (work / "data/corpus.txt").read_text() == (root / "data/corpus.txt").read_text()
    assert (work / "tasks.jsonl").is_file()
    moved = data["input_sets"][1]["file"]
    assert moved.startswith("_outside/") and moved.endswith("elsewhere.txt")
    assert (work / moved).read_text() == (tmp_path / "elsewhere.txt").read_text()
    assert any("outside" in note for note in staged_spec.notes)
    assert any("models[1].path: checkpoint folders are not carried" in n for n in staged_spec.notes)
    # Not carried, so named by where it is: the job's folder is not the spec's.
    assert data["models"][1]["path"] == str(root / "ckpts")


def test_stage_code_is_the_installed_layout_and_shadows_any_install(tmp_path):
    package = stage_code(tmp_path)
    for name in ("analyses/anisotropy.py", "orchestrator/runner.py", "cli/jobs.py", "hub.py"):
        assert (package / name).is_file(), name
    assert not list(package.rglob("__pycache__"))
    probe = (
        "import json, ckptlab.analyses, ckptlab.orchestrator.runner;"
        "from ckptlab.code_version import code_version, shipped;"
        "print(json.dumps([ckptlab.analyses.__file__, code_version()]))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # what Ray's py_modules does
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    where, version = json.loads(done.stdout)
    assert Path(where).is_relative_to(package)
    assert version == shipped(code_version())  # recorded when shipped: the copy has no git


def test_the_runtime_env_carries_spec_files_and_code_but_no_token(project, monkeypatch):
    _, path = project
    monkeypatch.setenv("HF_TOKEN", "hf_canary_token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray_canary_token")
    request = JobRequest(path, load_spec(path), None, db="/shared/r.duckdb")
    with staged(request) as (runtime_env, command, spec):
        assert sorted(runtime_env) == ["env_vars", "py_modules", "working_dir"]
        assert Path(runtime_env["py_modules"][0]).name == "ckptlab"
        assert (Path(runtime_env["working_dir"]) / "spec.yaml").is_file()
        assert command == "python -m ckptlab run spec.yaml --db /shared/r.duckdb"
        assert "canary" not in json.dumps(runtime_env)
        # Nothing Ray uploads holds a token either.
        for root in (runtime_env["working_dir"], runtime_env["py_modules"][0]):
            for file in Path(root).rglob("*"):
                if file.is_file():
                    assert b"canary" not in file.read_bytes(), file
        assert spec.carried == ["data/corpus.txt", str(Path.cwd().parent / "elsewhere.txt"),
                                "tasks.jsonl"]  # fmt: skip
    image = JobRequest(path, load_spec(path), None, code="image")
    with staged(image) as (runtime_env, command, _):
        assert "py_modules" not in runtime_env
        assert command.endswith(f"--expect-version {code_version()}")
    assert entrypoint(request, "s.yaml").startswith("python -m ckptlab run s.yaml")
    reporting = JobRequest(path, load_spec(path), None, report=True)
    assert entrypoint(reporting, "s.yaml").endswith(" --report")  # as `ckptlab run --report`
    assert "--report" not in entrypoint(request, "s.yaml")


def test_an_absolute_path_inside_the_project_becomes_relative(project, tmp_path):
    root, path = project
    spec = yaml.safe_load(path.read_text())
    spec["input_sets"][0]["file"] = str(root / "data" / "corpus.txt")  # absolute, inside
    path.write_text(yaml.safe_dump(spec))
    work = tmp_path / "work2"
    work.mkdir()
    staged_spec = stage_spec(path, load_spec(path), work)
    data = yaml.safe_load((work / staged_spec.spec_file).read_text())
    assert data["input_sets"][0]["file"] == "data/corpus.txt"
    assert (work / "data" / "corpus.txt").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["analyses"][1]["params"]["tasks"][0]["data"].update(file="gone.jsonl"),
         "analyses[1].params.tasks[0].data.file: no such file: gone.jsonl in "),
        (lambda s: s.update(storage={"db": "results.duckdb"}), "'results.duckdb' is relative"),
        (lambda s: s.update(storage={"tracking_uri": "sqlite:///m.db"}), "is relative"),
        (lambda s: s.update(storage={"tracking_uri": "https://me:secret@mlflow:5000"}),
         "the tracking URI holds a password"),
    ],
)  # fmt: skip
def test_what_would_fail_on_the_cluster_is_refused_here(project, change, message):
    _, path = project
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec))
    # The address answers nothing: the refusal comes before any connection.
    result = CliRunner().invoke(app, ["submit", str(path), "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "secret" not in result.output


def test_an_explicit_address_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:7")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6399")
    result = CliRunner().invoke(app, ["jobs", "list", "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_an_unreachable_cluster_fails_in_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "t.yaml"
    spec.write_text(TINY)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ckptlab", "run", str(spec), "--address", f"127.0.0.1:{port}",
         "--db", str(tmp_path / "never.duckdb")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot reach Ray at 127.0.0.1:{port}" in done.stderr
    assert time.monotonic() - started < 60
    assert "Traceback" not in done.stderr


def test_a_ray_client_init_failure_names_its_cause():
    from ckptlab.orchestrator.cluster import _cause

    server_said = ConnectionAbortedError(
        "Initialization failure from server:\nTraceback (most recent call last):\n"
        '  File "proxier.py", line 770, in Datapath\n    raise RuntimeError(\n'
        "RuntimeError: Starting Ray client server failed.\n"
    )
    assert _cause(server_said) == (
        "Initialization failure from server: RuntimeError: Starting Ray client server failed."
    )
    assert _cause(ConnectionError("GCS unreachable\nretried 5 times")) == "GCS unreachable"
    assert _cause(ConnectionError()) == "ConnectionError"


SESSION_FAILED = ConnectionAbortedError(
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err\n"
)


@pytest.mark.parametrize(
    ("failures", "attempts", "connected"),
    [
        ([SESSION_FAILED], 2, True),  # the proxy's session process died once: a new one
        ([SESSION_FAILED, SESSION_FAILED], 2, False),  # twice: one error, the cause named
        ([ConnectionError("GCS unreachable")], 1, False),  # any other failure: no retry
    ],
)
def test_a_ray_client_session_that_fails_to_start_is_tried_once_more(
    monkeypatch, capsys, failures, attempts, connected
):
    """What the loopback Ray Client test met on a loaded machine: the head's client proxy
    started this session's server process, which exited at once with empty logs."""
    import ray

    from ckptlab.orchestrator import cluster

    calls = []

    def init(**kwargs):
        calls.append(kwargs["address"])
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(cluster, "_reachable", lambda address: None)
    monkeypatch.setattr(cluster, "CLIENT_SESSION_RETRY_S", 0.0)
    choice = cluster.ClusterChoice("ray://head:10001", "--address")
    if connected:
        assert cluster.connect(choice, {}) is True
    else:
        with pytest.raises(cluster.ClusterError, match=str(failures[-1]).splitlines()[0]):
            cluster.connect(choice, {})
    assert calls == ["ray://head:10001"] * attempts
    said = capsys.readouterr().err
    assert said.count("trying again") == attempts - 1


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["HF_TOKEN=x"], "secrets never go in a runtime env"),
        (["AWS_SECRET_ACCESS_KEY=x"], "secrets never go"),
        (["nokey"], "expected KEY=VALUE"),
    ],
)
def test_env_vars_refuse_secrets(pairs, message):
    with pytest.raises(SubmitError, match=message):
        check_env_vars(pairs)
    assert check_env_vars(["HF_HUB_CACHE=/shared/hub"]) == {"HF_HUB_CACHE": "/shared/hub"}


TINY = """
name: t
models: [{suite: pico, sizes: [xs], steps: [0]}]
analyses: [{name: singular_entropy}]
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--address", "http://head:8265"], "that is a Ray dashboard"),
        (["run", "--address", "not an address"], "expected auto, HOST:PORT or ray://HOST:PORT"),
        (["submit", "--address", "head:6379"], "the Jobs API is the dashboard's http://HEAD:8265"),
        (["submit", "--env", "HF_TOKEN=hf_x"], "secrets never go in a runtime env"),
        (["run", "--expect-version", "9.9.9"], "the job was planned with 9.9.9"),
    ],
)
def test_bad_cluster_arguments_are_one_line_exit_2(tmp_path, args, message):
    spec = tmp_path / "t.yaml"
    spec.write_text(TINY)
    db = tmp_path / "never.duckdb"
    command, *options = args
    result = CliRunner().invoke(app, [command, str(spec), "--db", str(db), *options])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not db.exists()


def test_a_bad_ray_address_in_the_environment_is_exit_2(tmp_path, monkeypatch):
    spec = tmp_path / "t.yaml"
    spec.write_text(TINY)
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    result = CliRunner().invoke(app, ["run", str(spec), "--db", str(tmp_path / "r.duckdb")])
    assert result.exit_code == 2
    assert "RAY_ADDRESS=http://head:8265: that is a Ray dashboard" in " ".join(
        result.output.split()
    )

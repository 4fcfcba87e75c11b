"""Security, each tried for real through `python -m ckptlab` in a subprocess.

- A repo's remote code runs only when a spec sets ``loading.trust_remote_code``, and the run
  records which (DuckDB ``runs.trust_remote_code``, MLflow param and tag).
- Pickled weights (``pytorch_model.bin``) load by default with ``weights_only=True``: a pickle
  whose ``__reduce__`` runs a command never runs it, a benign one gives the safetensors
  checkpoint's values; ``loading.allow_pickle_weights: false`` refuses them at plan time.
- An ``HF_TOKEN`` in the run's environment is written nowhere: DuckDB, MLflow, the output,
  Ray's session logs, the runtime env Ray received, any process' command line.
- ``ckptlab query`` runs reads only: writes, file and network access, ATTACH, extensions,
  settings, several statements at once are refused in one line, the file left untouched.

The checkpoints are a copy of the session's pico hub with repos edited from pico-xs's
snapshots, in the hub cache's own layout (refs/<revision> -> snapshots/<commit>/).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import psutil
import pytest
import torch
from safetensors.torch import load_file

from ckptlab.hub import content_commit_id
from ckptlab.pico.publish import snapshot_folder

SPEC = """
name: {name}
description: {description}
models:
  - {models}
input_sets:
  - {{name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 16}}
analyses:
  - name: saturation
  - name: singular_entropy
"""
PICO = "{suite: pico, sizes: [xs], steps: [0, 100]}"


class Evil:
    """A pickle that runs a shell command when it is loaded (without weights_only)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ------------------------------------------------------------------------------- helpers


def spec_file(folder: Path, name: str, models: str, loading: dict | None = None, **kw) -> Path:
    text = SPEC.format(name=name, description=kw.get("description", "security"), models=models)
    if loading:
        text += f"loading: {json.dumps(loading)}\n"
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def run_env(home: Path, **extra: str) -> dict[str, str]:
    """The run's environment: the test home, offline, no Ray settings of the test session."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HF_"))}
    env |= {
        "CKPTLAB_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf-home"),  # remote code modules land here, not in ~/.cache
        "HOME": str(home / "user-home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
    (home / "user-home").mkdir(exist_ok=True)
    return env | extra


def ckptlab_run(
    spec: Path, db: Path, home: Path, *, inline: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "ckptlab", "run", str(spec), "--db", str(db),
            "--tracking-uri", f"sqlite:///{db.parent / 'mlflow.db'}"]  # fmt: skip
    if inline:
        args += ["--executor", "inline"]
    return subprocess.run(
        args, env=run_env(home), capture_output=True, text=True, timeout=timeout, cwd=db.parent
    )


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def mlflow_parent(db: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of the run's MLflow parent run, read from the sqlite store itself."""
    (run_uuid,) = rows(db, "SELECT mlflow_run_id FROM runs")[0]
    with sqlite3.connect(db.parent / "mlflow.db") as con:
        params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", [run_uuid]))
        tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", [run_uuid]))
    return params, tags


def publish(hub: Path, repo: str, revision: str, source: Path, edit: Callable[[Path], None]):
    """A revision of ``repo`` made of ``source``'s files, edited: snapshots/<content id>/
    and refs/<revision> (no trailing newline), the layout snapshot_download reads offline."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "snapshots").mkdir(exist_ok=True)
    staging = root / "staging"
    shutil.copytree(source, staging)
    edit(staging)
    commit = content_commit_id(staging)
    staging.rename(root / "snapshots" / commit)
    (root / "refs" / revision).write_text(commit)


def reason(error: str) -> str:
    """A failure's reason without the checkpoint's folder: 'load: CheckpointError: <folder>:
    <reason> (hub.py:NN)' -> '<reason> (hub.py:NN)'."""
    return error.split(": ", 3)[-1]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line a refused command prints; fails on a traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sec_home(tmp_path_factory, pico_hub: Path) -> Path:
    """A CKPTLAB_HOME whose hub is the pico hub plus three edited repos:
    sec/bin-only (pico-xs step0, step100 with the same weights as pytorch_model.bin),
    sec/evil (step100 whose pytorch_model.bin runs `touch <marker>` when unpickled),
    sec/remote (step0 whose config maps AutoModelForCausalLM to a modeling_remote.py that
    writes a marker when imported)."""
    home = tmp_path_factory.mktemp("sec-home")
    hub = home / "hub"
    shutil.copytree(pico_hub, hub, symlinks=True)

    def snapshot(revision: str) -> Path:
        return snapshot_folder(hub, "pico/pico-xs", revision)

    def to_bin(folder: Path) -> None:
        state = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / "pytorch_model.bin")

    def evil(folder: Path) -> None:
        (folder / "model.safetensors").unlink()
        state = {"gpt_neox.embed_in.weight": Evil(f"touch {home / 'PICKLE-RAN'}")}
        torch.save(state, folder / "pytorch_model.bin")

    def remote(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        (folder / "modeling_remote.py").write_text(
            "import os\nfrom pathlib import Path\n\n"
            "from transformers import GPTNeoXForCausalLM as RemoteForCausalLM  # noqa: F401\n\n"
            f"Path({str(home / 'REMOTE-CODE-RAN')!r}).write_text(str(os.getpid()))\n"
        )

    for revision in ("step0", "step100"):
        publish(hub, "sec/bin-only", revision, snapshot(revision), to_bin)
    publish(hub, "sec/evil", "step100", snapshot("step100"), evil)
    publish(hub, "sec/remote", "step0", snapshot("step0"), remote)
    return home


@pytest.fixture(scope="module")
def reference(sec_home: Path, tmp_path_factory) -> Path:
    """The safetensors run the pickled copies must match: pico-xs steps 0 and 100."""
    folder = tmp_path_factory.mktemp("reference")
    db = folder / "r.duckdb"
    result = ckptlab_run(spec_file(folder, "reference", PICO), db, sec_home)
    assert result.returncode == 0, result.stdout + result.stderr
    return db


VALUES = "SELECT step, analysis, metric, layer, value FROM results WHERE item IS NULL"


# ------------------------------------------------------------------------------- pickles


def test_pickle_weights_load_by_default_equal_to_safetensors_refused_when_set(
    sec_home, reference, tmp_path, reliability
):
    models = "{repo: sec/bin-only, revisions: [step0, step100]}"
    refused_db = tmp_path / "refused" / "r.duckdb"
    refused_db.parent.mkdir()
    refused = ckptlab_run(
        spec_file(tmp_path, "pickle-refused", models, {"allow_pickle_weights": False}),
        refused_db,
        sec_home,
    )
    failures = rows(refused_db, "SELECT revision, analysis, error FROM failures")
    # Refused at plan time: 'resolve: sec/bin-only@stepN: <reason>', the same for both steps.
    errors = {error.split(": ", 2)[-1] for *_, error in failures}

    allowed_db = tmp_path / "allowed" / "r.duckdb"
    allowed_db.parent.mkdir()
    allowed = ckptlab_run(spec_file(tmp_path, "pickle-default", models), allowed_db, sec_home)
    expected = {tuple(r[:4]): r[4] for r in rows(reference, VALUES)}
    got = {tuple(r[:4]): r[4] for r in rows(allowed_db, VALUES)}
    worst = max((abs(got[k] - v) for k, v in expected.items() if k in got), default=None)
    reliability.row(
        "Security",
        "pickle-only checkpoints (pytorch_model.bin, pico-xs steps 0 and 100), "
        "allow_pickle_weights: false, then the default (on)",
        f"off: exit {refused.returncode}, {len(failures)} of 4 cells failed: "
        f"{sorted(errors)[0] if errors else 'none'!r}; on: exit "
        f"{allowed.returncode}, {len(got)} values, {len(expected)} in the safetensors run, "
        f"max |difference| {worst}",
        rows_lost=None,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert len(failures) == 4 and len(errors) == 1, failures
    (error,) = errors
    assert "only pickled weights (pytorch_model.bin), refused" in error
    assert "loading.allow_pickle_weights: false" in error and "\n" not in error
    assert rows(refused_db, "SELECT count(*) FROM cells") == [(0,)]
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert rows(allowed_db, "SELECT count(*) FROM failures") == [(0,)]
    assert rows(allowed_db, "SELECT DISTINCT weight_format FROM checkpoints") == [("pickle",)]
    assert len(expected) == 16 and got.keys() == expected.keys()
    assert worst == 0.0  # the same tensors: the same values, bit for bit


def test_malicious_pickle_never_runs(sec_home, tmp_path, reliability):
    marker = sec_home / "PICKLE-RAN"
    payload = next((sec_home / "hub" / "models--sec--evil" / "snapshots").glob("*/*.bin"))
    # The payload is live: a plain torch.load runs it (in a throwaway process).
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(payload)!r}, weights_only=False)"],
        capture_output=True,
        timeout=120,
    )
    live = marker.exists()
    marker.unlink(missing_ok=True)

    db = tmp_path / "r.duckdb"
    models = "{repo: sec/evil, revisions: [step100]}"
    spec = spec_file(tmp_path, "evil", models, {"allow_pickle_weights": True})
    result = ckptlab_run(spec, db, sec_home)
    failures = rows(db, "SELECT analysis, error FROM failures")
    errors = {reason(error) for _, error in failures}
    reliability.row(
        "Security",
        "pytorch_model.bin whose __reduce__ runs os.system('touch MARKER'), pickles allowed",
        f"payload live under torch.load(weights_only=False): {live}; under ckptlab: marker "
        f"created {marker.exists()}, exit {result.returncode}, {len(failures)} of 2 cells failed: "
        f"{sorted(errors)[0] if errors else 'none'!r}",
        rows_lost=None,
    )
    assert live, "the malicious pickle does not run even without weights_only: no test"
    assert not marker.exists(), "the pickle's code ran"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(failures) == 2 and len(errors) == 1, failures
    (error,) = errors
    assert "pickled weights refused: pytorch_model.bin would call posix.system" in error, error
    assert "weights_only=True" in error and "\n" not in error
    assert "weights_only` set to `False` will likely succeed" not in error  # no bad advice


# --------------------------------------------------------------------------- remote code


def test_remote_code_runs_only_when_the_spec_trusts_it(sec_home, tmp_path, reliability):
    marker = sec_home / "REMOTE-CODE-RAN"
    marker.unlink(missing_ok=True)
    models = "{repo: sec/remote, revisions: [step0]}"
    seen = {}
    for trust in (None, True):  # a spec that does not say, and one that opts in
        name = f"remote-{trust}".lower()
        db = tmp_path / name / "r.duckdb"
        db.parent.mkdir()
        loading = None if trust is None else {"trust_remote_code": trust}
        result = ckptlab_run(spec_file(tmp_path, name, models, loading), db, sec_home)
        params, tags = mlflow_parent(db)
        seen[trust] = {
            "exit": result.returncode,
            "ran": marker.exists(),
            "runs": rows(db, "SELECT trust_remote_code FROM runs")[0][0],
            "param": params.get("loading.trust_remote_code"),
            "tag": tags.get("ckptlab.trust_remote_code"),
            "cells": rows(db, "SELECT count(*) FROM cells")[0][0],
            "output": result.stdout + result.stderr,
        }
    reliability.row(
        "Security",
        "config.json auto_map -> modeling_remote.py that writes a marker on import; "
        "trust_remote_code unset, then true",
        "; ".join(
            f"{'unset' if t is None else str(t).lower()}: code ran {s['ran']}, cells "
            f"{s['cells']}/2, runs.trust_remote_code={s['runs']}, MLflow param "
            f"{s['param']}, tag {s['tag']}"
            for t, s in seen.items()
        ),
        rows_lost=None,
    )
    for trust, s in seen.items():
        assert s["exit"] == 0 and s["cells"] == 2, s["output"]
        on = trust is True
        assert s["ran"] is on, (trust, s)
        assert s["runs"] is on
        assert s["param"] == str(on).lower() and s["tag"] == str(on).lower()
    assert int(marker.read_text()) != os.getpid()  # it ran in the run's process, not here


# -------------------------------------------------------------------------------- tokens

_SESSION = re.compile(r"(/\S*?/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+)")


def _files(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        if root.is_file():
            found.append(root)
        elif root.is_dir():
            found += [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return found


@pytest.mark.slow
def test_hf_token_is_written_nowhere(sec_home, tmp_path, reliability):
    canary = "hf_CANARY" + secrets.token_hex(16)
    control = "control" + secrets.token_hex(8)  # in the spec: must be found where it is stored
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = spec_file(run_dir, "tokens", PICO, description=control)
    spec.write_text(spec.read_text() + "resources: {workers: 1}\n")
    db = run_dir / "r.duckdb"
    home = tmp_path / "home"  # its own CKPTLAB_HOME, so everything the run writes is here
    home.mkdir()
    shutil.copytree(sec_home / "hub" / "models--pico--pico-xs", home / "hub/models--pico--pico-xs")
    out, err = run_dir / "stdout.txt", run_dir / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ckptlab", "run", str(spec), "--db", str(db),
             "--tracking-uri", f"sqlite:///{run_dir / 'mlflow.db'}"],
            env=run_env(home, HF_TOKEN=canary),
            cwd=run_dir,
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
        root = psutil.Process(process.pid)
        command_lines: dict[int, list[str]] = {}
        while process.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in tree:
                try:
                    command_lines.setdefault(p.pid, p.cmdline())
                except psutil.Error:
                    continue
            time.sleep(0.2)
        process.wait(timeout=300)
    output = out.read_text() + err.read_text()
    assert process.returncode == 0, output
    assert "private local Ray on 127.0.0.1" in output

    # Where the run's Ray kept its session: named in its servers' command lines.
    sessions = {m for cmd in command_lines.values() for m in _SESSION.findall(" ".join(cmd))}
    assert len(sessions) == 1, sessions
    session = Path(sessions.pop())
    ray_files = _files(session)
    assert ray_files, session

    # The runtime env Ray received, as its runtime-env agent logged it.
    agent_log = (session / "logs" / "runtime_env_agent.log").read_text()
    runtime_envs = [
        json.loads(m) for m in re.findall(r"Creating runtime env: (\{.*\}) with timeout", agent_log)
    ]
    assert runtime_envs, agent_log[-2000:]
    env_keys = set().union(*(set(e.get("env_vars", {})) for e in runtime_envs))

    # Command lines, with Ray's base64-encoded config decoded.
    texts = [" ".join(cmd) for cmd in command_lines.values()]
    for cmd in command_lines.values():
        for arg in cmd:
            if arg.startswith("--config_list="):
                texts.append(base64.b64decode(arg.split("=", 1)[1] + "==").decode(errors="replace"))

    # DuckDB, through DuckDB: every value of every table.
    tables, values, db_hits, db_control = 0, 0, [], 0
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        for table in names:
            tables += 1
            for row in con.execute(f'SELECT * FROM "{table}"').fetchall():
                for value in row:
                    if isinstance(value, str):
                        values += 1
                        db_hits += [table] * (canary in value)
                        db_control += control in value

    # Raw bytes of everything the run wrote: run folder (DuckDB, MLflow db + artifacts,
    # output), its home (hub cache, sketches, HF_HOME, HOME) and Ray's session.
    written = _files(run_dir, home)
    needle = canary.encode()
    hits = [p for p in [*written, *ray_files] if needle in p.read_bytes()]
    mlflow_files = _files(run_dir / "mlflow.db", run_dir / "mlartifacts")
    mlflow_control = sum(control.encode() in p.read_bytes() for p in mlflow_files)
    command_hits = [t[:200] for t in texts if canary in t]
    size_mb = sum(p.stat().st_size for p in [*written, *ray_files]) / 2**20
    reliability.row(
        "Security",
        "canary HF_TOKEN in a local-Ray run's environment; everything it wrote searched",
        f"canary found in {len(hits)} of {len(written) + len(ray_files)} files ({size_mb:.1f} MB: "
        f"{len(ray_files)} Ray session files, {len(mlflow_files)} MLflow files), {len(db_hits)} "
        f"of {values} text values in {tables} DuckDB tables, {len(command_hits)} of "
        f"{len(texts)} command lines; runtime env vars {sorted(env_keys)}; control string "
        f"found in {db_control} DuckDB values and {mlflow_control} MLflow files",
        rows_lost=None,
    )
    assert db_control >= 1 and mlflow_control >= 1, "the search does not see what is stored"
    assert len(ray_files) > 20 and len(mlflow_files) >= 2 and tables >= 7
    assert not hits, f"HF_TOKEN written to {hits}"
    assert not db_hits and not command_hits, (db_hits, command_hits)
    assert canary not in output and canary not in agent_log
    assert env_keys <= {"HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"}, env_keys


# ------------------------------------------------------------------------ read-only query

REFUSED = {
    "INSERT": "INSERT INTO runs (run_id) VALUES ('x')",
    "UPDATE": "UPDATE metrics SET value = 0",
    "UPDATE ... RETURNING": "UPDATE metrics SET value = 0 RETURNING *",
    "DELETE": "DELETE FROM metrics",
    "WITH ... INSERT": "WITH x AS (SELECT 1) INSERT INTO runs (run_id) SELECT 'y'",
    "CREATE TABLE": "CREATE TABLE t AS SELECT 1",
    "CREATE SECRET": "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "DROP": "DROP TABLE cells",
    "ALTER": "ALTER TABLE cells ADD COLUMN x INTEGER",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('/etc/passwd')",
    "read_parquet": "SELECT * FROM read_parquet('{tmp}/x.parquet')",
    "replacement scan": "FROM '/etc/passwd'",
    "glob": "SELECT * FROM glob('/etc/*')",
    "http read": "SELECT * FROM read_json('http://127.0.0.1:9/x.json')",
    "COPY TO": "COPY metrics TO '{tmp}/leak.csv'",
    "COPY (query) TO": "COPY (SELECT * FROM runs) TO '{tmp}/leak.csv'",
    "EXPORT DATABASE": "EXPORT DATABASE '{tmp}/export'",
    "IMPORT DATABASE": "IMPORT DATABASE '{tmp}/export'",
    "ATTACH": "ATTACH '{tmp}/other.duckdb' AS other",
    "DETACH": "DETACH r",
    "USE": "USE memory",
    "INSTALL": "INSTALL httpfs",
    "LOAD": "LOAD httpfs",
    "UPDATE EXTENSIONS": "UPDATE EXTENSIONS",
    "SET": "SET enable_external_access = true",
    "RESET": "RESET lock_configuration",
    "PRAGMA": "PRAGMA enable_profiling",
    "CALL": "CALL pragma_version()",
    "CHECKPOINT": "CHECKPOINT",
    "VACUUM": "VACUUM",
    "BEGIN": "BEGIN TRANSACTION",
    "two statements": "SELECT 1; DROP TABLE cells",
    "second statement after a comment": "SELECT 1 -- ;\n; DELETE FROM metrics",
    "EXPLAIN ANALYZE DELETE": "EXPLAIN ANALYZE DELETE FROM metrics",
    "query() of a DELETE": "SELECT * FROM query('DELETE FROM metrics')",
    "environment": "SELECT getenv('HF_TOKEN')",
}


def _state(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    stat = db.stat()
    return {
        "counts": counts,
        "sha256": hashlib.sha256(db.read_bytes()).hexdigest(),
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
        "siblings": sorted(p.name for p in db.parent.iterdir()),
    }


def test_query_refuses_all_but_reading(reference, tmp_path, reliability):
    db = tmp_path / "r.duckdb"
    shutil.copy2(reference, db)
    outside = tmp_path / "outside"
    outside.mkdir()
    before = _state(db)
    assert before["counts"]["metrics"] == 16

    def query(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ckptlab", "query", sql, "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    outcomes: dict[str, tuple[int, str]] = {}
    for kind, sql in REFUSED.items():
        result = query(sql.format(tmp=outside))
        outcomes[kind] = (result.returncode, one_line_error(result) if result.returncode else "")
        assert result.stdout == "", (kind, result.stdout)
    allowed = query("SELECT count(*) AS n FROM metrics")
    after = _state(db)
    refused = [k for k, (code, _) in outcomes.items() if code != 0]
    reliability.row(
        "Security",
        f"`ckptlab query` with {len(REFUSED)} kinds of non-reading SQL (writes, DDL, file/HTTP "
        "reads, COPY/EXPORT, ATTACH, INSTALL/LOAD, SET/PRAGMA, CALL, two statements, "
        "EXPLAIN ANALYZE of a DELETE, getenv)",
        f"{len(refused)} of {len(REFUSED)} refused with exit 1 and one `error:` line, no "
        f"traceback; the DuckDB file's bytes, mtime and {sum(after['counts'].values())} rows in "
        f"{len(after['counts'])} tables unchanged: {after == before}; files outside: "
        f"{len(list(outside.iterdir()))}; a SELECT still answers: {allowed.returncode == 0}",
        rows_lost=None,
    )
    assert not [k for k, (code, _) in outcomes.items() if code != 1], outcomes
    assert after == before
    assert list(outside.iterdir()) == []
    assert allowed.returncode == 0 and "16" in allowed.stdout, allowed.stderr
    for kind in ("read_csv", "read_text", "glob", "replacement scan"):
        assert "root:" not in outcomes[kind][1]
    assert "statements are refused" in outcomes["DELETE"][1]
    assert "one statement at a time (2 given)" in outcomes["two statements"][1]
    assert "file system operations are disabled" in outcomes["read_csv"][1]
    assert "also under EXPLAIN" in outcomes["EXPLAIN ANALYZE DELETE"][1]

"""`ckptlab run --address` attaches to a running Ray cluster instead of starting one."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ckptlab.results import ResultStore

pytestmark = pytest.mark.slow

SPEC = """
name: attached
models:
  - suite: pico
    sizes: [xs]
    steps: [0, 64]
input_sets:
  - {name: prose, builtin: pydoc_topics, num_sequences: 2, seq_len: 16}
analyses:
  - name: saturation
resources: {workers: 1}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(port: int, env: dict):
    """A `ray start --head --block` cluster of our own. Stopped with SIGINT to that process
    alone: `ray stop` would kill every Ray on the machine, the test session's too."""
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
    temp_dir = Path(tempfile.mkdtemp(prefix="ckr-", dir="/tmp"))
    log = temp_dir / "head.log"
    ray_bin = Path(sys.executable).parent / "ray"
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                ray_bin,
                "start",
                "--head",
                "--block",
                f"--port={port}",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield temp_dir
    finally:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_run_attaches_to_an_existing_cluster(tmp_path, pico_hub):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    with ray_head(port, env) as temp_dir:
        spec = tmp_path / "attached.yaml"
        spec.write_text(SPEC)
        db = tmp_path / "r.duckdb"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ckptlab",
                "run",
                str(spec),
                "--db",
                str(db),
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
                "--address",
                f"127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "cells computed" in done.stdout
        assert ResultStore(db).query("SELECT count(*) FROM cells").item() == 2
        # The worker actor ran on the attached cluster: its worker logs name the actor.
        worker_logs = temp_dir.glob("session_*/logs/worker-*.out")
        assert any("CheckpointWorker" in p.read_text(errors="replace") for p in worker_logs)

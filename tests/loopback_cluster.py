"""A real multi-node Ray cluster on this machine, for tests: `ray start --head` plus worker
nodes (optionally declaring fake GPUs), each with its own temp dir, all on loopback.

Every node is a `ray start --block` process of our own, stopped with SIGINT to that process
alone (then SIGKILL to its process group): `ray stop` would kill every Ray on the machine,
the test session's own included.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
CKPTLAB = str(VENV_BIN / "ckptlab")


def free_port() -> int:
    """A free port below the kernel's ephemeral range (where Ray's own processes take theirs)
    and above Ray's worker ports (10002-19999), so no Ray process can grab it meanwhile."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def cluster_env(auth: str, token: str | None, **extra: str) -> dict[str, str]:
    """The environment of the cluster's processes and of its clients: this venv first on
    PATH (job entrypoints run `python` from it), no private-Ray settings of the test session."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in ("PYTHONPATH",)
    }
    env |= {
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": auth,
        **extra,
    }
    if auth == "token":
        env["RAY_AUTH_TOKEN"] = token or secrets.token_hex(32)
    return env


@dataclass
class Node:
    process: subprocess.Popen
    temp_dir: Path
    log: Path


@dataclass
class LoopbackCluster:
    env: dict[str, str]
    head_cpus: int = 1
    # One dict of `ray start` resources per worker node, e.g. {"num_gpus": 1, "num_cpus": 2}.
    workers: list[dict] = field(default_factory=list)
    # Per worker node, environment variables of its own (e.g. a CKPTLAB_HOME per node).
    worker_envs: list[dict] = field(default_factory=list)
    client_server: bool = False
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.dashboard_port = free_port()
        self.client_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ckr-", dir="/tmp"))  # sockets < 107 bytes

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], env: dict | None = None) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir()
        log = self.root / f"{name}.log"
        # A node is stopped with SIGINT, so it must not start with SIGINT ignored (as under
        # pytest run by a shell's `cmd &`): exec resets a caught signal, not an ignored one.
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        with log.open("w") as out:
            process = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--block",
                    f"--temp-dir={temp_dir}",
                    "--disable-usage-stats",
                    # Its default (52365) is one port per machine: two nodes, or two clusters,
                    # on one machine would answer each other's job requests.
                    f"--dashboard-agent-listen-port={free_port()}",
                    *args,
                ],
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        signal.signal(signal.SIGINT, before)
        node = Node(process, temp_dir, log)
        self.nodes.append(node)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start {name} failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return node

    def __enter__(self) -> LoopbackCluster:
        try:
            head = [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--num-gpus=0",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ]
            if self.client_server:
                head.append(f"--ray-client-server-port={self.client_port}")
            self._start("head", head)
            for i, resources in enumerate(self.workers):
                args = [f"--address={self.gcs}"]
                args += [f"--{k.replace('_', '-')}={v}" for k, v in resources.items()]
                env = self.worker_envs[i] if i < len(self.worker_envs) else None
                self._start(f"worker{i}", args, env)
            self.wait_for_nodes(1 + len(self.workers))
        except BaseException:
            self.__exit__()
            raise
        return self

    def state(self, kind: str, *filters: str) -> list[dict]:
        """`ray list <kind>` through the state API, as JSON."""
        args = [RAY, "list", kind, "--address", self.dashboard, "--format", "json", "--detail"]
        for f in filters:
            args += ["--filter", f]
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(done.stdout + done.stderr)
        return json.loads(done.stdout)

    def logs(self, pattern: str, chars: int = 3000) -> str:
        """The ends of the head node's Ray logs matching ``pattern``, for a failure message."""
        logs = sorted((self.root / "head" / "session_latest" / "logs").glob(pattern))
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-chars:]}" for p in logs)

    def wait_for_nodes(self, n: int) -> None:
        deadline = time.monotonic() + 90
        while True:
            try:
                alive = [x for x in self.state("nodes") if x["state"] == "ALIVE"]
                if len(alive) >= n:
                    return
            except RuntimeError:
                pass  # the dashboard is still starting
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(alive)} of {n} nodes came up")
            time.sleep(1)

    def __exit__(self, *exc) -> None:
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGINT)
        for node in reversed(self.nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=60)
            # Whatever of it is left (its raylet, workers, agents) is in its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

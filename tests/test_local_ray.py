"""A default `ckptlab run` starts a private local Ray that listens on loopback only, with
token authentication, and a project folder's own `analyses/` or `orchestrator/` never shadows
ckptlab's packages (Ray workers put the driver's working directory on their sys.path)."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ckptlab.results import ResultStore

pytestmark = pytest.mark.slow

SPEC = """
name: local-default
models: [{suite: pico, sizes: [xs, s], steps: [0, 1, 2, 4, 8, 16, 32, 64, 100]}]
input_sets: [{name: prose, builtin: pydoc_topics, num_sequences: 4, seq_len: 32}]
analyses: [{name: saturation}, {name: anisotropy}, {name: linearity}]
resources: {workers: 2}
"""


def listening(processes: list[psutil.Process]) -> dict[tuple[str, int, str], str]:
    """(address, port, protocol) -> process name of every server socket of these processes:
    TCP sockets in LISTEN, and UDP sockets bound without a peer."""
    found = {}
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.type == socket.SOCK_STREAM:
                    server, protocol = conn.status == psutil.CONN_LISTEN, "tcp"
                else:  # UDP has no LISTEN: a socket bound to a port with no peer serves
                    server, protocol = bool(conn.laddr) and not conn.raddr, "udp"
                if server:
                    found[(conn.laddr.ip, conn.laddr.port, protocol)] = process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_default_run_is_private_loopback_and_unshadowed(
    tmp_path, pico_hub, ckptlab_home, reliability
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "spec.yaml").write_text(SPEC)
    for name in ("analyses", "orchestrator"):
        (project / name).mkdir()
        (project / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name}/ was imported')\n"
        )
    home = tmp_path / "home"  # where Ray would write ~/.ray/auth_token
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(home), "CKPTLAB_HOME": str(ckptlab_home), "HF_HUB_OFFLINE": "1"}
    db = tmp_path / "r.duckdb"
    ckptlab = Path(sys.executable).parent / "ckptlab"
    process = subprocess.Popen(
        [ckptlab, "run", "spec.yaml", "--db", str(db),
         "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    root = psutil.Process(process.pid)
    sockets: dict[tuple[str, int, str], str] = {}
    polls = 0
    started: set[psutil.Process] = set()
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        started |= set(tree[1:])
        sockets |= listening(tree)
        polls += 1
        time.sleep(0.2)
    process.wait()
    output = process.stdout.read()
    names = set(sockets.values())
    exposed = {where: name for where, name in sockets.items() if not is_loopback(where[0])}
    reliability.row(
        "Security",
        "server sockets of a default `ckptlab run` (private local Ray) and every process it "
        "started, TCP LISTEN and bound UDP, polled every 0.2 s",
        f"{len(sockets)} server sockets ({sum(w[2] == 'udp' for w in sockets)} UDP) of "
        f"{len(names)} programs ({', '.join(sorted(names))}) over {len(started) + 1} processes "
        f"and {polls} polls; beyond loopback: {len(exposed)}",
        rows_lost=None,
    )
    assert process.returncode == 0, output
    assert "private local Ray on 127.0.0.1 (token auth)" in output
    assert ResultStore(db).query("SELECT count(*) FROM cells").item() == 18 * 3
    assert ResultStore(db).query("SELECT count(*) FROM failures").item() == 0
    assert {"gcs_server", "raylet"} <= names, sockets  # we did watch Ray's servers
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert not (home / ".ray").exists()  # the per-run token was never written to disk
    # Nothing the run started is left behind.
    deadline = time.monotonic() + 15
    while (alive := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(started) > 3 and not alive, alive


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

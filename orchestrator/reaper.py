"""A watchdog for the driver of a private local Ray: when the driver dies, even by SIGKILL
(no cleanup of its own can run), kill what it had started. Ray's GCS, raylet and workers die
with the driver, but its dashboard and runtime-env agents outlive it.

Started by the driver as a detached process (``start_reaper``); it records the driver's
descendants every half second and, once the driver is gone, stops every recorded process
still alive (psutil's ``is_running``: the pid and its start time since boot, so a reused pid
is never touched).

Owns: ``start_reaper`` and ``watch``. Must not: stop a process it did not record as the driver's
descendant (a pid counts with its start time), or import another ckptlab module (it runs
alone, as ``python -m ckptlab.orchestrator.reaper``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 1.0


def start_reaper() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ckptlab.orchestrator.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: Ctrl-C spares it
    )


def watch(driver_pid: int) -> None:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    # pid -> the process as first seen. Its identity is the pid and its start time since boot
    # (what is_running compares), not create_time(): that adds the boot time as the clock says
    # now (/proc/stat's btime moves with clock adjustments), and a recorded agent that seemed
    # to start a second later than recorded would be spared as another process.
    seen: dict[int, psutil.Process] = {}
    while _alive(driver):
        try:
            children = driver.children(recursive=True)
        except psutil.NoSuchProcess:  # the driver itself is gone
            break
        for child in children:
            if child.pid != os.getpid():  # the reaper is the driver's child too
                seen.setdefault(child.pid, child)
        time.sleep(POLL_S)
    time.sleep(GRACE_S)  # Ray's own shutdown, when there was one, goes first
    left = []
    for process in seen.values():
        try:
            if process.is_running():
                process.terminate()
                left.append(process)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    watch(int(sys.argv[1]))

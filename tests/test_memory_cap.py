"""The CPU memory cap counts what is live: a freed tensor-sized block leaves the data segment
(RLIMIT_DATA's measure) at once, instead of staying mapped in glibc's heaps after glibc raised
its mmap threshold. Each case runs in a fresh interpreter: malloc settings are per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Free a 30 MiB block (glibc then raises its mmap threshold to 30 MiB), then allocate and free
# a 20 MiB one: how much of it the data segment still holds, in MiB.
PROBE = """
import ctypes, re, sys
from pathlib import Path
from ckptlab.orchestrator.memory import unmap_large_frees
def vm_data():
    return int(re.search(r"VmData:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024
if sys.argv[1] == "capped":
    assert unmap_large_frees()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(30 << 20))
before = vm_data()
libc.free(libc.malloc(20 << 20))
print(vm_data() - before)
"""


def retained_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_block_leaves_the_data_segment_under_the_cap():
    assert retained_mib("default") >= 19.5  # glibc's dynamic threshold: kept in the heap
    assert abs(retained_mib("capped")) < 1.0  # mmap'ed and unmapped on free

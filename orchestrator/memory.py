"""Running out of memory in a unit, and the limits that make it happen early: what counts as
out of memory, and the CPU heap cap a unit's passes run under.

Owns: recognising an allocation failure and the RLIMIT_DATA cap. Must not: decide what to do
about it (the worker halves the batch; see ``worker.run_input_set``).
"""

from __future__ import annotations

import ctypes
import functools
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ckptlab.lazy import torch


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's refusal."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(err)
    # oneDNN (CPU kernels) reports an allocation it could not make as a failed primitive.
    return isinstance(err, RuntimeError) and (
        "out of memory" in text
        or "can't allocate memory" in text
        or "could not create a primitive" in text
    )


def free_cached_memory() -> None:
    """Hand the CUDA caching allocator's free blocks back before a smaller try."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# glibc's mallopt parameter: allocations at least this large are mmap'ed, and unmapped when
# freed. Setting it also turns off glibc's dynamic threshold. 16 MiB, measured on pico with a
# 0.12 GiB cap and batch 320 (8 runs each): glibc's default left 3 runs with no batch that
# fit, 16 MiB none. Lower thresholds cost more page faults: a capped pass over pico-m took
# 1.8x the compute at 1 MiB, 1.7x at 4 MiB, 1.3x at 8 MiB and about 1.15x at 16 MiB (larger
# models spend far more compute per byte allocated).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 16 << 20


@functools.cache
def unmap_large_frees() -> bool:
    """Make a freed tensor's memory leave the data segment at once, so that RLIMIT_DATA
    measures what is live. By default glibc raises its mmap threshold after each large free
    (up to 32 MiB), and later tensors below it come from heaps that keep their freed pages
    mapped: after a pass ran out of memory at a large batch, the memory it freed still
    counted, and now and then even a batch of one no longer fit (seen in CI: oneDNN could
    not map a primitive). Only under a cap (``cpu_memory_cap``). False where the C library
    is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


@contextmanager
def cpu_memory_cap(gib: float | None) -> Iterator[None]:
    """While a unit's passes run, cap the data segment (RLIMIT_DATA: heap and anonymous
    mappings) at what the process holds now, the model loaded, plus ``gib``. Only then: Ray's
    own buffers (the one that sends the result back) must never meet the cap, or the worker
    process dies, and a first load's imports are a one-off cost, not the pass's."""
    if not gib:
        yield
        return
    unmap_large_frees()
    status = Path("/proc/self/status").read_text()
    held = int(re.search(r"VmData:\s+(\d+) kB", status).group(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (held * 1024 + int(gib * 2**30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

"""Running out of memory in a unit, and the limits that make it happen early: what counts as
out of memory, and the CPU heap cap a unit's passes run under.

Owns: recognising an allocation failure and the RLIMIT_DATA cap. Must not: decide what to do
about it (the worker halves the batch; see ``worker.run_input_set``).
"""

from __future__ import annotations

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


@contextmanager
def cpu_memory_cap(gib: float | None) -> Iterator[None]:
    """While a unit's passes run, cap the data segment (RLIMIT_DATA: heap and anonymous
    mappings) at what the process holds now, the model loaded, plus ``gib``. Only then: Ray's
    own buffers (the one that sends the result back) must never meet the cap, or the worker
    process dies, and a first load's imports are a one-off cost, not the pass's."""
    if not gib:
        yield
        return
    status = Path("/proc/self/status").read_text()
    held = int(re.search(r"VmData:\s+(\d+) kB", status).group(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (held * 1024 + int(gib * 2**30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

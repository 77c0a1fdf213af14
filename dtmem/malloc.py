"""Keep the memory a model call frees for the next call (glibc's malloc, CPU): training
processes and evaluation workers set this once.

A DT-Mem step allocates and frees tensors of 1 to 30 MB many times (the memory's (tokens x
slots) scores, forward and backward). By default glibc serves blocks above a moving threshold
with ``mmap`` and returns free memory at the top of the heap to the system, so every step
faults the same pages in again: about 4 ms per 16 MB tensor, a tenth of a step with 1024 slots
(``benchmarks/bench_memory.py``); an evaluation worker's forward of 8 windows faulted
1,500-3,900 pages a call, 1.2-1.8x its time. Raising the mmap threshold to its maximum and the trim
threshold well above a step's working set keeps those pages in the process, as a caching
allocator would; the process holds its peak size, which it reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit): bigger goes to mmap
_TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before it is returned


def keep_freed_memory() -> bool:
    """Set both thresholds for this process; True if glibc took them (False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )

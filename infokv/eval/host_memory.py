"""Keep freed host memory in the process for reuse (glibc malloc settings), for CPU runs.

A sweep's compressed caches are allocated afresh for every batch, tens of MiB per layer on CPU.
By default glibc serves blocks this large from fresh mappings, or returns the top of its heap to the
system once more than twice the largest freed block lies free there, so every batch writes pages that
the system must map and zero again: a page fault per 4 KiB. Here the mmap threshold is raised to
glibc's maximum (32 MiB) and trimming is switched off, so freed blocks below 32 MiB are mostly reused
from the heap. The process's resident memory then stays near its peak instead of shrinking after a batch.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's upper limit for ``M_MMAP_THRESHOLD`` on 64-bit systems."""
NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Apply the settings to this process; False (nothing changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))

"""Keep freed tensor memory inside the process (glibc malloc).

By default glibc serves every allocation over a few hundred KB with a fresh mmap and unmaps it on
free, so a training loop that allocates the same activations every step faults each page in again
and again: in `ml3 train sine` that was about 10% of the time, spent in the kernel (bench/RESULTS.md).
Raising the mmap threshold to its maximum (32 MB) and the trim threshold keeps those blocks in
the heap for the next step. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """True when glibc took both settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))

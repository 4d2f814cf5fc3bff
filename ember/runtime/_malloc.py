"""glibc's malloc, tuned once for a process that runs compiled programs.

By default glibc serves allocations above a threshold (128 KiB, rising as such blocks
are freed, up to 32 MiB) with fresh mmaps, and gives the top of the heap back to the OS
when more than twice that is free. A model's large intermediates (oneDNN's outputs,
attention scores, an LLM step's activations) are allocated and freed on every run, so
every run faults their pages in again and the kernel zeroes them: on SmolLM2's 2048-token
prefill step that was ~200k page faults and a third of the step's time. With the mmap
threshold fixed at its ceiling and trimming past 1 GiB only, freed blocks are reused
from the heap: the faults go, and resident memory stays at its peak (which is what a
serving process holds anyway). EMBER_MALLOC_TUNING=0 leaves malloc alone.
`return_freed_heap` trims once, after a large model's compile freed its passes' memory.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def tune_malloc() -> bool:
    """Apply the settings (once per process); False where they do not apply (not glibc,
    or turned off)."""
    global _done
    if _done:
        return True
    if os.environ.get("EMBER_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): its own allocator, left alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _done


def return_freed_heap() -> None:
    """Hand the heap a compile freed back to the OS: a full garbage collection (the passes'
    and the lowering's reference cycles), then glibc's malloc_trim, which the process would
    keep resident otherwise (MiniLM: 460 -> 445 MiB after compiling, its peak over the first
    runs 492-497 -> 484-487 MiB on a 2-core Xeon). The collection takes ~0.1 s, so a small
    model's compile skips it (ember.api). Without glibc, nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    gc.collect()
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)

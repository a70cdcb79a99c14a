"""Keep freed tensor memory in the process instead of handing it back to the kernel.

glibc's malloc serves large blocks (from 128 KiB) with fresh `mmap`s and gives freed memory
at the top of the heap back with `brk`, so each training step's activations land on new pages
that the kernel must fault in and zero again. Raising both thresholds keeps those pages:
10 epochs of the default digits training took 79,877 minor page faults instead of 260,224 and
0.66 s of system time instead of 1.18 s (`/usr/bin/time` on `vitkit train --epochs 10`, with
and without VITKIT_MALLOC=default; docs/training.md). The process then holds its peak memory
until it exits, which is what a training or benchmark process wants; the `vitkit` command
calls `keep_freed_memory()` at start, the library never does on its own (it would change the
host program's allocator).

Set VITKIT_MALLOC=default to leave glibc's settings alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit systems (HEAP_MAX / DEFAULT_MMAP_THRESHOLD_MAX);
# larger blocks (big batches of large images) still come from mmap.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; returns whether they were set (False elsewhere
    than Linux with glibc, or with VITKIT_MALLOC=default)."""
    if os.environ.get("VITKIT_MALLOC", "").strip().lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""Give freed snapshot memory back to the operating system (glibc only; elsewhere a no-op).

A snapshot is a few hundred arrays of 1-60 MB. glibc serves allocations above its mmap
threshold with their own mappings, returned to the system on free, but it raises that threshold
(up to 32 MB) each time such a block is freed, after which arrays of a few megabytes come from
the heap and stay there when freed: every swap would leave the resident size higher. Fixing
the threshold at 1 MB keeps every array in a mapping of its own, and `malloc_trim` after a swap
returns what the heap still holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("api.memory")
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            libc.mallopt  # noqa: B018  (glibc has it; musl and macOS do not)
            libc.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold (see the module doc); True if it could be done."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_memory() -> None:
    """Return free heap memory to the system (after a swap freed the old snapshot)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)

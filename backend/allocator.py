"""The C allocator's arenas, bounded for the backend's threads (glibc on Linux; elsewhere nothing to do).

glibc gives each thread that finds the allocator busy an arena of its own, up to 8 per core, and keeps
what is freed there for that arena's next request instead of handing it back to the system. The texture
stage runs its maps side by side on a new pool per request (threads.concurrently) and numpy frees tens of
megabytes of temporaries in each thread, so a worker's resident memory grew with every request: 8 London
photos in one process, peak 1991 -> 2618 MB (still rising) with glibc's default, 1708 -> 1902 MB with 2
arenas, 1906 -> 2026 MB with 4 (docs/bench.md). Pure ctypes: importing this pulls in no torch.

What a request freed stays in the arenas for the next one; a worker that then sits idle hands it back to
the system (`release_free_memory`, after worker.IDLE_RELEASE_S): 1.5 GB -> 0.88 GB resident.
"""
from __future__ import annotations

import ctypes
import os
import sys

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8     # glibc's mallopt parameter number (malloc.h)


def _glibc():
    """glibc as a ctypes library, or None (another platform, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Bound glibc's malloc arenas for this process (existing arenas stay; no new ones past `arenas`). A
    MALLOC_ARENA_MAX in the environment is the user's choice and is left alone. True when the bound is set."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, int(arenas)))


def release_free_memory() -> bool:
    """Hand the allocator's free memory back to the system (glibc's malloc_trim). The next request then
    pays for faulting it in again (measured +0.1 to +2 s in a noisy hour, docs/bench.md), so this is for a
    process about to sit idle."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False

"""The backend bounds glibc's malloc arenas (backend/allocator.py): without it, every thread of the texture
stage's pools got an arena of its own that kept what was freed there, and a worker's memory grew with
every request."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend.allocator import MALLOC_ARENAS

ROOT = Path(__file__).resolve().parents[1]
# Eight threads that each take memory from malloc at once, then glibc's own count of its arenas.
THREADS = """
import ctypes, sys, threading
if sys.argv[1] == "backend":
    import backend
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
start = threading.Barrier(8)
def work():
    start.wait()
    blocks = [libc.malloc(4096) for _ in range(200)]
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def arenas_after_threads(importing: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", THREADS, importing], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return len(re.findall(r"^Arena \d+:", out.stderr, re.M))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas")
def test_a_backend_process_keeps_to_its_malloc_arenas():
    plain, bounded = arenas_after_threads("plain"), arenas_after_threads("backend")
    print(f"arenas after 8 threads: {plain} in a plain Python, {bounded} once the backend is imported")
    assert plain > MALLOC_ARENAS          # what the threads would make (the measure can tell)
    assert 1 <= bounded <= MALLOC_ARENAS

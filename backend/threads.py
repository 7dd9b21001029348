"""Torch CPU thread counts per stage: small ops on a shared 2-core machine run faster on fewer threads."""
from __future__ import annotations

import contextlib
import math
import os

import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with n torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def idle_cpu_threads() -> int:
    """No more threads than the cores that are idle (plus this one), and no more than torch uses now.

    When other processes keep the cores busy, every OpenMP region waits for its threads to be
    scheduled: 2 threads on 2 busy cores ran 2-5x slower than 1 here (measured)."""
    current = torch.get_num_threads()
    if not hasattr(os, "getloadavg"):
        return current
    idle = (os.cpu_count() or 1) - os.getloadavg()[0] + 1.0
    return int(max(1, min(current, math.floor(idle + 0.5))))

"""Threads: torch CPU thread counts per stage (small ops on a shared 2-core machine run faster on fewer
threads), and independent numpy jobs run side by side (`concurrently`)."""
from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

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


class _Stopped(Exception):
    """Raised inside a job of `concurrently` after the call has already failed (its result is not used)."""


def concurrently(jobs: Sequence[Callable[[Callable[[], None]], Any]], check: Callable[[], None] = lambda: None,
                 poll_s: float = 0.1) -> list:
    """Each job's result, in order, with the jobs run on up to one thread per core: numpy, OpenCV and
    torch let go of the GIL in their heavy calls, so independent numpy work overlaps on the second core.

    Each job is called with a check function to call between its steps: it raises when `check()` does
    (a cancel) or once the call has failed, so that no job keeps running for nothing. The wait calls
    `check()` every `poll_s` s, so a cancel stays as quick as in one thread. A job's exception is
    raised here; results are the same as one after the other (the jobs share no state they write)."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
    stop = threading.Event()

    def job_check() -> None:
        if stop.is_set():
            raise _Stopped()
        check()

    pool = ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1)),
                              thread_name_prefix="likeness-job")
    try:
        futures = [pool.submit(job, job_check) for job in jobs]
        pending = set(futures)
        while pending:   # any job's failure is raised at once, not after the jobs before it in the list
            done, pending = wait(pending, timeout=poll_s, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()
            check()
        return [future.result() for future in futures]
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)

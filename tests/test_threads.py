"""threads.concurrently: results in order, a job's error raised, a cancel reaching every job."""
import threading
import time

import numpy as np
import pytest

from backend.errors import LikenessError
from backend.threads import concurrently


def test_results_in_order_and_side_by_side():
    started = []
    barrier = threading.Barrier(2, timeout=5)   # both jobs must be running at once, or this times out

    def job(k):
        def run(check):
            started.append(k)
            barrier.wait()
            check()
            return float(np.square(np.arange(k + 3.0)).sum())
        return run
    assert concurrently([job(0), job(1)]) == [5.0, 14.0]


def test_a_job_error_is_raised_and_stops_the_others():
    stopped = threading.Event()

    def fails(check):
        raise LikenessError("NOT_AN_IMAGE", "planted")

    def long(check):
        for _ in range(200):
            time.sleep(0.01)
            try:
                check()
            except Exception:
                stopped.set()
                raise
        return "ran to the end"
    with pytest.raises(LikenessError, match="planted"):
        concurrently([long, fails])
    assert stopped.wait(1.0), "the other job did not see that the call had failed"


def test_a_cancel_is_seen_while_waiting_and_by_the_jobs():
    cancel = threading.Event()

    def check():
        if cancel.is_set():
            raise LikenessError("CANCELLED", "cancelled")

    def job(chk):
        while True:
            time.sleep(0.01)
            chk()
    threading.Timer(0.2, cancel.set).start()
    t = time.perf_counter()
    with pytest.raises(LikenessError, match="CANCELLED"):
        concurrently([job, job], check)
    assert time.perf_counter() - t < 2.0

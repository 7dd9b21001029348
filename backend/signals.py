"""SIGTERM, SIGINT and SIGHUP as an exception, so that a stopped job cleans up like a failed one.

By default SIGTERM ends a process on the spot: a bundle being written leaves its temporary folder
behind. With `install()`, the first of these signals raises `Interrupted` in the main thread instead;
the staged write (bundle.staged_bundle) removes its temporary folder on the way out, and the worker
cancels its job and waits for it. Later signals are ignored, so a second Ctrl-C cannot cut that
cleanup short (SIGKILL still can: the next job sweeps what it leaves, bundle.sweep_stale).

`critical()` holds a signal back while the final renames of a bundle run, so that a signal never
lands between "the old bundle is set aside" and "the new one is in place".
"""
from __future__ import annotations

import contextlib
import signal
import threading

HANDLED = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


class Interrupted(BaseException):
    """A termination signal arrived (a BaseException: `except Exception` handlers let it through)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum   # the shell's convention for "ended by signal N"


# Touched only in the main thread (Python runs signal handlers there, and critical() counts only
# there), so no lock: a lock taken by the handler could deadlock against the code it interrupts.
_state = {"depth": 0, "pending": None, "fired": False}


def _handler(signum, frame):
    if _state["fired"]:
        return                      # one is enough: let the cleanup finish
    if _state["depth"]:
        _state["pending"] = signum  # raised when the critical section ends
        return
    _state["fired"] = True
    raise Interrupted(signum)


def install() -> None:
    """Route the termination signals to `Interrupted` (main thread only, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        try:
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue                # e.g. SIGINT of a background job in a shell: stay deaf to it
            signal.signal(sig, _handler)
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def critical():
    """A section that a signal must not cut in two: a signal during it is raised at its end. Other
    threads are never interrupted by a signal (Python runs handlers in the main thread), so there
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        signum = _state["pending"] if _state["depth"] == 0 else None
        if signum is not None:
            _state["pending"] = None
            _state["fired"] = True
            raise Interrupted(signum)

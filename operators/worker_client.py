"""Client for the backend worker (`<python> -m backend worker`, see docs/worker-protocol.md).

Pure Python: no bpy, no torch, no backend import. The worker is a subprocess that speaks JSON
lines; a reader thread turns its stdout into events on a queue, a second thread keeps the tail of
its stderr for error reports. `ReconstructJob` is a non-blocking state machine over one request:
the Blender side calls `job.poll()` from the main thread (a `bpy.app.timers` function, or a loop
in background mode) and never waits on the worker.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# Codes the Blender side adds to the backend's (backend/errors.py) for failures that the worker
# itself cannot report.
CLIENT_CODES = {
    "BACKEND_NOT_FOUND": "no backend Python is configured or it does not exist",
    "WORKER_START_FAILED": "the backend worker process could not be started",
    "WORKER_DIED": "the backend worker exited unexpectedly",
    "WORKER_TIMEOUT": "the backend worker sent no event for too long (hung)",
    "WORKER_PROTOCOL": "the backend worker wrote something that is not a protocol event",
    "WORKER_INCOMPATIBLE": "the backend speaks another version of the worker protocol (update one of them)",
    "BUNDLE_INVALID": "the result bundle is missing, incomplete or of an unknown schema version",
    "BUNDLE_UNSAFE": "the result bundle names files outside its own folder (refused)",
    "IMPORT_FAILED": "the result bundle could not be imported into Blender",
    "PHOTO_INVALID": "no photo was chosen or it cannot be read from Blender",
    "BACKEND_INCOMPLETE": "the backend Python lacks a package or an asset (Install Backend fixes it)",
    "EXPORT_FAILED": "the head could not be exported",
}

FIX_HINT = "press Install Backend in Edit > Preferences > Add-ons > Likeness"

# Worker protocol versions this client speaks (the worker announces its own in `ready`).
SUPPORTED_PROTOCOLS = (2,)
# The temp marker the backend writes into a bundle's temporary folder (backend/bundle.py TEMP_MARKER).
TEMP_MARKER = ".likeness-temp.json"


class WorkerError(Exception):
    """A failure with a stable code (backend/errors.py codes or CLIENT_CODES)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _is_python(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_default_backend_python(start: str | os.PathLike) -> str:
    """The project's `.venv` Python: walk up from `start` (the extension folder). '' if none."""
    here = Path(start).resolve()
    for d in (here, *here.parents):
        for rel in (".venv/bin/python", ".venv/Scripts/python.exe"):
            cand = d / rel
            if _is_python(cand):
                return str(cand)
    return ""


def backend_root(extension_dir: str | os.PathLike) -> str:
    """The folder holding the `backend/` package (the worker's cwd): the extension's root."""
    return str(Path(extension_dir).resolve())


class WorkerClient:
    """One backend worker process plus its reader threads."""

    def __init__(self, python: str, cwd: str, args: list[str] | None = None,
                 env: dict | None = None, stderr_lines: int = 200):
        self.python = python
        self.cwd = cwd
        self.args = list(args) if args is not None else ["-m", "backend", "worker"]
        self.env = env
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.proc: subprocess.Popen | None = None
        self.ready: dict | None = None          # the `ready` event once it came
        self.last_event_time = time.monotonic()  # any line on stdout counts
        self.started_at = 0.0
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._counter = 0
        self.broken: str = ""                    # why this worker must not be reused

    # -- process ---------------------------------------------------------------------------
    @property
    def key(self) -> tuple:
        extra = tuple(sorted((k, v) for k, v in (self.env or {}).items() if k.startswith("LIKENESS_")))
        return (self.python, self.cwd, tuple(self.args), extra)

    def start(self) -> None:
        if not self.python or not Path(self.python).exists():
            raise WorkerError("BACKEND_NOT_FOUND",
                              f"backend Python not found: {self.python!r} (set it in the add-on preferences)")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONIOENCODING"] = "utf-8"
        # Blender's own Python settings must not leak into the backend's interpreter.
        for k in ("PYTHONHOME", "PYTHONPATH"):
            env.pop(k, None)
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # Ctrl-C in a terminal Blender does not hit it
        try:
            self.proc = subprocess.Popen(
                [self.python, *self.args], cwd=self.cwd, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                **kwargs)
        except OSError as ex:
            raise WorkerError("WORKER_START_FAILED", f"{self.python}: {ex}") from ex
        self.started_at = self.last_event_time = time.monotonic()
        for target, name in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            t = threading.Thread(target=target, name=f"likeness-worker-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def usable(self) -> bool:
        return self.alive() and not self.broken

    def returncode(self):
        return None if self.proc is None else self.proc.poll()

    def new_id(self) -> str:
        self._counter += 1
        return f"r{self._counter}-{os.getpid()}-{int(time.time() * 1000) % 100000}"

    # -- threads ---------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.last_event_time = time.monotonic()
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
                self.events.put({"event": "_garbage", "line": line[:500]})
                continue
            if ev["event"] == "ready":
                self.ready = ev
            self.events.put(ev)
        self.events.put({"event": "_eof"})

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            self._stderr_tail.append(raw.decode("utf-8", errors="replace").rstrip())

    def stderr_tail(self, n: int = 15) -> str:
        lines = list(self._stderr_tail)[-n:]
        return "\n".join(lines)

    # -- messages --------------------------------------------------------------------------
    def send(self, obj: dict) -> None:
        if not self.alive():
            raise WorkerError("WORKER_DIED", self.death_message())
        data = (json.dumps(obj) + "\n").encode("utf-8")
        try:
            with self._lock:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as ex:
            raise WorkerError("WORKER_DIED", self.death_message() or str(ex)) from ex

    def get_event(self, timeout: float | None = 0.0) -> dict | None:
        try:
            if timeout is None or timeout > 0:
                return self.events.get(timeout=timeout)
            return self.events.get_nowait()
        except queue.Empty:
            return None

    def death_message(self) -> str:
        rc = self.returncode()
        missing = missing_module(self.stderr_tail(40))
        if missing:
            return (f"the backend Python ({self.python}) has no {missing} package: {FIX_HINT} "
                    "(Check Backend lists what is missing)")
        msg = "the backend worker exited" + (f" with code {rc}" if rc is not None else "")
        tail = self.stderr_tail(8)
        return msg + (f"; last log lines:\n{tail}" if tail else "")

    def death_code(self) -> str:
        return "BACKEND_INCOMPLETE" if missing_module(self.stderr_tail(40)) else "WORKER_DIED"

    # -- shutdown --------------------------------------------------------------------------
    def kill(self) -> None:
        self.broken = self.broken or "killed"
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._close_pipes()

    def shutdown(self, timeout: float = 5.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                self.send({"op": "shutdown"})
                p.stdin.close()
            except (WorkerError, OSError, ValueError):
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _close_pipes(self) -> None:
        p = self.proc
        for s in (p.stdin, p.stdout, p.stderr):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=1.0)


def missing_module(log: str) -> str:
    """The package a Python failed to import ("No module named 'torch'"), or ''."""
    import re
    found = re.findall(r"No module named '([A-Za-z0-9_.]+)'", log or "")
    return found[-1].split(".")[0] if found else ""


def remove_partial_bundle(out: str) -> None:
    """Remove the temporary folders `.<name>.tmp-*` a killed worker left for `out`: only those that
    hold the backend's temp marker (the backend never creates `out` itself before its final rename,
    so whatever is at `out` is never touched)."""
    outp = Path(out)
    parent = outp.parent
    if parent.is_dir():
        for tmp in parent.glob(f".{outp.name}.tmp-*"):
            if tmp.is_dir() and not tmp.is_symlink() and (tmp / TEMP_MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)


class ReconstructJob:
    """One `reconstruct` request, advanced by `poll()` without ever blocking.

    state: starting -> running -> (cancelling) -> done | failed | cancelled
    """

    FINAL = ("done", "failed", "cancelled")

    def __init__(self, client: WorkerClient, photo: str, out: str, options: dict | None = None,
                 timeout_s: float = 120.0, cancel_grace_s: float = 5.0):
        self.client = client
        self.photo = str(photo)
        self.out = str(out)
        self.options = dict(options or {})
        self.timeout_s = float(timeout_s)
        self.cancel_grace_s = float(cancel_grace_s)
        self.id = client.new_id()
        self.state = "starting"
        self.stage = "start"
        self.fraction = 0.0
        self.message = "starting the backend"
        self.result: dict | None = None
        self.preview: dict | None = None   # the latest `preview` event: stage, name, png (bytes)
        self.preview_serial = 0
        self.error_code = ""
        self.error_message = ""
        self.started = time.monotonic()
        self.finished_at = 0.0
        self._sent = False
        self._cancel_requested = False
        self._cancel_sent_at = 0.0
        self._last_own_activity = time.monotonic()
        self.events_seen = 0
        self._dead_since = 0.0
        if client.ready is not None and self._compatible(client.ready):
            self._send_request()

    @property
    def finished(self) -> bool:
        return self.state in self.FINAL

    @property
    def shown_fraction(self) -> float:
        """What the progress bar shows: the backend's fraction, and while the worker starts (Python,
        torch, the face model: seconds, no events) a slow creep up to 3%, so the bar never stands still."""
        if self.stage == "start" and not self.finished:
            return 0.03 * (1.0 - 1.0 / (1.0 + (time.monotonic() - self.started) / 3.0))
        return self.fraction

    def _send_request(self) -> None:
        self.client.send({"op": "reconstruct", "id": self.id, "photo": self.photo,
                          "out": self.out, "options": self.options})
        self._sent = True
        self.state = "running"
        self.stage, self.message = "load", "request sent"
        self._last_own_activity = time.monotonic()

    def _finish(self, state: str, code: str = "", message: str = "") -> None:
        self.state = state
        self.error_code = code
        self.error_message = message
        self.finished_at = time.monotonic()

    def _fail_and_kill(self, code: str, message: str) -> None:
        self.client.broken = code
        self.client.kill()
        remove_partial_bundle(self.out)
        self._finish("failed", code, message)

    def cancel(self) -> None:
        """Ask for cancellation; `poll()` finishes it (CANCELLED from the worker, or a kill)."""
        if self.finished or self._cancel_requested:
            return
        self._cancel_requested = True
        self._cancel_sent_at = time.monotonic()
        if not self._sent:
            # Nothing was sent: the (starting) worker stays alive for the next request.
            self._finish("cancelled", "CANCELLED", "cancelled before the request was sent")
            return
        self.state = "cancelling"
        self.message = "cancelling"
        try:
            self.client.send({"op": "cancel", "id": self.id})
        except WorkerError:
            pass  # poll() sees the dead worker

    def poll(self) -> bool:
        """Handle every queued event; returns True when something changed."""
        if self.finished:
            return False
        changed = False
        while True:
            ev = self.client.get_event()
            if ev is None:
                break
            changed = True
            self._handle(ev)
            if self.finished:
                return True
        now = time.monotonic()
        if self.state == "cancelling" and now - self._cancel_sent_at > self.cancel_grace_s:
            # The worker did not confirm in time: stop it the hard way.
            self.client.broken = "cancel timeout"
            self.client.kill()
            remove_partial_bundle(self.out)
            self._finish("cancelled", "CANCELLED", "cancelled (the worker was stopped)")
            return True
        if not self.client.alive():
            # The reader thread normally reports `_eof` after the last lines; this is a fallback.
            if not self._dead_since:
                self._dead_since = now
            elif now - self._dead_since > 2.0:
                self._fail_and_kill(self.client.death_code(), self.client.death_message())
                return True
        elif now - max(self.client.last_event_time, self._last_own_activity) > self.timeout_s:
            self._fail_and_kill("WORKER_TIMEOUT",
                                f"no event from the backend worker for {self.timeout_s:.0f} s "
                                f"(stage {self.stage!r}); it was stopped")
            return True
        return changed

    def _handle(self, ev: dict) -> None:
        kind = ev.get("event")
        self.events_seen += 1
        if kind == "_garbage":
            self._fail_and_kill("WORKER_PROTOCOL",
                                f"the backend worker wrote a line that is not a JSON event: {ev['line'][:200]!r}")
            return
        if kind == "_eof":
            self.client.proc and self._wait_briefly()
            time.sleep(0.05)  # the stderr reader's last lines (a traceback) arrive just after stdout's end
            self._fail_and_kill(self.client.death_code(), self.client.death_message())
            return
        if kind == "ready":
            if not self._compatible(ev):
                return
            if not self._sent and not self._cancel_requested:
                try:
                    self._send_request()
                except WorkerError as ex:
                    self._fail_and_kill(ex.code, ex.message)
            return
        if kind == "pong":
            return
        ev_id = ev.get("id")
        if kind == "error" and ev_id is None and self._sent:
            # BAD_REQUEST without a readable id: ours is the only request in flight.
            ev_id = self.id
        if ev_id != self.id:
            return  # a late event of an earlier (cancelled) request
        self._last_own_activity = time.monotonic()
        if kind == "progress":
            if self.state == "cancelling":
                return
            self.stage = str(ev.get("stage", self.stage))
            try:
                self.fraction = max(self.fraction, min(1.0, float(ev.get("fraction", self.fraction))))
            except (TypeError, ValueError):
                pass
            self.message = str(ev.get("message", ""))
        elif kind == "preview":
            try:
                png = base64.b64decode(str(ev.get("png_base64", "")), validate=True)
            except (ValueError, TypeError):
                return
            if png.startswith(b"\x89PNG"):
                self.preview = {"stage": str(ev.get("stage", "")), "name": str(ev.get("name", "")), "png": png}
                self.preview_serial += 1
        elif kind == "result":
            self.result = ev
            self.fraction = 1.0
            self.stage, self.message = "import", "importing into Blender"
            self._finish("done")
        elif kind == "error":
            code = str(ev.get("code") or "INTERNAL")
            msg = str(ev.get("message") or "")
            if code == "CANCELLED":
                self._finish("cancelled", code, msg or "cancelled")
            else:
                self._finish("failed", code, msg)
        # other event kinds are ignored (fields may be added to the protocol)

    def _compatible(self, ready: dict) -> bool:
        """The capabilities handshake: a worker of another protocol version is refused (and stopped)."""
        if ready.get("protocol") in SUPPORTED_PROTOCOLS:
            return True
        self._fail_and_kill("WORKER_INCOMPATIBLE", f"the backend ({ready.get('version', '?')}) speaks worker "
                            f"protocol {ready.get('protocol')!r}; this add-on speaks {SUPPORTED_PROTOCOLS}: "
                            "install matching versions of the add-on and the backend")
        return False

    def _wait_briefly(self) -> None:
        try:
            self.client.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass

    def run_blocking(self, interval: float = 0.05, on_change=None) -> "ReconstructJob":
        """For background mode and scripts: poll until finished."""
        while not self.finished:
            if self.poll() and on_change is not None:
                on_change(self)
            if not self.finished:
                time.sleep(interval)
        return self


def run_check(python: str, cwd: str, env: dict | None = None, timeout: float = 180.0) -> dict:
    """Everything a generation needs, checked in the backend's own Python (`python -m backend.doctor`:
    Python, packages, torch and CUDA, every asset with its checksum, the face model). The dict has
    "problems" (each {"what", "fix"}) and "ok"."""
    if not python or not Path(python).exists():
        raise WorkerError("BACKEND_NOT_FOUND", f"no backend Python{f' at {python}' if python else ''}: {FIX_HINT}")
    env = dict(os.environ if env is None else env)
    for k in ("PYTHONHOME", "PYTHONPATH"):
        env.pop(k, None)
    try:
        cp = subprocess.run([python, "-m", "backend.doctor"], cwd=cwd, env=env, capture_output=True,
                            timeout=timeout, text=True)
    except (OSError, subprocess.TimeoutExpired) as ex:
        raise WorkerError("WORKER_START_FAILED", f"{python}: {ex}") from ex
    lines = [ln for ln in cp.stdout.splitlines() if ln.strip().startswith("{")]
    if cp.returncode != 0 or not lines:
        missing = missing_module(cp.stderr)
        if missing:
            raise WorkerError("BACKEND_INCOMPLETE", f"{python} has no {missing} package: {FIX_HINT}")
        raise WorkerError("WORKER_START_FAILED",
                          f"{python} could not run the backend check (exit {cp.returncode}): {cp.stderr.strip()[-400:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":  # tiny manual check: python worker_client.py PYTHON CWD
    print(run_check(sys.argv[1], sys.argv[2]))

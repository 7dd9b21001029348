"""`python -m backend worker`: JSON lines on stdin/stdout for the Blender side (docs/worker-protocol.md)."""
from __future__ import annotations

import base64
import json
import os
import queue
import sys
import threading
import traceback

import cv2
import numpy as np

from . import __version__
from .allocator import release_free_memory
from .errors import LikenessError
from .signals import Interrupted, critical

# The protocol's version: a client refuses a worker whose `ready.protocol` it does not know.
PROTOCOL_VERSION = 2
# While a request runs, its last progress event is repeated at least this often, so a client can
# tell a slow stage from a hung worker.
HEARTBEAT_S = 2.0
MAX_LINE_BYTES = 1 << 20   # a request line longer than this is refused unread (a request is < 1 kB)
# After a request, a worker that gets no other for this long hands the memory it freed back to the system
# (allocator.release_free_memory): back-to-back requests keep it, an artist's idle worker does not hold it.
IDLE_RELEASE_S = 5.0


def protocol_stream():
    """A private copy of stdout for events; fd 1 then points at stderr, so nothing a library prints
    (Python or C level) can corrupt the protocol stream."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def capabilities() -> dict:
    """What this worker can do: announced in `ready`, so the client needs no knowledge of its own."""
    import torch
    from .pipeline import DEVICES, STAGES, allowed_texture_sizes
    from .bundle import SCHEMA_VERSION
    from .texture import STRATEGIES
    return {"stages": [{"name": n, "message": m} for n, m, _ in STAGES], "texture_strategies": list(STRATEGIES),
            "texture_sizes": allowed_texture_sizes(), "devices": list(DEVICES), "cuda": bool(torch.cuda.is_available()),
            "bundle_schema": SCHEMA_VERSION, "events": ["ready", "progress", "preview", "result", "error", "pong"]}


MAX_PATH_CHARS = 4096


def parse_request(line: str | bytes | None) -> dict:
    """One request line -> a dict with a string 'op'; ValueError (with a reason) for anything else:
    a line cut off at MAX_LINE_BYTES (None), bytes that are not UTF-8, nesting too deep for the
    parser (RecursionError), numbers too long to convert, or JSON that is not an object with an op."""
    if line is None or len(line) > MAX_LINE_BYTES:
        raise ValueError(f"a request line is at most {MAX_LINE_BYTES} bytes")
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a request line must be UTF-8 text") from None
    try:
        req = json.loads(line)
    except RecursionError:
        raise ValueError("the request is nested too deeply to be a request") from None
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ValueError("a request is a JSON object with an 'op'")
    return req


def path_field(req: dict, key: str) -> str | None:
    """A request's file path: a non-empty string without NUL characters, of a sane length."""
    value = req.get(key)
    if isinstance(value, str) and value.strip() and "\x00" not in value and len(value) <= MAX_PATH_CHARS:
        return value
    return None


def read_lines(read, limit: int = MAX_LINE_BYTES):
    """Lines (bytes, with their newline) from `read(n) -> bytes` (b"" at the end), never holding more
    than `limit` bytes of one: a longer line is read through to its end and yielded as None (refused,
    not parsed). The worker reads fd 0 with os.read rather than through sys.stdin: the reading thread
    may still be blocked in it when the process exits, and a thread blocked inside sys.stdin's
    buffered reader holds its lock, which makes interpreter shutdown abort."""
    buf = bytearray()
    skipping = False
    while True:
        chunk = read(65536)
        if not chunk:
            if buf and not skipping:
                yield bytes(buf)
            elif skipping:
                yield None
            return
        buf += chunk
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > limit:  # no end in sight: drop what we have, remember to refuse it
                    skipping = True
                    buf.clear()
                break
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            if skipping or len(line) > limit + 1:
                skipping = False
                yield None
            else:
                yield line


def png_data(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


class Worker:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.job: tuple[str, threading.Thread, threading.Event] | None = None
        self.jobs_started = 0

    def emit(self, event: dict) -> None:
        line = json.dumps(event) + "\n"
        with self.lock, critical():  # a signal never cuts an event line in two
            self.out.write(line)
            self.out.flush()

    def busy(self) -> bool:
        return self.job is not None

    def handle(self, line: str | bytes | None) -> bool:
        """Handle one request line (None: one too long to read); False when the worker should stop."""
        try:
            req = parse_request(line)
        except ValueError as err:
            self.emit({"event": "error", "id": None, "code": "BAD_REQUEST", "message": str(err)})
            return True
        op, rid = req["op"], req.get("id")
        if not isinstance(rid, (str, int, type(None))) or isinstance(rid, bool):
            self.emit({"event": "error", "id": None, "code": "BAD_REQUEST", "message": "'id' must be a string"})
            return True
        if op == "ping":
            self.emit({"event": "pong"})
        elif op == "shutdown":
            return False
        elif op == "cancel":
            job = self.job
            if job is not None and job[0] == rid:
                job[2].set()
        elif op == "reconstruct":
            if self.busy():
                self.emit({"event": "error", "id": rid, "code": "BUSY", "message": "another request is running"})
            elif path_field(req, "photo") is None or path_field(req, "out") is None:
                self.emit({"event": "error", "id": rid, "code": "BAD_REQUEST",
                           "message": "reconstruct needs 'photo' and 'out' (non-empty paths)"})
            else:
                cancel = threading.Event()
                thread = threading.Thread(target=self.run, args=(rid, req, cancel), daemon=True)
                self.job = (rid, thread, cancel)
                self.jobs_started += 1
                thread.start()
        else:
            self.emit({"event": "error", "id": rid, "code": "BAD_REQUEST", "message": f"unknown op {op!r}"[:200]})
        return True

    def run(self, rid, req: dict, cancel: threading.Event) -> None:
        final = self.reconstruct(rid, req, cancel)
        started = self.jobs_started
        self.job = None  # before the final event: a client that answers it at once finds the worker free
        self.emit(final)
        release = threading.Timer(IDLE_RELEASE_S, self._release_if_idle, args=(started,))
        release.daemon = True
        release.start()

    def _release_if_idle(self, started: int) -> None:
        if self.job is None and self.jobs_started == started:    # no request since this one ended
            release_free_memory()

    def reconstruct(self, rid, req: dict, cancel: threading.Event) -> dict:
        from .pipeline import STAGE_MESSAGES, parse_options, reconstruct

        def cancel_check():
            if cancel.is_set():
                raise LikenessError("CANCELLED", f"request {rid} was cancelled")

        last = {"event": "progress", "id": rid, "stage": "load", "fraction": 0.0, "message": STAGE_MESSAGES["load"]}

        def progress(stage: str, fraction: float):
            last.update(stage=stage, fraction=round(fraction, 4), message=STAGE_MESSAGES[stage])
            self.emit(dict(last))

        def preview(stage: str, name: str, image: np.ndarray):
            self.emit({"event": "preview", "id": rid, "stage": stage, "name": name, "width": int(image.shape[1]),
                       "height": int(image.shape[0]), "png_base64": png_data(image)})

        def heartbeat(done: threading.Event):
            while not done.wait(HEARTBEAT_S):
                self.emit(dict(last))

        done = threading.Event()
        threading.Thread(target=heartbeat, args=(done,), daemon=True).start()
        try:
            options = parse_options(req.get("options"))
            result = reconstruct(req["photo"], req["out"], options, progress, cancel_check, preview)
            return {"event": "result", "id": rid, "bundle": os.path.abspath(req["out"]),
                    "metrics": result["metrics"], "timings_s": result["timings_s"], "warnings": result["warnings"]}
        except LikenessError as err:
            return {"event": "error", "id": rid, "code": err.code, "message": err.message}
        except MemoryError:
            return {"event": "error", "id": rid, "code": "INTERNAL", "message": "out of memory"}
        except Exception as err:  # a bug: report it, keep serving
            traceback.print_exc()
            return {"event": "error", "id": rid, "code": "INTERNAL", "message": f"{type(err).__name__}: {err}"}
        finally:
            done.set()

    def stop(self) -> None:
        job = self.job
        if job is not None:
            job[2].set()
            job[1].join(timeout=30)


_EOF = object()


def _pumped(lines, poll_s: float = 0.2):
    """The lines of a blocking reader, read in a thread of their own. The main thread then never sits
    in a read(): a signal that the kernel hands to another thread (any thread may get a process's
    SIGTERM) still runs its Python handler within poll_s, where a blocked read would not wake up.
    The queue is bounded, so a client that floods stdin is slowed down, not buffered in memory."""
    q: queue.Queue = queue.Queue(maxsize=8)

    def pump():
        try:
            for line in lines:
                q.put(line)
        finally:
            q.put(_EOF)

    threading.Thread(target=pump, name="likeness-stdin", daemon=True).start()
    while True:
        try:
            item = q.get(timeout=poll_s)
        except queue.Empty:
            continue
        if item is _EOF:
            return
        yield item


def main() -> int:
    out = protocol_stream()
    worker = Worker(out)
    import torch
    from .pipeline import warm_up
    try:  # warm up: the first request then needs no slow, uncancellable loading
        warm_up()
    except LikenessError as err:
        print(f"warm-up failed: {err}", file=sys.stderr)
    worker.emit({"event": "ready", "protocol": PROTOCOL_VERSION, "version": __version__, "torch": torch.__version__,
                 "cuda": bool(torch.cuda.is_available()), "capabilities": capabilities()})
    try:
        for line in _pumped(read_lines(lambda n: os.read(0, n))):
            if (line is None or line.strip()) and not worker.handle(line):
                break
    except Interrupted as it:
        # SIGTERM/SIGINT/SIGHUP: cancel the job and wait for it, so its staged write removes its
        # temporary folder, then exit with the signal's code.
        print(f"worker {it}: cancelling the running request", file=sys.stderr)
        worker.stop()
        return it.exit_code
    worker.stop()
    return 0

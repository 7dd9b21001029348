"""`python -m backend worker`: JSON lines on stdin/stdout for the Blender side (docs/worker-protocol.md)."""
from __future__ import annotations

import json
import os
import sys
import threading
import traceback

from . import __version__
from .errors import LikenessError

STAGE_MESSAGES = {
    "load": "loading the photo and the face model",
    "detect": "finding the face",
    "fit": "fitting the 3D head",
    "texture": "projecting the photo into UV textures",
    "write": "writing the result bundle",
}
# While a request runs, its last progress event is repeated at least this often, so a client can
# tell a slow stage from a hung worker.
HEARTBEAT_S = 2.0


def protocol_stream():
    """A private copy of stdout for events; fd 1 then points at stderr, so nothing a library prints
    (Python or C level) can corrupt the protocol stream."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Worker:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()
        self.job: tuple[str, threading.Thread, threading.Event] | None = None

    def emit(self, event: dict) -> None:
        with self.lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()

    def busy(self) -> bool:
        return self.job is not None

    def handle(self, line: str) -> bool:
        """Handle one request line; False when the worker should stop."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("a request is a JSON object with an 'op'")
        except ValueError as err:
            self.emit({"event": "error", "id": None, "code": "BAD_REQUEST", "message": str(err)})
            return True
        op, rid = req["op"], req.get("id")
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
            elif not isinstance(req.get("photo"), str) or not isinstance(req.get("out"), str):
                self.emit({"event": "error", "id": rid, "code": "BAD_REQUEST", "message": "reconstruct needs 'photo' and 'out'"})
            else:
                cancel = threading.Event()
                thread = threading.Thread(target=self.run, args=(rid, req, cancel), daemon=True)
                self.job = (rid, thread, cancel)
                thread.start()
        else:
            self.emit({"event": "error", "id": rid, "code": "BAD_REQUEST", "message": f"unknown op {op!r}"})
        return True

    def run(self, rid, req: dict, cancel: threading.Event) -> None:
        final = self.reconstruct(rid, req, cancel)
        self.job = None  # before the final event: a client that answers it at once finds the worker free
        self.emit(final)

    def reconstruct(self, rid, req: dict, cancel: threading.Event) -> dict:
        from .pipeline import Options, reconstruct

        def cancel_check():
            if cancel.is_set():
                raise LikenessError("CANCELLED", f"request {rid} was cancelled")

        last = {"event": "progress", "id": rid, "stage": "load", "fraction": 0.0, "message": STAGE_MESSAGES["load"]}

        def progress(stage: str, fraction: float):
            last.update(stage=stage, fraction=round(fraction, 4), message=STAGE_MESSAGES[stage])
            self.emit(dict(last))

        def heartbeat(done: threading.Event):
            while not done.wait(HEARTBEAT_S):
                self.emit(dict(last))

        done = threading.Event()
        threading.Thread(target=heartbeat, args=(done,), daemon=True).start()
        try:
            opts = req.get("options") or {}
            options = Options(device=str(opts.get("device", "auto")), texture_size=int(opts.get("texture_size", 1024)),
                              overwrite=bool(opts.get("overwrite", False)))
            result = reconstruct(req["photo"], req["out"], options, progress, cancel_check)
            return {"event": "result", "id": rid, "bundle": os.path.abspath(req["out"]),
                    "metrics": result["metrics"], "timings_s": result["timings_s"], "warnings": result["warnings"]}
        except LikenessError as err:
            return {"event": "error", "id": rid, "code": err.code, "message": err.message}
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


def main() -> int:
    out = protocol_stream()
    worker = Worker(out)
    import torch  # noqa: F401  (imported before 'ready' so the first request starts at once)
    from .facemodel import load_face_model
    from .landmarks import get_analyzer
    try:  # warm up: the first request then needs no slow, uncancellable loading
        load_face_model()
        get_analyzer()
    except LikenessError as err:
        print(f"warm-up failed: {err}", file=sys.stderr)
    worker.emit({"event": "ready", "version": __version__, "torch": torch.__version__,
                 "cuda": bool(torch.cuda.is_available())})
    for line in sys.stdin:
        if line.strip() and not worker.handle(line):
            break
    worker.stop()
    return 0

"""A stand-in worker used ONLY to exercise protocol failure modes the real backend does not
produce on purpose: garbage on stdout, a crash mid-request, a hang, a worker that ignores cancel,
a worker that dies before `ready`. Usage: python fake_worker.py MODE
"""
import json
import os
import sys
import time

mode = sys.argv[1]


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if mode == "die_at_start":
    sys.stderr.write("fake worker: cannot load the face model\n")
    sys.stderr.flush()
    sys.exit(3)

emit({"event": "ready", "protocol": 1 if mode == "old_protocol" else 2, "version": "0.0-fake", "torch": "none",
      "cuda": False, "capabilities": {}})
for line in sys.stdin:
    req = json.loads(line)
    if req.get("op") == "shutdown":
        break
    if req.get("op") != "reconstruct":
        continue
    rid = req["id"]
    emit({"event": "progress", "id": rid, "stage": "detect", "fraction": 0.1, "message": "fake"})
    if mode == "garbage":
        sys.stdout.write("Downloading model weights... 45%\n")
        sys.stdout.flush()
        time.sleep(60)
    elif mode == "die":
        emit({"event": "progress", "id": rid, "stage": "fit", "fraction": 0.3})
        sys.stderr.write("fake worker: Segmentation fault (simulated)\n")
        sys.stderr.flush()
        os._exit(139)
    elif mode in ("hang", "ignore_cancel"):
        # ignore_cancel keeps reading stdin (so the cancel arrives) but never answers
        if mode == "hang":
            time.sleep(3600)
        continue
    elif mode == "error":
        emit({"event": "error", "id": rid, "code": "NO_FACE", "message": "no face (fake)"})

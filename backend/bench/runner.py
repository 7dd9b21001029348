"""The measured process: `python -m backend.bench.runner` runs reconstructions for the bench.

The bench parent starts this once per run and sends JSON lines on stdin; each answer is one JSON
line on a private copy of stdout (fd 1 is pointed at stderr, so library prints cannot corrupt it).
Keeping the pipeline in its own process means the memory measured is the pipeline's alone (not
the bench's metrics networks), and the first request shows the cold start of a fresh process.

Requests:
  {"op": "reconstruct", "photo": "/abs/p.jpg" | "demo", "out": "/abs/bundle", "options": {...},
   "detect": false, "landmark_fit": "/abs/baseline.npz" | null}
  {"op": "shutdown"}
Answers: {"event": "ready", "import_s": ..., "warm_up_s": ...} (after pipeline.warm_up, as the worker), {"event": "result", ...} or {"event": "error", ...},
and on shutdown {"event": "bye", "maxrss_mb": ...}.

Memory: a thread samples this process's resident set size (psutil, every 5 ms) while reconstruct
runs: `peak_rss_mb` is the peak of that request. `maxrss_mb` is getrusage(RUSAGE_SELF).ru_maxrss,
the peak of the whole process so far (kernel-accounted, so no sampling gap).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import traceback

T_START = time.perf_counter()


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class PeakSampler:
    def __init__(self, interval: float = 0.005):
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def handle(req: dict) -> dict:
    import numpy as np
    import torch
    from ..errors import LikenessError
    from ..pipeline import load_correspondence, parse_options, reconstruct, resolve_device

    try:
        options = parse_options(req.get("options"))
    except LikenessError as err:
        return {"event": "error", "code": err.code, "message": err.message}
    photo = req["photo"]
    try:
        if photo == "demo":
            from ..cli import demo_photo
            photo = demo_photo()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with PeakSampler() as sampler:
            result = reconstruct(photo, req["out"], options)
        wall = time.perf_counter() - t0
    except LikenessError as err:
        return {"event": "error", "code": err.code, "message": err.message}
    out = {"event": "result", "result": result, "wall_s": wall, "peak_rss_mb": sampler.peak / 2 ** 20,
           "maxrss_mb": _maxrss_mb(), "since_start_s": time.perf_counter() - T_START,
           "device": resolve_device(options.device), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available() and options.device != "cpu":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20

    # Not timed: what the bench needs beyond the bundle (MediaPipe's own points, the baseline fit).
    if req.get("detect") or req.get("landmark_fit"):
        from ..camera import Intrinsics
        from ..facemodel import load_face_model
        from ..fitting import fit_landmarks
        from ..imageio import Photo, load_photo
        from ..landmarks import get_analyzer
        if not isinstance(photo, Photo):
            photo = load_photo(photo)
        det = get_analyzer(options.landmarker).detect(photo)
        out["detection_points"] = det.points.astype(float).tolist()
        if req.get("landmark_fit"):
            device = "cuda" if options.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
            model = load_face_model(options.ict_dir, device)
            k = Intrinsics.for_image(photo.width, photo.height, photo.focal_35mm)
            fit = fit_landmarks(model, load_correspondence(), det.points, k, det.blendshapes)
            np.savez(req["landmark_fit"], vertices=fit.vertices.cpu().numpy().astype(np.float32),
                     identity=fit.identity.cpu().numpy(), expression=fit.expression.cpu().numpy(),
                     rotation=fit.rotation.cpu().numpy(), translation=fit.translation.cpu().numpy(),
                     error_px=fit.metrics["landmark_error_px"])
    return out


def main() -> int:
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import torch  # noqa: F401  (the import is part of a cold start; timed here)
    from ..errors import LikenessError
    from ..pipeline import warm_up
    import_s = time.perf_counter() - T_START
    try:  # as the worker does before its `ready` (backend/worker.py): models, UV layouts, skin rasters
        warm_up()
    except LikenessError as err:  # the request then reports it with its code
        print(f"warm-up failed: {err}", file=sys.stderr)
    emit({"event": "ready", "import_s": import_s, "warm_up_s": time.perf_counter() - T_START - import_s,
          "pid": os.getpid(), "torch_threads": torch.get_num_threads()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "shutdown":
            break
        try:
            emit(handle(req))
        except Exception as err:  # a bug in the pipeline: report it, keep serving
            traceback.print_exc()
            emit({"event": "error", "code": "INTERNAL", "message": f"{type(err).__name__}: {err}"})
    emit({"event": "bye", "maxrss_mb": _maxrss_mb()})
    return 0


if __name__ == "__main__":
    sys.exit(main())


class RunnerClient:
    """The parent's side: starts `python -m backend.bench.runner` and talks to it."""

    def __init__(self, log_path=None, env: dict | None = None, project_dir=None):
        """`project_dir`: the checkout whose backend runs (default this one; the bench's --v0 gives v0's:
        the request and answer lines are the same there)."""
        import subprocess
        from ..paths import PROJECT_DIR
        project_dir = PROJECT_DIR if project_dir is None else project_dir
        self.t_spawn = time.perf_counter()
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = str(project_dir) + os.pathsep + child_env.get("PYTHONPATH", "")
        child_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.bench.runner"], cwd=str(project_dir),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1, env=child_env)
        self.ready = self._read()
        self.ready["spawn_to_ready_s"] = time.perf_counter() - self.t_spawn
        self.maxrss_mb = None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench runner exited (code {self.proc.wait()}); see its log")
        return json.loads(line)

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> float | None:
        """Stop the runner; returns its lifetime peak RSS in MB (getrusage in the runner)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "shutdown"}) + "\n")
                self.proc.stdin.flush()
                bye = self._read()
                self.maxrss_mb = bye.get("maxrss_mb")
            except (BrokenPipeError, RuntimeError, ValueError):
                pass
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        if hasattr(self.log, "close"):
            self.log.close()
        return self.maxrss_mb

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Benchmark of the Blender side (not a test): import time and timer rate during a real generation.

    .venv/bin/python scripts/bench_blender.py [--photo PHOTO] [--bundle BUNDLE] [--repeats 5]

1. Generation: starts the add-on's generate operator in async mode on a real photo with the real
   backend worker, and plays Blender's timer loop: calls the `bpy.app.timers` function
   (operators.generate.tick) and sleeps for the interval it returns, as Blender's event loop does
   (timers do not fire when bpy is a Python module). Reports the achieved timer rate while the
   backend works and the slowest tick: a tick that waited on the worker would show up there.
   The first run includes the worker's start (torch, face model); a second run reuses the worker.
2. Import: imports the resulting bundle N times into fresh scenes (median, min, max), without and
   with the 53 expression shape keys.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_bundle import ROOT, load_likeness, script_args  # noqa: E402

DEFAULT_PHOTO = ROOT.parent / "shared" / "data" / "faces" / "london" / "neutral" / "001_03.jpg"


def timed_generation(generate, photo: str) -> dict:
    t0 = time.perf_counter()
    bpy.ops.likeness.generate(photo=photo, run_mode="ASYNC")
    g = generate.active()
    while True:
        nxt = generate.tick()
        if nxt is None:
            break
        time.sleep(nxt)
    wall = time.perf_counter() - t0
    if g.state != "DONE":
        raise SystemExit(f"generation failed: {g.error_code}: {g.error_message}")
    starts, durs = g.tick_starts, g.tick_durations
    # ticks while the backend worked: all but the last one (which imported the head)
    work_starts, work_durs = starts[:-1], durs[:-1]
    span = work_starts[-1] - work_starts[0] if len(work_starts) > 1 else float("nan")
    return {"wall_s": wall, "ticks": len(starts), "rate_hz": (len(work_starts) - 1) / span,
            "max_tick_ms": 1000 * max(work_durs), "median_tick_ms": 1000 * statistics.median(work_durs),
            "import_tick_ms": 1000 * durs[-1], "bundle": g.job.result["bundle"],
            "backend_s": (g.job.result.get("timings_s") or {}).get("total"), "object": g.object_name}


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench_blender.py")
    ap.add_argument("--photo", default=str(DEFAULT_PHOTO))
    ap.add_argument("--bundle", default="", help="skip the generation; time importing this bundle")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(script_args())

    mod = load_likeness()
    mod.register()
    from likeness.operators import common, generate, importer
    results = Path(tempfile.mkdtemp(prefix="likeness-bench-"))
    s = common.Settings(backend_python=common.default_backend_python(), backend_cwd=str(ROOT),
                        device="cpu", texture_size=1024, results_dir=str(results))
    common.settings = lambda context=None: s  # the bench runs without saved preferences
    bundle = a.bundle
    try:
        if not bundle:
            print(f"generation on {a.photo} (real backend, timer loop played at the returned interval "
                  f"{generate.TICK_INTERVAL * 1000:.0f} ms)")
            for label in ("cold (starts the worker)", "warm (reuses the worker)"):
                bpy.ops.wm.read_factory_settings(use_empty=True)
                r = timed_generation(generate, a.photo)
                print(f"  {label}: {r['wall_s']:.1f} s wall, backend {r['backend_s']:.1f} s, "
                      f"timer {r['rate_hz']:.1f} Hz over {r['ticks']} ticks, "
                      f"tick median {r['median_tick_ms']:.2f} ms / max {r['max_tick_ms']:.2f} ms, "
                      f"import tick {r['import_tick_ms']:.0f} ms")
                bundle = r["bundle"]
        for keys in (False, True):
            times = []
            for _ in range(a.repeats):
                bpy.ops.wm.read_factory_settings(use_empty=True)
                t = time.perf_counter()
                importer.import_bundle(bundle, shape_keys=keys)
                times.append(time.perf_counter() - t)
            print(f"import {'with 53 shape keys' if keys else 'mesh + materials'}: median "
                  f"{statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, n={a.repeats})")
    finally:
        generate.shutdown_workers()
        mod.unregister()
    return 0


if __name__ == "__main__":
    sys.exit(main())

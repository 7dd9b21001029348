"""`python -m backend bench --cancel-latency`: how long a cancel can wait, per stage.

A cancel (the worker's `cancel`, Blender's Esc, Ctrl-C) lands at the job's next `cancel_check()`: the
longest stretch between two checks is the worst wait. This runs whole reconstructions in this process
with a check that records the time of every call and where it was made, and reports per stage the
longest gap (median over the runs after the first, and the first run's: caches cold in a fresh process)
and where it lies. Target: under half a second at the default 1024-px tiles, under a second at 2048,
so that a cancel in Blender stops the job at once (tests/test_worker.py asserts the second).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

TARGET_S = {1024: 0.5, 2048: 1.0}


def _where() -> str:
    """The caller of the cancel check, as module:line (the check's own frame and its wrapper left out)."""
    frames = [f for f in traceback.extract_stack(limit=6)[:-2] if "cancel_latency" not in f.filename]
    f = frames[-1] if frames else None
    return f"{Path(f.filename).stem}:{f.lineno}" if f else "?"


def measure(photo: Path, size: int, runs: int, strategy: str | None = None) -> list[dict]:
    """Per run: {stage: (longest gap s, from, to)} and the run's total seconds."""
    from ..pipeline import Options, reconstruct
    out: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="likeness-cancel-"))
    try:
        for i in range(runs):
            calls: list[tuple[float, str, str]] = []
            stage = ["load"]

            def progress(name: str, _fraction: float) -> None:
                stage[0] = name

            def check() -> None:
                calls.append((time.perf_counter(), stage[0], _where()))
            opts = Options(texture_size=size, **({"texture": strategy} if strategy else {}))
            t0 = time.perf_counter()
            reconstruct(photo, tmp / f"run{i}", opts, progress, check)
            calls.append((time.perf_counter(), "end", "end"))
            gaps: dict[str, tuple[float, str, str]] = {}
            for (ta, st, wa), (tb, _, wb) in zip([(t0, "load", "start")] + calls[:-1], calls):
                if tb - ta > gaps.get(st, (-1.0,))[0]:
                    gaps[st] = (tb - ta, wa, wb)
            out.append({"gaps": gaps, "total_s": calls[-1][0] - t0})
            shutil.rmtree(tmp / f"run{i}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(runs: list[dict], size: int) -> str:
    first, rest = runs[0], runs[1:] or runs[:1]
    stages = [s for s in ("load", "detect", "fit", "texture", "write") if s in first["gaps"]]
    target = TARGET_S.get(size)
    lines = [f"Cancel latency at {size}-px tiles: the longest time between two cancel checks, per stage "
             f"({len(rest)} warm runs after one first run in this process; median total "
             f"{np.median([r['total_s'] for r in rest]):.1f} s)", "",
             "| stage | longest gap, warm median (s) | first run (s) | where (warm run with the longest) |",
             "|---|---|---|---|"]
    worst = 0.0
    for st in stages:
        warm = [r["gaps"][st][0] for r in rest if st in r["gaps"]]
        top = max(rest, key=lambda r: r["gaps"].get(st, (0.0,))[0])["gaps"][st]
        worst = max(worst, float(np.median(warm)))
        lines.append(f"| {st} | {np.median(warm):.3f} | {first['gaps'][st][0]:.3f} | {top[1]} -> {top[2]} |")
    if target is not None:
        lines += ["", f"Target: every warm gap under {target:.1f} s: "
                  + ("PASS" if worst < target else f"FAIL ({worst:.2f} s)")]
    lines += ["", "The load stage's first run includes loading the models (the worker does that once, before "
              "its first request: its `ready` event comes after it)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from . import SHARED_FACES
    p = argparse.ArgumentParser(prog="python -m backend bench --cancel-latency")
    p.add_argument("--photo", type=Path, default=SHARED_FACES / "london" / "neutral" / "001_03.jpg")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--texture", default=None)
    args = p.parse_args(argv)
    print(report(measure(args.photo, args.texture_size, max(2, args.repeat), args.texture), args.texture_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

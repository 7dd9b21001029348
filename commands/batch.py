"""Batch: every photo in IN_DIR -> OUT_DIR/<stem>/{bundle/, <stem>.blend, <stem>.png}.

    blender -b --python <extension folder>/commands/batch.py -- IN_DIR OUT_DIR [options]
    python commands/batch.py IN_DIR OUT_DIR [options]      (a Python with the bpy module)

It ships in the extension's zip: a user who installed the extension (and pressed Install Backend) runs
it with the path the add-on's preferences show. The backend Python is --python, else the one Install
Backend made, else a project .venv next to the extension.

One backend worker (the same `python -m backend worker` the add-on uses) serves all photos. For
each photo: reconstruct, import the head into a fresh scene, apply a relight preset, frame a
camera, save the .blend, render a Cycles (CPU) preview PNG. At the end a summary is printed and
written to OUT_DIR/summary.json; the exit code is 1 when any photo failed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import bpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import EXTENSION_DIR as ROOT, installed_backend, load_extension as load_likeness, script_args  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def parse(argv):
    from likeness.operators import relight
    ap = argparse.ArgumentParser(prog="batch_blender.py", description="Photos -> .blend + preview PNG")
    ap.add_argument("in_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--preset", default="STUDIO", choices=["NONE", *relight.PRESETS])
    ap.add_argument("--python", default="", help="backend Python (default: the project's .venv)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--texture", default=None, help="texture strategy (delit, generated, projection; default: the "
                                                    "backend's)")
    ap.add_argument("--resolution", type=int, default=384, help="preview render size (square)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--denoise", action="store_true")
    ap.add_argument("--yaw", type=float, default=20.0, help="camera yaw in degrees")
    ap.add_argument("--shape-keys", action="store_true", help="add ARKit's 52 shape keys and the fitted expression")
    ap.add_argument("--export", choices=["glb", "fbx", "obj", "usdz"], default=None,
                    help="also export each head to OUT_DIR/<stem>/<stem>.<format> with its textures")
    ap.add_argument("--pack", action="store_true", help="pack the textures into each .blend")
    ap.add_argument("--no-render", action="store_true")
    ap.add_argument("--timeout", type=float, default=120.0, help="worker hang timeout, s")
    return ap.parse_args(argv)


def main() -> int:
    load_likeness()
    from likeness.operators import render
    from likeness.operators.worker_client import (ReconstructJob, WorkerClient, WorkerError,
                                                  find_default_backend_python)
    a = parse(script_args())
    in_dir, out_dir = Path(a.in_dir), Path(a.out_dir)
    if not in_dir.is_dir():
        print(f"batch: {in_dir} is not a folder", file=sys.stderr)
        return 2
    python, env = installed_backend()
    python = a.python or python or find_default_backend_python(ROOT)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in in_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    photos = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = [p.name for p in files if p not in photos]
    options = {"device": a.device, "texture_size": a.texture_size, "overwrite": True}
    if a.texture:
        options["texture"] = a.texture

    client = None
    rows = []
    t_all = time.perf_counter()
    for photo in photos:
        t0 = time.perf_counter()
        row = {"photo": photo.name, "ok": False}
        target = out_dir / photo.stem
        target.mkdir(parents=True, exist_ok=True)
        try:
            if client is None or not client.usable():
                client = WorkerClient(python, str(ROOT), env=env)
                client.start()
            job = ReconstructJob(client, str(photo.resolve()), str((target / "bundle").resolve()),
                                 options, timeout_s=a.timeout).run_blocking()
            if job.state != "done":
                raise WorkerError(job.error_code or "INTERNAL", job.error_message)
            ev = job.result
            row["landmark_error_px"] = (ev.get("metrics") or {}).get("landmark_error_px")
            row["backend_s"] = (ev.get("timings_s") or {}).get("total")
            obj = render.build_preview_scene(ev.get("bundle") or target / "bundle", name=photo.stem,
                                             preset=a.preset, shape_keys=a.shape_keys,
                                             pack_images=a.pack, resolution=a.resolution,
                                             samples=a.samples, denoise=a.denoise, yaw_deg=a.yaw)
            row["import_s"] = round(float(obj["likeness_import_s"]), 3)
            if a.export:
                from likeness.operators import export
                row["export"] = export.export_head(obj, target / f"{photo.stem}.{a.export}", a.export).path
            blend = target / f"{photo.stem}.blend"
            bpy.ops.wm.save_as_mainfile(filepath=str(blend.resolve()))
            row["blend"] = str(blend)
            if not a.no_render:
                png = target / f"{photo.stem}.png"
                render.render_png(bpy.context.scene, png)
                row["png"] = str(png)
            row["ok"] = True
        except WorkerError as ex:
            row.update(code=ex.code, message=ex.message)
        except Exception as ex:  # keep going with the next photo
            row.update(code="INTERNAL", message=f"{type(ex).__name__}: {ex}")
        if not row["ok"]:
            # nothing half-done stays in the output: an empty folder for a failed photo goes
            if target.is_dir() and not any(target.iterdir()):
                shutil.rmtree(target, ignore_errors=True)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        status = "ok    " if row["ok"] else "FAILED"
        detail = (f"landmark error {row['landmark_error_px']:.2f} px" if row["ok"] and
                  isinstance(row.get("landmark_error_px"), (int, float)) else
                  f"{row.get('code')}: {row.get('message')}" if not row["ok"] else "")
        print(f"batch: {status} {photo.name} ({row['seconds']:.1f} s) {detail}", flush=True)
    if client is not None:
        client.shutdown()

    failed = [r for r in rows if not r["ok"]]
    summary = {"in_dir": str(in_dir), "out_dir": str(out_dir), "preset": a.preset,
               "photos": len(photos), "ok": len(rows) - len(failed), "failed": len(failed),
               "ignored": ignored, "seconds": round(time.perf_counter() - t_all, 1), "results": rows}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nbatch summary")
    print(f"{'photo':<28} {'status':<8} {'landmark px':>11} {'seconds':>8}  detail")
    for r in rows:
        lm = r.get("landmark_error_px")
        print(f"{r['photo']:<28} {'ok' if r['ok'] else 'FAILED':<8} "
              f"{(f'{lm:.2f}' if isinstance(lm, (int, float)) else '-'):>11} {r['seconds']:>8.1f}  "
              f"{r.get('png', '') if r['ok'] else str(r.get('code')) + ': ' + str(r.get('message'))[:80]}")
    if ignored:
        print(f"ignored (not an image suffix): {', '.join(ignored)}")
    print(f"{summary['ok']} ok, {summary['failed']} failed, {summary['seconds']} s; "
          f"summary: {out_dir / 'summary.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

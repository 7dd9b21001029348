"""The head seen through the camera matched to the photo, drawn over the photo (docs/img/camera_over_photo.png).

    .venv/bin/python scripts/render_photo_overlay.py BUNDLE PHOTO OUT.png [--size 512] [--samples 24]

Imports the bundle with its photo camera, renders it with Cycles on a transparent film at the photo's
aspect, and writes photo | head over photo (70% opacity) side by side.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "commands"))
from _load import load_extension, script_args  # noqa: E402


def main() -> int:
    load_extension()
    from likeness.operators import importer, relight, render
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("photo")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--opacity", type=float, default=0.7)
    a = ap.parse_args(script_args())
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = importer.import_bundle(a.bundle, photo_camera_for=a.photo, make_scene_camera=True)
    relight.apply_preset("NEUTRAL", scene, [obj])
    w, h = scene.render.resolution_x, scene.render.resolution_y
    render.setup_cycles(scene, resolution=a.size, samples=a.samples, film_transparent=True,
                        denoise=render.denoiser_available())
    s = a.size / max(w, h)
    scene.render.resolution_x, scene.render.resolution_y = round(w * s), round(h * s)
    png = Path(tempfile.mkdtemp()) / "head.png"
    render.render_png(scene, png)
    head = Image.open(png).convert("RGBA")
    photo = Image.open(a.photo).convert("RGB").resize(head.size, Image.LANCZOS)
    alpha = np.asarray(head, np.float32)[..., 3:] / 255 * a.opacity
    over = np.asarray(photo, np.float32) * (1 - alpha) + np.asarray(head, np.float32)[..., :3] * alpha
    sheet = Image.new("RGB", (head.size[0] * 2, head.size[1]))
    sheet.paste(photo, (0, 0))
    sheet.paste(Image.fromarray(over.astype(np.uint8)), (head.size[0], 0))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render heads through their photo camera under every relight preset, v0 (projected photo) against the
de-lit texture, into one contact sheet (docs/img/relight_presets.jpg).

    .venv/bin/python scripts/relight_pictures.py --photo PHOTO [--photo PHOTO2] --out docs/img/relight_presets.jpg

For each photo: two bundles (texture "projection" = v0, and the default "generated": de-lit, with the
diffusion model's fill), each imported with a camera matched to the fit, rendered with Cycles (CPU,
transparent film, Standard view transform so that linear light maps to the photo's sRGB as the fit
assumed) under each preset and composited over grey;
the "As Photographed" column is composited over the photo itself. Rows: photo x texture.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from render_bundle import load_likeness  # noqa: E402

PRESETS = ("PHOTO", "STUDIO", "OVERCAST", "GOLDEN", "RIM", "NEUTRAL")
CELL = 256


def make_bundle(photo: Path, out: Path, texture: str) -> Path:
    subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(photo), "--out", str(out), "--texture", texture,
                    "--overwrite"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out


def render_cell(bundle: Path, photo: Path, preset: str, samples: int) -> np.ndarray:
    import bpy
    from likeness.operators import importer, relight, render
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = importer.import_bundle(bundle, scene=scene, location=(0.0, 0.0, 0.0), photo_camera_for=str(photo),
                                 make_scene_camera=True)
    relight.apply_preset(preset, scene, [obj])
    render.setup_cycles(scene, resolution=CELL, samples=samples, denoise=render.denoiser_available(),
                        film_transparent=True)
    w, h = scene.render.resolution_x, scene.render.resolution_y
    s = CELL / max(w, h)
    scene.render.resolution_x, scene.render.resolution_y = max(1, round(w * s)), max(1, round(h * s))
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    with tempfile.TemporaryDirectory() as tmp:
        png = render.render_png(scene, Path(tmp) / "cell.png")
        rgba = np.asarray(Image.open(png).convert("RGBA"), np.float32) / 255.0
    back = (np.asarray(Image.open(photo).convert("RGB").resize(rgba.shape[1::-1]), np.float32) / 255.0
            if preset == "PHOTO" else np.full(rgba.shape[:2] + (3,), 0.35, np.float32))
    a = rgba[..., 3:4]
    return np.clip((rgba[..., :3] * a + back * (1 - a)) * 255 + 0.5, 0, 255).astype(np.uint8)


def label(img: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(img)
    ImageDraw.Draw(im).text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(im)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "relight_presets.jpg")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "likeness-relight-pictures")
    a = ap.parse_args()
    load_likeness()
    from likeness.operators import relight
    rows = []
    for photo in a.photo:
        for texture, title in (("projection", "v0: projected photo"), ("generated", "default (de-lit)")):
            bundle = make_bundle(photo, a.work / f"{photo.stem}-{texture}", texture)
            src = np.asarray(Image.open(photo).convert("RGB").resize((CELL, CELL)))
            cells = [label(src, f"{photo.name}")]
            for preset in PRESETS:
                cells.append(label(render_cell(bundle, photo, preset, a.samples),
                                   f"{title} | {relight.PRESETS[preset]['label']}"))
            h = min(c.shape[0] for c in cells)
            rows.append(np.concatenate([c[:h] for c in cells], axis=1))
            print(f"{photo.name} {texture}: done", file=sys.stderr)
    w = min(r.shape[1] for r in rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([r[:, :w] for r in rows], axis=0)).save(a.out)
    shutil.rmtree(a.work, ignore_errors=True)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

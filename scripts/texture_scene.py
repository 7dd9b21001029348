"""Look at the texture stage on a synthetic scene: the ICT head rendered with a known UV texture
(tests/test_texture.py builds the same scene), projected back.

    python -m scripts.texture_scene --yaw 30 --out /tmp/scene   # render, known, recovered and debug tiles
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backend.facemodel import load_face_model
from backend.colour import encode_srgb8, to_unorm8
from backend.scene import known_scene
from backend.texture import project_texture
from tests.test_texture import known_texture, render_textured, scene_camera


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--yaw", type=float, default=0.0)
    ap.add_argument("--pitch", type=float, default=0.0)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--photo", help="use this image, resized, as the known texture of tile 1001")
    ap.add_argument("--out", default="/tmp/texture_scene")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_face_model()
    k, rot, trans = scene_camera(yaw_deg=a.yaw, pitch_deg=a.pitch)
    tex = {t: known_texture(a.size, t) for t in (1001, 1002)}
    if a.photo:
        tex[1001] = np.asarray(Image.open(a.photo).convert("RGB").resize((a.size, a.size))) / 255.0
    render = render_textured(model, model.neutral, rot, trans, k, tex)
    Image.fromarray(render).save(out / "render.png")
    obs, fit = known_scene(render, k, rot, trans, model.neutral)
    for rep in range(2):
        t0 = time.perf_counter()
        maps = project_texture(obs, fit, model, a.size).maps
        print(f"project_texture run {rep}: {time.perf_counter() - t0:.2f} s")
    debug = {}
    project_texture(obs, fit, model, a.size, _debug=debug)
    for name, img in debug.items():
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out / f"debug.{name}.png")
    for t in maps["diffuse"]:
        diffuse = encode_srgb8(maps["diffuse"][t])
        Image.fromarray(diffuse).save(out / f"diffuse.{t}.png")
        Image.fromarray(to_unorm8(maps["visibility"][t])).save(out / f"visibility.{t}.png")
        Image.fromarray((tex[t] * 255).astype(np.uint8)).save(out / f"known.{t}.png")
        vis = maps["visibility"][t] > 0.5
        if vis.any():
            err = np.abs(diffuse.astype(float) / 255 - tex[t])[vis].mean()
            print(f"tile {t}: seen (> 0.5) {vis.mean():.3f} of the tile, mean abs error there {err:.4f}")


if __name__ == "__main__":
    main()

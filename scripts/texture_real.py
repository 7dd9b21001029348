"""Look at the texture stage on a real photo without the fitting stage: a rough rigid pose of the
neutral ICT head from the hand-placed landmarks of the London set (.tem files), then project_texture.

    python -m scripts.texture_real ../shared/data/faces/london/neutral/001_03.jpg --out /tmp/tex_real
    python -m scripts.texture_real PHOTO --bundle /tmp/x --out /tmp/tex_real   # the fit of a result bundle

Writes diffuse/visibility tiles, the weight factors (debug.*.png) and an overlay of the mesh on the photo.
The pose is only as good as 11 landmarks and a neutral identity allow: a harsh test of the edge fades.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from backend import camera
from backend.facemodel import load_face_model
from backend.bundle import load_bundle
from backend.colour import encode_srgb8, to_unorm8
from backend.scene import known_scene
from backend.texture import project_texture

# iBUG-68 index -> Face Research Lab .tem point (see ../shared/data/faces/README.md).
IBUG_TO_TEM = {36: 18, 39: 22, 42: 23, 45: 27, 33: 55, 48: 87, 54: 93, 51: 90, 57: 106, 8: 129}


def rough_pose(model, tem_path: Path, k: camera.Intrinsics):
    pts = np.loadtxt(tem_path, skiprows=1, max_rows=189)
    ids = list(IBUG_TO_TEM)
    obj = model.neutral.numpy()[model.landmarks68[ids]].astype(np.float64)
    img = pts[[IBUG_TO_TEM[i] for i in ids]].astype(np.float64)
    kmat = np.array([[k.focal_px, 0, k.cx], [0, k.focal_px, k.cy], [0, 0, 1]])
    ok, rvec, tvec = cv2.solvePnP(obj, img, kmat, None, flags=cv2.SOLVEPNP_EPNP)
    ok, rvec, tvec = cv2.solvePnP(obj, img, kmat, None, rvec, tvec, True, flags=cv2.SOLVEPNP_ITERATIVE)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, +z forward) -> ours (y up, -z forward)
    rot = flip @ cv2.Rodrigues(rvec)[0]
    trans = flip @ tvec[:, 0]
    return torch.tensor(rot, dtype=torch.float32), torch.tensor(trans, dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("photo")
    ap.add_argument("--out", default="/tmp/tex_real")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--bundle", help="a result bundle of this photo: use its fitted mesh and pose")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    photo = np.asarray(Image.open(a.photo).convert("RGB"))
    model = load_face_model()
    k = camera.Intrinsics.for_image(photo.shape[1], photo.shape[0])
    verts = model.neutral
    if a.bundle:
        b = load_bundle(Path(a.bundle))
        res = b.result
        cam = res["camera"]
        k = camera.Intrinsics(cam["focal_px"], cam["cx"], cam["cy"], cam["width"], cam["height"])
        rot = torch.tensor(res["pose"]["rotation"], dtype=torch.float32)
        trans = torch.tensor(res["pose"]["translation_cm"], dtype=torch.float32)
        verts = torch.from_numpy(b.vertices)
    else:
        rot, trans = rough_pose(model, Path(a.photo).with_suffix(".tem"), k)
    print("yaw/pitch/roll", [round(x, 1) for x in camera.yaw_pitch_roll_deg(rot)])
    debug = {}
    obs, fit = known_scene(photo, k, rot, trans, verts, Path(a.photo).name)
    for rep in range(2):
        t0 = time.perf_counter()
        maps = project_texture(obs, fit, model, a.size, _debug=debug if rep else None).maps
        print(f"project_texture run {rep}: {time.perf_counter() - t0:.2f} s")
    for t in maps["diffuse"]:
        Image.fromarray(encode_srgb8(maps["diffuse"][t])).save(out / f"diffuse.{t}.png")
        Image.fromarray(to_unorm8(maps["visibility"][t])).save(out / f"visibility.{t}.png")
    for name, img in debug.items():
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out / f"debug.{name}.png")
    scr = camera.project(camera.to_camera(verts, rot, trans), k).numpy()
    over = photo.copy()
    skin = model.topology.triangles[model.topology.polygon_part[model.topology.triangle_polygon] == 0]
    for tri in skin[::7]:
        cv2.polylines(over, [scr[tri, :2].astype(np.int32)], True, (0, 255, 0), 1)
    Image.fromarray(over).save(out / "overlay.png")


if __name__ == "__main__":
    main()

"""The de-lit face tile with the photo's specular highlights kept and taken out, side by side, for
docs/maps.md (docs/img/highlights.jpg; backend/highlights.py).

    .venv/bin/python scripts/highlights_picture.py PHOTO [PHOTO ...] --out docs/img/highlights.jpg

Per photo the pipeline's own stages (detection, masks, landmark and photometric fit), then the de-lit
texture before and after `skin_maps.with_measured_maps` (which reads the maps and then takes the
highlights out); the centre of tile 1001, sRGB, kept | taken out, the photos in a row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CROP = (slice(120, 560), slice(330, 700))      # rows, columns of the 1024-texel tile 1001: brows to lips


def tiles(photo_path: Path, size: int = 1024) -> tuple[np.ndarray, np.ndarray, dict]:
    from backend import skin_maps
    from backend.albedo import load_albedo_model
    from backend.facemodel import load_face_model
    from backend.fitting import fit_landmarks
    from backend.imageio import load_photo
    from backend.landmarks import get_analyzer
    from backend.photometric import fit_photometric
    from backend.pipeline import load_correspondence, observe
    from backend.segmentation import get_segmenter
    from backend.texture import delit_recipe, make_texture
    model, corr, am = load_face_model(), load_correspondence(), load_albedo_model()
    photo = load_photo(photo_path)
    obs = observe(photo, get_analyzer())
    obs.masks = get_segmenter().segment(photo, obs.detection)
    det = obs.detection
    fit = fit_landmarks(model, corr, det.points, obs.intrinsics, det.blendshapes)
    fit = fit_photometric(obs, fit, model, corr, am)
    plain = make_texture(obs, fit, model, size, delit_recipe(obs, fit))
    tex = skin_maps.with_measured_maps(plain, obs, fit, model)
    return plain.maps["diffuse"][1001], tex.maps["diffuse"][1001], tex.info["maps"]["highlights"]


def main() -> int:
    from backend.colour import linear_to_srgb
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photos", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "highlights.jpg")
    ap.add_argument("--scale", type=float, default=0.75)
    a = ap.parse_args()
    cells = []
    for p in a.photos:
        kept, taken, found = tiles(p)
        print(p.name, found)
        srgb = [np.clip(linear_to_srgb(np.clip(t[CROP], 0.0, 1.0)), 0.0, 1.0) for t in (kept, taken)]
        h = srgb[0].shape[0]
        cells += [srgb[0], np.ones((h, 6, 3)), srgb[1], np.ones((h, 8, 3))]
    img = Image.fromarray((np.concatenate(cells[:-1], 1) * 255 + 0.5).astype(np.uint8))
    img = img.resize((int(img.width * a.scale), int(img.height * a.scale)), Image.LANCZOS)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(a.out, quality=88)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training data of the UV texture generator (backend/generator; weights/MANIFEST.md), cached under --out.

    .venv/bin/python scripts/build_generator_data.py [--views 8] [--seed 0] [--out out/generator_data]

1. Studio heads (backend/bench/partial_views.py): every London neutral photo through the pipeline (detect,
   segment, landmark and photometric fit, "delit" texture at 256): the truth albedo and its confidence.
   All 86 identities (the 10 held out serve the completion bench; none of their data reaches training).
2. Stage-1 images: face crops of the training identities' neutral and smiling photos (192 x 192 sRGB).
3. Stage-2 pairs, per training identity and view: the head drawn at a random pose (yaw up to 70 degrees),
   under a random light (SH plus a hard light with cast shadows in 70% of views), with occluders (hair of
   another training identity, a hand shape), JPEG-compressed; then the pipeline's texture stage on it
   (segmentation, photometric fit of light and albedo on the known geometry, the "delit" recipe at 256):
   its direct view pooled to 128 (premultiplied colour and weight) and the fitted albedo model's image at
   64. Views are made round-robin over identities and each file is written once, so the script resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.albedo import load_albedo_model  # noqa: E402
from backend.bench import partial_views as pv  # noqa: E402
from backend.facemodel import load_face_model  # noqa: E402
from backend.generator.conditions import RES, TILES, pool_first  # noqa: E402
from backend.imageio import load_photo  # noqa: E402
from backend.pipeline import get_analyzer, load_correspondence  # noqa: E402
from backend.texture import delit_recipe, make_texture  # noqa: E402

LONDON = ROOT.parent / "shared" / "data" / "faces" / "london"
CROP_SIDE = 192
VIEW_TEXTURE_SIZE = 256


def held_out_identities() -> list[str]:
    """The albedo model's held-out identities (weights/albedo_model.npz): the same ones stay out here."""
    with np.load(ROOT / "weights" / "albedo_model.npz") as z:
        return [str(x) for x in z["held_out"]]


def load_heads(out: Path, model, corr, albedo_model, ids: list[str]) -> dict[str, pv.StudioHead]:
    heads = {}
    for i, ident in enumerate(ids):
        path = out / "heads" / f"{ident}.npz"
        if not path.exists():
            t0 = time.time()
            pv.studio_head(LONDON / "neutral" / f"{ident}_03.jpg", model, corr, albedo_model).save(path)
            print(f"head {ident} [{i + 1}/{len(ids)}] {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        heads[ident] = pv.StudioHead.load(path)
    return heads


def face_crops(out: Path, ids: list[str]) -> np.ndarray:
    path = out / "crops.npz"
    if path.exists():
        with np.load(path) as z:
            return z["crops"]
    crops = []
    for ident in ids:
        for folder, suffix in (("neutral", "03"), ("smiling", "08")):
            p = LONDON / folder / f"{ident}_{suffix}.jpg"
            if not p.exists():
                continue
            photo = load_photo(p)
            det = get_analyzer().detect(photo)
            x0, y0, x1, y1 = det.box
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.6 * max(x1 - x0, y1 - y0)
            m = np.array([[CROP_SIDE / (2 * half), 0, -(cx - half) * CROP_SIDE / (2 * half)],
                          [0, CROP_SIDE / (2 * half), -(cy - half) * CROP_SIDE / (2 * half)]], np.float32)
            small = cv2.resize(photo.rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            m[:, :2] *= 2.0
            crops.append(cv2.warpAffine(small, m, (CROP_SIDE, CROP_SIDE), flags=cv2.INTER_AREA,
                                        borderMode=cv2.BORDER_REFLECT))
    crops = np.stack(crops)
    np.savez_compressed(path, crops=crops)
    return crops


def view_record(model, corr, albedo_model, head: pv.StudioHead, spec: pv.ViewSpec, donors) -> dict:
    """One view through the texture stage: the arrays the generator is trained on."""
    view = pv.make_view(model, corr, head, spec, donors)
    obs, fit = pv.observe_view(model, corr, head, view, albedo_model)
    captured = {}
    recipe = delit_recipe(obs, fit)
    recipe.prepare = lambda first: captured.update(first=pool_first(first))
    make_texture(obs, fit, model, VIEW_TEXTURE_SIZE, recipe)
    prior = torch.stack([albedo_model.image(t, fit.albedo.float()) for t in TILES])
    prior = torch.nn.functional.avg_pool2d(prior, prior.shape[-1] // RES)
    return {"first": captured["first"].numpy().astype(np.float16), "prior": prior.numpy().astype(np.float16),
            "albedo": fit.albedo.numpy().astype(np.float32), "lighting": fit.lighting.numpy().astype(np.float32),
            "image": cv2.resize(view.image, (128, 128), interpolation=cv2.INTER_AREA)}


def spec_json(spec: pv.ViewSpec) -> str:
    def conv(x):
        if isinstance(x, np.ndarray):
            return x.round(5).tolist()
        return x
    return json.dumps({k: conv(v) for k, v in spec.__dict__.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "generator_data")
    ap.add_argument("--views", type=int, default=8, help="views per training identity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, corr, albedo_model = load_face_model(), load_correspondence(), load_albedo_model()
    ids = sorted({p.stem.split("_")[0] for p in (LONDON / "neutral").glob("*.jpg")})
    held = held_out_identities()
    train = [i for i in ids if i not in held]
    print(f"{len(train)} training identities, {len(held)} held out: {', '.join(held)}", file=sys.stderr)
    heads = load_heads(a.out, model, corr, albedo_model, train + held)
    crops = face_crops(a.out, train)
    print(f"{len(crops)} face crops ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    donors = [heads[i] for i in train]
    (a.out / "views").mkdir(parents=True, exist_ok=True)
    for v in range(a.views):
        for n, ident in enumerate(train):
            path = a.out / "views" / f"{ident}_v{v:02d}.npz"
            if path.exists():
                continue
            rng = np.random.default_rng([a.seed, int(ident), v])
            spec = pv.random_view(rng, len(donors))
            spec.seed = v
            if spec.hair_donor is not None and donors[spec.hair_donor].identity == ident:
                spec.hair_donor = (spec.hair_donor + 1) % len(donors)
            rec = view_record(model, corr, albedo_model, heads[ident], spec, donors)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, identity=ident, spec=spec_json(spec), **rec)
            tmp.replace(path)
            print(f"view {v} {ident} [{n + 1}/{len(train)}] yaw {spec.yaw:+.0f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

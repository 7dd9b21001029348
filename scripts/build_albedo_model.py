"""Learn the skin albedo model (weights/albedo_model.npz) from the London photos: see weights/MANIFEST.md.

    .venv/bin/python scripts/build_albedo_model.py            # or: make albedo-model

Per training photo: detect, segment, fit (landmarks, then photometric: SH lighting with the current albedo
model, a constant colour in the first pass), project into UV in linear light and divide by the fitted
shading (texture strategy "delit": hair, background and deep shadow lose weight and are filled), bring
down to R x R per tile (area filter, linear), add its mirror image (the UV layout's own mirror map), then
PCA. Two passes: the second fits lighting and fills with the first pass's model. Held-out identities are
never used for training; their reconstruction error against the number of components is reported.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.albedo import ALBEDO_PATH, AlbedoModel  # noqa: E402
from backend.facemodel import load_face_model  # noqa: E402
from backend.bench.partial_views import delit_photo  # noqa: E402
from backend.pipeline import load_correspondence  # noqa: E402
from backend.texture import TILES, _uv_layout, push_pull, render  # noqa: E402

LONDON = ROOT.parent / "shared" / "data" / "faces" / "london" / "neutral"
HELD_OUT_COUNT = 10
TEXTURE_SIZE = 512


def held_out_ids(ids: list[str], count: int) -> list[str]:
    """Every k-th identity of the sorted list, spread over the set (fixed: no tuning on them)."""
    step = max(1, len(ids) // count)
    return ids[step // 2::step][:count]


def downsample(img: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def textures_of(path: Path, model, corr, albedo_model: AlbedoModel | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, R, R) de-lit albedo and (T, R, R) confidence of one photo."""
    # fills with fit.albedo_model (none in the first pass)
    _, _, _, tex = delit_photo(path, model, corr, albedo_model, TEXTURE_SIZE)
    albedo = np.stack([downsample(tex.maps["diffuse"][t], size).transpose(2, 0, 1) for t in TILES])
    conf = np.stack([downsample(tex.maps["visibility"][t], size) for t in TILES])
    return albedo.astype(np.float32), conf.astype(np.float32)


def mirrored(images: np.ndarray, layouts) -> np.ndarray:
    """(T, C, R, R) images -> their mirror images through the UV layout's mirror map (texels without a
    mirror keep their own value)."""
    R = images.shape[-1]
    src = torch.from_numpy(images)
    out = src.clone()
    for ti, lay in enumerate(layouts):
        flat = out[ti].reshape(src.shape[1], -1)
        for mt, (sel, grid) in lay.mirror.items():
            vals = render.sample_image(src[TILES.index(mt)], grid)          # (C, M)
            flat[:, lay.texel[sel]] = vals
        out[ti] = flat.view(src.shape[1], R, R)
    return out.numpy()


def covered_mask(layouts, R: int) -> np.ndarray:
    mask = np.zeros((len(TILES), R * R), bool)
    for ti, lay in enumerate(layouts):
        mask[ti, lay.texel.numpy()] = True
    return mask.reshape(len(TILES), R, R)


def outside_filled(images: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """(T, C, R, R) with the texels outside the UV layout filled smoothly from inside (push-pull), so a
    bilinear look-up or upsampling at an island's border never pulls in zeros (dark seams)."""
    out = []
    for img, cov in zip(images, covered):
        filled = push_pull(torch.from_numpy(img).float(), torch.from_numpy(cov.astype(np.float32)))
        out.append(np.where(cov[None], img, filled.numpy()))
    return np.stack(out).astype(np.float32)


def pca(samples: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean (D,), basis (K, D) scaled by each component's standard deviation, and all std devs."""
    mean = samples.mean(0)
    x = samples - mean
    gram = x @ x.T                                               # (N, N): N << D
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    k = min(components, len(samples) - 1)
    dirs = (vecs[:, :k].T @ x) / np.sqrt(np.maximum(vals[:k, None], 1e-12))   # unit principal directions
    std = np.sqrt(vals / max(1, len(samples) - 1))
    return mean, dirs * std[:k, None], std


def reconstruction_error(albedo: np.ndarray, conf: np.ndarray, mean: np.ndarray, basis: np.ndarray,
                         ks: list[int], prior: float = 1.0) -> dict[int, float]:
    """RMSE (linear) over confidently seen texels (conf > 0.5) of the best fit with the first k
    components (weighted least squares with an N(0, 1) prior, as the photometric fit uses them)."""
    w = (conf > 0.5).astype(np.float64)
    wd = np.repeat(w[:, None], 3, axis=1).reshape(-1)
    y = albedo.reshape(-1).astype(np.float64) - mean
    sel = wd > 0
    out = {}
    for k in ks:
        if k == 0:
            r = y[sel]
        else:
            b = basis[:k][:, sel].astype(np.float64)
            c = np.linalg.solve(b @ b.T + prior * np.eye(k), b @ y[sel])
            r = y[sel] - c @ b
        out[k] = float(np.sqrt(np.mean(r * r)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=Path, default=LONDON)
    ap.add_argument("--resolution", type=int, default=256, help="texels per tile side of the model")
    ap.add_argument("--components", type=int, default=40)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="at most this many training photos (quick checks)")
    ap.add_argument("--out", type=Path, default=ALBEDO_PATH)
    ap.add_argument("--report", type=Path, default=None, help="JSON with the held-out errors (default: next to --out)")
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    photos = sorted(a.photos.glob("*.jpg"))
    ids = sorted({p.stem.split("_")[0] for p in photos})
    held = held_out_ids(ids, HELD_OUT_COUNT)
    train = [p for p in photos if p.stem.split("_")[0] not in held]
    test = [p for p in photos if p.stem.split("_")[0] in held]
    if a.limit:
        train = train[:a.limit]
    print(f"{len(train)} training photos, {len(test)} held out: {', '.join(held)}", file=sys.stderr)
    model, corr = load_face_model(), load_correspondence()
    R = a.resolution
    layouts, _ = _uv_layout(model, R, "cpu")
    covered = covered_mask(layouts, R)
    albedo_model = None
    for pass_ in range(a.passes):
        data = []
        for i, p in enumerate(train):
            alb, conf = textures_of(p, model, corr, albedo_model, R)
            data += [alb, mirrored(alb, layouts)]
            print(f"pass {pass_ + 1} [{i + 1}/{len(train)}] {p.name} seen {float((conf > 0.5).mean()):.2f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr)
        x = np.stack(data).reshape(len(data), -1)
        mean, basis, std = pca(x, a.components)
        shape = (len(TILES), 3, R, R)
        mean_img = outside_filled(mean.reshape(shape), covered)
        basis_img = np.stack([outside_filled(b.reshape(shape), covered) for b in basis])
        albedo_model = AlbedoModel(TILES, torch.from_numpy(mean_img), torch.from_numpy(basis_img), model.hash)
        print(f"pass {pass_ + 1}: {len(data)} samples, std of the first components "
              f"{np.round(std[:8], 3).tolist()}", file=sys.stderr)

    ks = [k for k in (0, 1, 2, 5, 10, 20, 30, 40, 60, 80) if k <= albedo_model.num_components]
    errors = []
    for p in test:
        alb, conf = textures_of(p, model, corr, albedo_model, R)
        errors.append(reconstruction_error(alb, conf, mean_img.reshape(-1), basis_img.reshape(len(basis_img), -1), ks))
        print(f"held out {p.name}: " + ", ".join(f"k={k} {e:.4f}" for k, e in errors[-1].items()), file=sys.stderr)
    table = {k: float(np.mean([e[k] for e in errors])) for k in ks}

    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, tiles=np.array(TILES), mean=mean_img.astype(np.float16), basis=basis_img.astype(np.float16),
                        std=std[:len(basis_img)].astype(np.float32), model_hash=np.array(model.hash),
                        held_out=np.array(held), resolution=np.array(R))
    tmp.replace(a.out)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "train_photos": [p.name for p in train],
              "held_out_identities": held, "resolution": R, "components": int(len(basis_img)), "passes": a.passes,
              "held_out_rmse_linear_by_components": table, "seconds": round(time.time() - t0, 1),
              "sha256": hashlib.sha256(a.out.read_bytes()).hexdigest(), "bytes": a.out.stat().st_size}
    (a.report or a.out.with_suffix(".report.json")).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("held_out_rmse_linear_by_components", "seconds", "sha256", "bytes")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

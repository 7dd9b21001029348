"""Build weights/mediapipe_to_ict.npz: each of MediaPipe's 478 landmarks as a point on the ICT surface.

MediaPipe's canonical face mesh ships in no wheel here, so the correspondence is learned from photos:
 1. bootstrap: fit every London neutral photo with the 51 inner iBUG-68 points only (their ICT
    vertices are listed by the asset; MediaPipe's 478 -> 68 subset is IBUG68_FROM_MEDIAPIPE);
 2. cast a ray through each detected MediaPipe landmark onto the fitted face surface, and carry the
    hit (triangle, barycentrics) back to the neutral mean face;
 3. the median of those canonical points over all photos, snapped to the neutral surface, is the
    landmark's correspondence; its spread says how reliable it is;
 4. refit every photo with all landmarks and repeat 2-3 (ROUNDS times).
Iris points (468-477) sit on the eyeballs, whose gaze varies: they are stored with weight 0.
Eyelid and inner-lip landmarks whose rays pass through the openings snap to the nearest rim vertex.
Usage: python scripts/build_landmark_correspondence.py [--photos DIR] [--limit N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.camera import Intrinsics, to_camera  # noqa: E402
from backend.errors import LikenessError  # noqa: E402
from backend.facemodel import VERTEX_RANGES, load_face_model  # noqa: E402
from backend.fitting import CORRESPONDENCE_PATH, Correspondence, FitSettings, fit_landmarks, inter_ocular_px  # noqa: E402
from backend.imageio import load_photo  # noqa: E402
from backend.landmarks import IBUG68_FROM_MEDIAPIPE, get_analyzer  # noqa: E402

ROUNDS = 2
# Weak priors here, unlike reconstruction: a fit that follows each photo's landmarks closely puts the
# rays on the right surface points; the studio photos' landmarks are accurate.
LEARNING_FIT = FitSettings(identity_prior=2.0, expression_prior=0.5)
NUM_LANDMARKS = 478
IRIS = np.arange(468, 478)
FACE_OVAL = [10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251,
             284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454]


def face_triangles(model) -> np.ndarray:
    """Triangles of the face, head and neck skin (where MediaPipe's landmarks live)."""
    tri = model.topology.triangles
    return tri[(tri <= VERTEX_RANGES["head_neck"][1]).all(1)]


def nearest_vertex_hits(points_px, k, cam, missed):
    """Rays that miss the skin pass through the eye or mouth openings: their landmarks lie on the
    opening's rim (eyelid or lip margin). Take the face vertex that projects near the landmark and
    is nearest the camera (the back of the head projects there too), as a degenerate triangle hit."""
    verts = np.arange(VERTEX_RANGES["face"][1] + 1)
    uv = np.stack([k.cx + k.focal_px * cam[verts, 0] / -cam[verts, 2], k.cy - k.focal_px * cam[verts, 1] / -cam[verts, 2]], 1)
    dist, cand = cKDTree(uv).query(points_px[missed], k=8)
    depth = -cam[verts[cand], 2] + 1e3 * (dist > 2 * dist[:, :1] + 1.0)  # only candidates about as near in the image
    return verts[cand[np.arange(len(cand)), depth.argmin(1)]]


def ray_cast(points_px: np.ndarray, k: Intrinsics, tri_cam: np.ndarray):
    """Nearest front-facing hit of the camera rays through `points_px` on triangles (T, 3, 3) in camera space.
    Returns triangle index (-1 when missed) and barycentrics (Moller-Trumbore, vectorised)."""
    d = np.stack([(points_px[:, 0] - k.cx) / k.focal_px, -(points_px[:, 1] - k.cy) / k.focal_px,
                  -np.ones(len(points_px))], 1).astype(np.float64)
    v0, e1, e2 = tri_cam[:, 0], tri_cam[:, 1] - tri_cam[:, 0], tri_cam[:, 2] - tri_cam[:, 0]
    hit_tri = np.full(len(d), -1)
    hit_bary = np.zeros((len(d), 3))
    for s in range(0, len(d), 32):
        dd = d[s:s + 32, None, :]                               # (B, 1, 3)
        p = np.cross(dd, e2[None])                              # (B, T, 3)
        det = (e1[None] * p).sum(-1)
        inv = 1.0 / np.where(np.abs(det) < 1e-12, np.inf, det)
        tvec = -v0[None]                                        # ray origin is the camera centre
        u = (tvec * p).sum(-1) * inv
        q = np.cross(tvec, e1[None])
        v = (dd * q).sum(-1) * inv
        dist = (e2[None] * q).sum(-1) * inv
        # det > 0: the triangle faces the camera (a ray through the eye opening must not hit the
        # inside of the back of the head)
        ok = (u >= 0) & (v >= 0) & (u + v <= 1) & (dist > 0) & (det > 0)
        dist = np.where(ok, dist, np.inf)
        best = dist.argmin(1)
        found = np.isfinite(dist[np.arange(len(best)), best])
        rows = np.arange(s, s + len(best))
        hit_tri[rows[found]] = best[found]
        bu, bv = u[np.arange(len(best)), best], v[np.arange(len(best)), best]
        hit_bary[rows] = np.stack([1 - bu - bv, bu, bv], 1)
    return hit_tri, hit_bary


def snap_to_surface(points: np.ndarray, tri_pos: np.ndarray, tri_ids: np.ndarray):
    """Closest surface point (approximately: plane projection, clamped barycentrics) among nearby triangles."""
    centroids = tri_pos.mean(1)
    _, cand = cKDTree(centroids).query(points, k=32)
    a, b, c = (tri_pos[cand][..., i, :] for i in range(3))       # (L, K, 3)
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-12
    proj = points[:, None] - ((points[:, None] - a) * n).sum(-1, keepdims=True) * n
    v0, v1, v2 = b - a, c - a, proj - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = d00 * d11 - d01 * d01
    bv = (d11 * d20 - d01 * d21) / den
    bw = (d00 * d21 - d01 * d20) / den
    bary = np.clip(np.stack([1 - bv - bw, bv, bw], -1), 0, None)
    bary /= bary.sum(-1, keepdims=True)
    surf = (bary[..., None] * tri_pos[cand]).sum(-2)
    best = np.linalg.norm(surf - points[:, None], axis=-1).argmin(1)
    rows = np.arange(len(points))
    return tri_ids[cand[rows, best]], bary[rows, best]


def bootstrap_correspondence(model) -> tuple[Correspondence, np.ndarray]:
    inner = np.arange(17, 68)
    verts = model.landmarks68[inner]
    corr = Correspondence(np.repeat(verts[:, None], 3, 1), np.tile([1.0, 0.0, 0.0], (len(inner), 1)).astype(np.float32),
                          np.ones(len(inner), np.float32), np.zeros(len(inner), bool))
    return corr, IBUG68_FROM_MEDIAPIPE[inner]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared/data/faces/london/neutral"))
    ap.add_argument("--limit", type=int, default=40, help="photos to use (0: all)")
    ap.add_argument("--out", default=str(CORRESPONDENCE_PATH))
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    model = load_face_model()
    analyzer = get_analyzer()
    tris = face_triangles(model)
    neutral_tri = model.neutral.numpy()[tris]

    photos = sorted(Path(args.photos).glob("*.jpg"))[: args.limit or None]
    detections = []
    for path in photos:
        try:
            photo = load_photo(path)
            detections.append((path.name, photo, analyzer.detect(photo)))
        except LikenessError as err:
            print(f"skip {path.name}: {err}", file=sys.stderr)
    print(f"{len(detections)} photos with a face", file=sys.stderr)

    corr, subset = bootstrap_correspondence(model)
    for rnd in range(ROUNDS + 1):
        t0 = time.perf_counter()
        canon = np.full((len(detections), NUM_LANDMARKS, 3), np.nan)
        misses = np.zeros((len(detections), NUM_LANDMARKS), bool)
        errors = []
        for i, (name, photo, det) in enumerate(detections):
            k = Intrinsics.for_image(photo.width, photo.height, photo.focal_35mm)
            fit = fit_landmarks(model, corr, det.points[subset], k, det.blendshapes, settings=LEARNING_FIT,
                               iod_px=inter_ocular_px(det.points))
            errors.append(fit.error_iod)
            with torch.no_grad():
                cam = to_camera(model.vertices(fit.identity, fit.expression), fit.rotation, fit.translation).numpy()
            hit, bary = ray_cast(det.points.astype(np.float64), k, cam[tris].astype(np.float64))
            ok = hit >= 0
            canon[i, ok] = (bary[ok, :, None] * neutral_tri[hit[ok]]).sum(1)
            rim = nearest_vertex_hits(det.points, k, cam, ~ok)
            canon[i, ~ok] = model.neutral.numpy()[rim]
            misses[i] = ~ok
        hit_rate = 1.0 - misses.mean(0)
        median = np.median(canon, axis=0)
        spread = np.sqrt(np.mean(((canon - median) ** 2).sum(-1), axis=0))
        tri_idx, bary = snap_to_surface(np.nan_to_num(median), neutral_tri, np.arange(len(tris)))
        weight = np.ones(NUM_LANDMARKS, np.float32)
        weight[IRIS] = 0.0
        contour = np.zeros(NUM_LANDMARKS, bool)
        contour[FACE_OVAL] = True
        print(f"round {rnd}: fit error {np.mean(errors):.2%} IOD (max {np.max(errors):.2%}), "
              f"rays hitting skin {hit_rate.mean():.3f}, spread median {np.median(spread) * 10:.1f} mm, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        corr = Correspondence(tris[tri_idx], bary.astype(np.float32), weight, contour)
        subset = np.arange(NUM_LANDMARKS)
    np.savez(args.out, vertex_ids=corr.vertex_ids, bary=corr.bary, weight=corr.weight, contour=corr.contour,
             spread_cm=spread.astype(np.float32), hit_rate=hit_rate.astype(np.float32),
             photos=np.array([d[0] for d in detections]))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

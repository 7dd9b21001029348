"""preview.png: the fitted mesh drawn over the photo, with detected and fitted landmarks."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .camera import project, to_camera
from .facemodel import NARROW_FACE_LAST_VERTEX, FaceModel

PREVIEW_MAX_SIDE = 1024


def draw_preview(photo_rgb: np.ndarray, model: FaceModel, vertices: torch.Tensor, fit, det) -> np.ndarray:
    scale = min(1.0, PREVIEW_MAX_SIDE / max(photo_rgb.shape[:2]))
    img = cv2.resize(photo_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else photo_rgb.copy()
    cam = to_camera(vertices, fit.rotation, fit.translation)
    uvd = project(cam, fit.intrinsics).cpu().numpy()
    pix = uvd[:, :2] * scale

    # Wireframe of the front-facing polygons of the face region (ears and neck are clutter here).
    topo = model.topology
    starts = np.concatenate([[0], np.cumsum(topo.face_sizes)[:-1]])
    quads = np.flatnonzero((topo.face_sizes == 4) & (topo.face_vertex_indices[starts] <= NARROW_FACE_LAST_VERTEX))
    corners = topo.face_vertex_indices[starts[quads, None] + np.arange(4)]
    c = cam.cpu().numpy()[corners]
    normal = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
    facing = (normal * -c.mean(1)).sum(1) > 0
    polys = np.round(pix[corners[facing]] * 16).astype(np.int32)  # 4 bits of sub-pixel precision
    overlay = img.copy()
    cv2.polylines(overlay, list(polys), True, (255, 255, 255), 1, cv2.LINE_AA, shift=4)
    img = cv2.addWeighted(overlay, 0.45, img, 0.55, 0)

    r = max(1, round(2 * max(img.shape[:2]) / 1024))
    for pts, colour in ((det.points, (0, 255, 0)), (fit.projected, (255, 40, 40))):
        for x, y in np.round(pts[:468] * scale).astype(int):
            cv2.circle(img, (int(x), int(y)), r, colour, -1, cv2.LINE_AA)
    return img


def photometric_panels(fit, height: int) -> np.ndarray | None:
    """Three panels of the photometric fit, `height` px tall: the face crop (the photo), the render (albedo
    x fitted shading) and the per-pixel weight the robust loss gave (white = trusted skin, dark = an
    outlier the fit ignored: a hand, glasses, a highlight; black outside the skin mask)."""
    ex = getattr(fit, "extras", None) or {}
    if "crop" not in ex:
        return None
    from .colour import encode_srgb8
    crop = ex["crop"]
    h, w = crop.image.shape[:2]
    pred = torch.zeros(h * w, 3)
    pred[ex["drawn_pixel"].cpu()] = ex["prediction"].detach().float().cpu()
    weight = torch.zeros(h * w)
    weight[ex["drawn_pixel"].cpu()] = (ex["inlier"].detach().float() * (crop.skin.reshape(-1)[ex["drawn_pixel"]] > 0.5)).cpu()
    panels = [encode_srgb8(crop.image.cpu()), encode_srgb8(pred.view(h, w, 3)),
              np.repeat((weight.view(h, w, 1).clamp(0, 1) * 255 + 0.5).byte().numpy(), 3, axis=2)]
    s = height / h
    size = (max(1, round(w * s)), height)
    return np.concatenate([cv2.resize(p, size, interpolation=cv2.INTER_NEAREST if s > 1 else cv2.INTER_AREA)
                           for p in panels], axis=1)

"""Per-photo measures of a finished bundle: landmark error, appearance, identity; the contact-sheet cells."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from . import metrics
from ..bundle import load_bundle
from .render import Light, camera_of, head_of_bundle, render_bundle, screen_points

CROP_SIDE = 256      # image metrics are computed on the face crop resized to this longest side
CELL = 256           # contact-sheet cell size (px)


class Evaluator:
    """Holds the networks and tables every photo needs (loaded once)."""

    def __init__(self, appearance: bool = True, identity: bool = True, device: str = "cpu"):
        from ..paths import find_ict_dir
        from ..pipeline import load_correspondence
        self.corr = None
        try:
            self.corr = load_correspondence()
        except (OSError, KeyError) as err:
            print(f"bench: no landmark correspondence ({err}); fitted-point errors use ICT's 68 vertices only")
        idx = json.loads((find_ict_dir() / "vertex_indices.json").read_text())
        self.ict68 = np.asarray(idx["idx_to_landmark_verts"], np.int64)
        self.lpips = metrics.Lpips(device if device != "auto" else "cpu") if appearance else None
        self.face = metrics.FaceDescriptor() if identity else None

    def landmarks(self, bundle: Path, result: dict, det_points: np.ndarray | None, tem_points: np.ndarray) -> dict:
        """Errors of the FRL<->iBUG pairs / inter-pupil distance, for MediaPipe's points, the
        fitted model's points (the same MediaPipe points through the landmark correspondence, so
        both rows mean the same thing) and ICT's own 68-landmark vertices."""
        from ..landmarks import IBUG68_FROM_MEDIAPIPE
        vertices = load_bundle(bundle).vertices
        k, rot, trans = camera_of(result)
        scr = screen_points(vertices, k, rot, trans).numpy()[:, :2]
        out = {}
        if det_points is not None:
            out["mediapipe"] = metrics.frl_nme(np.asarray(det_points)[IBUG68_FROM_MEDIAPIPE], tem_points).tolist()
        if self.corr is not None:
            lm = self.corr.on_surface(vertices)
            lm2 = screen_points(lm, k, rot, trans).numpy()[:, :2]
            out["fit"] = metrics.frl_nme(lm2[IBUG68_FROM_MEDIAPIPE], tem_points).tolist()
        out["fit_ict68"] = metrics.frl_nme(scr[self.ict68], tem_points).tolist()
        return out

    def appearance(self, bundle: Path, photo_rgb: np.ndarray, result: dict) -> tuple[dict, object]:
        # A bundle that fitted the light is drawn under it (its diffuse map is albedo: unshaded it would
        # not look like the photo, nor to dlib like the person); v0's map holds the light already.
        head = head_of_bundle(Path(bundle))
        rend = render_bundle(head, photo_rgb, Light(head.lighting) if head.lighting is not None else None)
        out = {"render_pixels": int(rend.drawn.sum()), "face_skin_pixels": int(rend.face_skin.sum())}
        if rend.face_skin.sum() < 50:
            return out, rend
        out.update(masked_image_measures(photo_rgb, rend.image, rend.face_skin, self.lpips))
        if self.face is not None:
            box = self.face.find_box(photo_rgb, tuple(result["detection"]["face_box"]))
            d_photo = self.face(photo_rgb, box)
            d_render = self.face(rend.image, box)
            out["id_distance"] = float(np.linalg.norm(d_photo - d_render))
        return out, rend


def masked_image_measures(a: np.ndarray, b: np.ndarray, mask: np.ndarray, lpips=None) -> dict:
    """SSIM, PSNR (dB) and, with an `lpips` net, ST-LPIPS of two uint8 images inside `mask`, on the
    mask's bounding box (+10 %) resized to CROP_SIDE px: every image row of the bench compares this way."""
    if mask.sum() < 50:
        return {}
    crop = bbox(mask, 0.1)
    a, b, m = (resize_crop(x, crop, CROP_SIDE, nearest=(x.dtype == bool)) for x in (a, b, mask))
    out = {"ssim": metrics.ssim(a, b, m), "psnr_db": metrics.psnr(a, b, m)}
    if lpips is not None:
        out["lpips"] = lpips(a, b, m)
    return out


def bbox(mask: np.ndarray, pad: float) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    py, px = int((y1 - y0) * pad), int((x1 - x0) * pad)
    h, w = mask.shape
    return max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)


def resize_crop(img: np.ndarray, box, side: int, nearest: bool = False) -> np.ndarray:
    x0, y0, x1, y1 = box
    c = img[y0:y1, x0:x1]
    s = side / max(c.shape[:2])
    size = (max(1, round(c.shape[1] * s)), max(1, round(c.shape[0] * s)))
    if nearest:
        return cv2.resize(c.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return cv2.resize(c, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def square_box(face_box, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = face_box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * scale / 2
    return int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half))


def cell(img: np.ndarray, box=None, size: int = CELL) -> np.ndarray:
    """A square cell of `img` (the box, padded with grey where it leaves the image)."""
    if box is not None:
        x0, y0, x1, y1 = box
        h, w = img.shape[:2]
        pad = max(0, -x0, -y0, x1 - w, y1 - h)
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(96, 96, 96))
            x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
        img = img[y0:y1, x0:x1]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)


def photo_cells(bundle: Path, photo_rgb: np.ndarray, rendering, result: dict) -> list[np.ndarray]:
    """input, mesh overlay (the bundle's preview.png), re-render, diffuse tile 1001."""
    h, w = photo_rgb.shape[:2]
    box = square_box(result["detection"]["face_box"], 1.7, w, h)
    cells = [cell(photo_rgb, box)]
    prev_path = bundle / "preview.png"
    if prev_path.exists():
        prev = cv2.cvtColor(cv2.imread(str(prev_path)), cv2.COLOR_BGR2RGB)
        s = prev.shape[1] / w
        cells.append(cell(prev, tuple(int(round(v * s)) for v in box)))
    else:
        cells.append(np.full((CELL, CELL, 3), 96, np.uint8))
    cells.append(cell(rendering.image, box) if rendering is not None else np.full((CELL, CELL, 3), 96, np.uint8))
    diff = bundle / "diffuse.1001.png"
    cells.append(cell(cv2.cvtColor(cv2.imread(str(diff)), cv2.COLOR_BGR2RGB)) if diff.exists()
                 else np.full((CELL, CELL, 3), 96, np.uint8))
    return cells

"""Part re-projection distance (3DDFA-V3's PRDL): the shapes of the face's parts in the photo, matched
without point-to-point correspondences.

For each part (eyes, brows, mouth opening, face), a target point set comes from the photo (the Face
Landmarker's part polygons: the lid margins and mouth opening as outlines, brows and face as areas) and a
predicted set from the model (the ICT vertices of that part, projected). From a fixed grid of anchor points
over the face, both sets are described by their minimum, maximum and mean distance to each anchor; the
loss is the difference of those descriptions, in inter-ocular units. A closed eye (a flat lid outline),
a crooked mouth or an arched brow change the statistics even where no landmark sits, and a landmark that
slides along its outline does not pull the fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import face_regions as fr
from .facemodel import NARROW_FACE_LAST_VERTEX, VERTEX_RANGES, FaceModel

ANCHOR_GRID = 10            # anchors per side of the face box
TARGET_POINTS = 256         # at most this many target points per part
MODEL_POINTS = 600          # at most this many model vertices per part (an even subsample)
OUTLINE_STEP = 0.02         # outline samples every this x inter-ocular distance

# Part name, landmark loop, kind (outline: the polygon's boundary; area: its inside), side (+1: ICT +X, the
# subject's left, as MediaPipe's "left"; 0: both; checked in tests), the ICT socket whose rim is the outline.
PARTS = (
    ("left_eye", fr.LEFT_EYE, "outline", +1, "eye_socket_left"),
    ("right_eye", fr.RIGHT_EYE, "outline", -1, "eye_socket_right"),
    ("mouth", fr.INNER_MOUTH, "outline", 0, "mouth_socket"),
    ("left_brow", fr.LEFT_BROW, "area", +1, None),
    ("right_brow", fr.RIGHT_BROW, "area", -1, None),
    ("face", fr.FACE_OVAL, "area", 0, None),
)


@dataclass
class PartSets:
    """Per part: the model's vertex ids (fixed) and the target points in photo pixels."""
    names: list[str]
    vertex_ids: list[torch.Tensor]
    targets: list[torch.Tensor]
    anchors: torch.Tensor       # (A, 2) photo px
    scale: float                # 1 / inter-ocular distance (px)


def _rim_vertices(model: FaceModel, socket: str) -> np.ndarray:
    """Face vertices that share a triangle with the socket (the lid margin, the inner lip line)."""
    lo, hi = VERTEX_RANGES[socket]
    tris = model.topology.triangles
    inside = (tris >= lo) & (tris <= hi)
    touching = tris[inside.any(1)]
    rim = np.unique(touching[(touching <= VERTEX_RANGES["face"][1])])
    return rim


def _area_vertices(model: FaceModel, corr, loop) -> np.ndarray:
    """Face-skin vertices inside the part's polygon on the neutral head seen from the front: the polygon
    is the landmarks' surface points (the correspondence) of that loop."""
    verts = model.neutral.cpu().numpy()
    pts = (verts[corr.vertex_ids[list(loop)]] * corr.bary[list(loop)][..., None]).sum(1)
    poly = pts[:, :2].astype(np.float32)
    candidates = np.arange(NARROW_FACE_LAST_VERTEX + 1)
    inside = np.array([cv2.pointPolygonTest(poly, (float(x), float(y)), False) >= 0
                       for x, y in verts[candidates, :2]])   # a few thousand points, once per model
    return candidates[inside]


_VERTEX_SETS: dict = {}


def part_vertices(model: FaceModel, corr) -> list[np.ndarray]:
    key = (model.hash, corr.sha256)
    if key not in _VERTEX_SETS:
        out = []
        for _, loop, kind, _, socket in PARTS:
            ids = _rim_vertices(model, socket) if kind == "outline" else _area_vertices(model, corr, loop)
            out.append(ids[:: max(1, len(ids) // MODEL_POINTS)])
        _VERTEX_SETS[key] = out
    return _VERTEX_SETS[key]


def _outline_points(poly: np.ndarray, step: float) -> np.ndarray:
    edges = np.roll(poly, -1, axis=0) - poly
    n = np.maximum(1, np.ceil(np.linalg.norm(edges, axis=1) / step).astype(int))
    t = np.concatenate([np.arange(k) / k for k in n])
    i = np.repeat(np.arange(len(poly)), n)
    return poly[i] + t[:, None] * edges[i]


def _area_points(poly: np.ndarray, count: int) -> np.ndarray:
    x0, y0 = np.floor(poly.min(0)).astype(int)
    x1, y1 = np.ceil(poly.max(0)).astype(int)
    step = max(1.0, np.sqrt((x1 - x0) * (y1 - y0) / max(1, 2 * count)))
    gx, gy = np.meshgrid(np.arange(x0, x1 + 1, step), np.arange(y0, y1 + 1, step))
    cand = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    inside = np.array([cv2.pointPolygonTest(poly.astype(np.float32), (float(x), float(y)), False) >= 0
                       for x, y in cand])
    pts = cand[inside]
    return pts[:: max(1, len(pts) // count)]


def targets(model: FaceModel, corr, points: np.ndarray, device, vertex_map: np.ndarray | None = None) -> PartSets:
    """The parts' target point sets and anchors from the detected landmarks (478, 2) in photo px.
    `vertex_map` (V,) renumbers model vertices into a sub-mesh (-1: not in it; those are dropped)."""
    iod = max(fr.inter_ocular(points), 1e-3)
    tgts = []
    for _, loop, kind, _, _ in PARTS:
        poly = np.asarray(points, np.float64)[list(loop)]
        pts = _outline_points(poly, OUTLINE_STEP * iod) if kind == "outline" else _area_points(poly, TARGET_POINTS)
        tgts.append(torch.as_tensor(pts[:: max(1, len(pts) // TARGET_POINTS)], dtype=torch.float32, device=device))
    box_lo, box_hi = points.min(0), points.max(0)
    g = (np.arange(ANCHOR_GRID) + 0.5) / ANCHOR_GRID
    ax, ay = np.meshgrid(box_lo[0] + g * (box_hi[0] - box_lo[0]), box_lo[1] + g * (box_hi[1] - box_lo[1]))
    anchors = torch.as_tensor(np.stack([ax.ravel(), ay.ravel()], 1), dtype=torch.float32, device=device)
    ids = []
    for v in part_vertices(model, corr):
        if vertex_map is not None:
            v = vertex_map[v]
            v = v[v >= 0]
        ids.append(torch.as_tensor(v, dtype=torch.long, device=device))
    return PartSets([p[0] for p in PARTS], ids, tgts, anchors, 1.0 / iod)


def statistics(anchors: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(A, 3): min, max and mean distance from each anchor to the point set."""
    d = torch.cdist(anchors, pts)
    return torch.stack([d.min(1).values, d.max(1).values, d.mean(1)], 1)


def part_distance(sets: PartSets, projected: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |statistic difference| over parts, anchors and the three statistics, in inter-ocular units.
    `projected` (V, 2) model vertices in photo px; `visible` (V,) bool, optional (hidden vertices are left out)."""
    losses = []
    for ids, tgt in zip(sets.vertex_ids, sets.targets):
        pred = projected.index_select(0, ids)
        if visible is not None:
            keep = visible.index_select(0, ids)
            if int(keep.sum()) < 3:
                continue
            pred = pred[keep]
        with torch.no_grad():
            target_stats = statistics(sets.anchors, tgt)
        losses.append((statistics(sets.anchors, pred) - target_stats).abs().mean())
    return torch.stack(losses).mean() * sets.scale if losses else projected.sum() * 0.0

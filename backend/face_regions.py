"""Face part polygons of MediaPipe's 478 Face Landmarker points, rasterised as soft masks.

The index loops are MediaPipe's contour connections (`FaceLandmarksConnections.FACE_LANDMARKS_*` in
mediapipe/tasks/python/vision/face_landmarker.py, mediapipe 1.2.2; the same lists as the legacy
`face_mesh_connections.FACEMESH_*`), with each part's connection chains joined into one closed
polygon: chain one, then chain two reversed. tests/test_segmentation.py checks them against the
installed package. "Left" is the subject's left (image right), as in MediaPipe.
"""
from __future__ import annotations

import cv2
import numpy as np

# FACE_LANDMARKS_FACE_OVAL: one closed chain (10 = top of the forehead, 152 = chin).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
# FACE_LANDMARKS_LEFT_EYE / RIGHT_EYE: lower lid, then upper lid reversed (the lid margins).
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
# FACE_LANDMARKS_LEFT_EYEBROW / RIGHT_EYEBROW: lower edge (outer -> inner), upper edge reversed.
LEFT_BROW = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
RIGHT_BROW = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)
# FACE_LANDMARKS_LIPS, chains 3 and 4: the inner lip margins, i.e. the opening of the mouth.
INNER_MOUTH = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)

EYE_CENTRES = ((33, 133), (362, 263))   # corners of each eye, for the inter-ocular distance

AA_SHIFT = 2                            # fillPoly sub-pixel bits: vertices at 1/4 px


def inter_ocular(points: np.ndarray) -> float:
    """Distance between the two eye centres (mean of each eye's corners), in px: the face's scale."""
    p = np.asarray(points, dtype=np.float64)
    right = p[list(EYE_CENTRES[0])].mean(axis=0)
    left = p[list(EYE_CENTRES[1])].mean(axis=0)
    return float(np.linalg.norm(left - right))


def polygon_mask(shape: tuple[int, int], points: np.ndarray, loops, grow: float = 0.0) -> np.ndarray:
    """(H, W) float32 in 0..1: the union of the polygons `loops` (index tuples into `points`),
    anti-aliased, each grown outwards by `grow` px (negative: shrunk inwards)."""
    mask = np.zeros(shape, dtype=np.uint8)
    polys = [np.rint(np.asarray(points, dtype=np.float64)[list(loop)] * (1 << AA_SHIFT)).astype(np.int32)
             for loop in loops]
    cv2.fillPoly(mask, polys, 255, lineType=cv2.LINE_AA, shift=AA_SHIFT)
    if grow:
        # A stroke along the outline of width 2|grow| moves the edge by |grow| either way: a
        # dilation (or erosion) by a disc without a morphology pass over the whole image.
        thickness = max(1, int(round(2 * abs(grow))))
        cv2.polylines(mask, polys, True, 255 if grow > 0 else 0, thickness=thickness,
                      lineType=cv2.LINE_AA, shift=AA_SHIFT)
    return mask.astype(np.float32) * (1.0 / 255.0)

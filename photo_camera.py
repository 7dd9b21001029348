"""The fitted camera of a bundle as a Blender camera: pure numpy, no bpy (the importer applies it).

The bundle's camera (docs/bundle.md): a model-space point X (ICT cm) is Xc = R @ X + t in camera space
(+X right, +Y up, looking down -Z, as Blender's camera), and pixels are u = cx + f*Xc.x/-Xc.z,
v = cy - f*Xc.y/-Xc.z. The importer puts the head at `location` with Blender's axes:
P = location + 0.01 * A @ X, A = (x, y, z) -> (x, -z, y). Solving for the camera in the world:
Xc/100 = R @ A.T @ (P - location) + t/100, so the camera's world matrix has rotation A @ R.T and
position location - A @ R.T @ t/100. Intrinsics: a 36 mm wide sensor fitted horizontally,
lens = f * 36 / width, principal point as lens shift (Blender's shift is in units of the larger
image side; +shift_x moves the frame right, so the optical axis lands left of the centre).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ICT_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
SENSOR_WIDTH_MM = 36.0


@dataclass
class CameraSetup:
    matrix_world: np.ndarray   # (4, 4)
    lens_mm: float
    sensor_width_mm: float
    shift_x: float
    shift_y: float
    width: int
    height: int
    clip_start: float
    clip_end: float


def camera_setup(result: dict, location=(0.0, 0.0, 0.0)) -> CameraSetup:
    """The Blender camera that sees the head (at `location`) as the photo did. KeyError/ValueError when
    the bundle has no usable camera or pose."""
    cam, pose = result["camera"], result["pose"]
    r = np.asarray(pose["rotation"], dtype=np.float64).reshape(3, 3)
    t = np.asarray(pose["translation_cm"], dtype=np.float64).reshape(3) / 100.0
    w, h = int(cam["width"]), int(cam["height"])
    f, cx, cy = float(cam["focal_px"]), float(cam.get("cx", w / 2)), float(cam.get("cy", h / 2))
    if not (w > 0 and h > 0 and f > 0 and np.isfinite(r).all() and np.isfinite(t).all()):
        raise ValueError("the bundle's camera is not usable")
    rot = ICT_TO_BLENDER @ r.T
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = np.asarray(location, dtype=np.float64) - rot @ t
    side = max(w, h)
    dist = float(np.linalg.norm(t))
    return CameraSetup(m, f * SENSOR_WIDTH_MM / w, SENSOR_WIDTH_MM, (w / 2 - cx) / side, (cy - h / 2) / side,
                       w, h, max(0.01, dist / 20), dist * 20 + 1.0)


def project(setup: CameraSetup, points_world: np.ndarray) -> np.ndarray:
    """(N, 2) pixel coordinates (origin top-left, +v down) of world points through `setup`, as Blender's
    camera with that lens, sensor and shift draws them (for tests and for the overlay check)."""
    inv = np.linalg.inv(setup.matrix_world)
    pc = (inv[:3, :3] @ np.asarray(points_world, dtype=np.float64).T).T + inv[:3, 3]
    f_px = setup.lens_mm / setup.sensor_width_mm * setup.width
    side = max(setup.width, setup.height)
    u = setup.width / 2 - setup.shift_x * side + f_px * pc[:, 0] / -pc[:, 2]
    v = setup.height / 2 + setup.shift_y * side - f_px * pc[:, 1] / -pc[:, 2]
    return np.stack([u, v], axis=1)

"""The fitted photo lighting as a Blender world: spherical harmonics -> an equirectangular environment.
Pure numpy, no bpy (tested without Blender); operators/relight.py makes the world from it.

The backend fits 27 coefficients of the *shading* S(n) = E(n) / pi on camera-space normals
(backend/render.py: S(n) = sh_basis(n) @ sh, with the same basis and constants as below; this file cannot
import the backend, so the 9 functions are written out again). An environment of radiance L(w) lights a
Lambertian surface of albedo a to outgoing radiance a * E(n) / pi, and E's SH coefficients are
A_l * L_lm (Ramamoorthi & Hanrahan 2001; A = pi, 2 pi / 3, pi / 4), so the environment with
L_lm = pi * sh_lm / A_l renders, in Cycles or EEVEE, the shading the fit found.
"""
from __future__ import annotations

import numpy as np

SH_CONSTANTS = (0.282095, 0.488603, 1.092548, 0.315392, 0.546274)
BAND = np.array([0, 1, 1, 1, 2, 2, 2, 2, 2])
A_L = np.array([np.pi, 2.0 * np.pi / 3.0, np.pi / 4.0])

# ICT model space (cm, +Y up, face looking down +Z) -> Blender object space (+Z up, face looking down -Y).
ICT_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def sh_basis(n: np.ndarray) -> np.ndarray:
    """(..., 3) unit directions -> (..., 9), the order and constants of backend/render.py."""
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    c0, c1, c2, c3, c4 = SH_CONSTANTS
    return np.stack([np.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                     c3 * (3.0 * z * z - 1.0), c2 * x * z, c4 * (x * x - y * y)], axis=-1)


def radiance_coefficients(shading_sh: np.ndarray) -> np.ndarray:
    """(9, 3) shading coefficients -> (9, 3) radiance coefficients of the environment."""
    return np.asarray(shading_sh, np.float64) * (np.pi / A_L[BAND])[:, None]


def equirect_directions(width: int) -> np.ndarray:
    """(width / 2, width, 3) world directions of an equirectangular image's pixel centres, Blender's
    mapping (row 0 = top = +Z; u = -atan2(y, x) / 2 pi + 0.5)."""
    h = width // 2
    u = (np.arange(width) + 0.5) / width
    v = 1.0 - (np.arange(h) + 0.5) / h
    phi = -(u - 0.5) * 2.0 * np.pi            # atan2(y, x)
    theta = (v - 0.5) * np.pi                 # elevation
    ct = np.cos(theta)[:, None]
    return np.stack([ct * np.cos(phi)[None], ct * np.sin(phi)[None],
                     np.broadcast_to(np.sin(theta)[:, None], (h, width))], axis=-1)


def world_to_camera(pose_rotation: np.ndarray, object_rotation: np.ndarray) -> np.ndarray:
    """3x3 taking a Blender world direction to the fit's camera space: undo the object's rotation and the
    ICT->Blender axes, then apply the fitted pose R (camera = R @ model)."""
    return np.asarray(pose_rotation, np.float64) @ ICT_TO_BLENDER.T @ np.asarray(object_rotation, np.float64).T


def environment_image(shading_sh: np.ndarray, pose_rotation: np.ndarray, object_rotation: np.ndarray = np.eye(3),
                      width: int = 128) -> np.ndarray:
    """(width / 2, width, 3) float32 radiance (linear, >= 0) of the world that relights the head as in
    the photo. Band-limited: negative lobes of the truncated series are clamped to 0."""
    d = equirect_directions(width) @ world_to_camera(pose_rotation, object_rotation).T
    return np.clip(sh_basis(d) @ radiance_coefficients(shading_sh), 0.0, None).astype(np.float32)

"""Perspective camera with Blender's conventions (see docs/bundle.md, "Camera convention").

Camera space: +X right, +Y up, looking down -Z. Pixels: origin top-left, +v down.
A model point X maps to camera space by Xc = R @ X + t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Without EXIF, assume a 50 mm lens on a 36 mm wide (35 mm film) frame: typical of portraits.
DEFAULT_FOCAL_35MM = 50.0


def focal_px_from_35mm(focal_35mm: float, width: int, height: int) -> float:
    """Pixels per unit focal length: the 35 mm-equivalent focal length is defined on the diagonal."""
    diag_px = math.hypot(width, height)
    return focal_35mm / math.hypot(36.0, 24.0) * diag_px


@dataclass
class Intrinsics:
    focal_px: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def for_image(cls, width: int, height: int, focal_35mm: float | None = None) -> "Intrinsics":
        f35 = focal_35mm or DEFAULT_FOCAL_35MM
        return cls(focal_px_from_35mm(f35, width, height), width / 2.0, height / 2.0, width, height)

    def scaled(self, s: float) -> "Intrinsics":
        """The same camera for the image resized by s."""
        return Intrinsics(self.focal_px * s, self.cx * s, self.cy * s,
                          max(1, round(self.width * s)), max(1, round(self.height * s)))


def to_camera(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(..., 3) model points -> camera space."""
    return points @ rotation.transpose(-1, -2) + translation


def project(points_cam: torch.Tensor, k: Intrinsics) -> torch.Tensor:
    """(..., 3) camera-space points -> (..., 3) as (u px, v px, depth) with depth = -z > 0 in front."""
    depth = (-points_cam[..., 2]).clamp_min(1e-6)
    u = k.cx + k.focal_px * points_cam[..., 0] / depth
    v = k.cy - k.focal_px * points_cam[..., 1] / depth
    return torch.stack([u, v, depth], dim=-1)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable, safe at zero angle."""
    theta = torch.sqrt((aa * aa).sum() + 1e-12)
    kx, ky, kz = aa / theta
    zero = torch.zeros((), dtype=aa.dtype, device=aa.device)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero]).reshape(3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + torch.sin(theta) * kmat + (1 - torch.cos(theta)) * (kmat @ kmat)


def yaw_pitch_roll_deg(rotation) -> tuple[float, float, float]:
    """Head yaw (about +Y), pitch (about +X), roll (about +Z) of R = Ry(yaw) Rx(pitch) Rz(roll)."""
    r = [[float(rotation[i][j]) for j in range(3)] for i in range(3)]
    pitch = math.asin(max(-1.0, min(1.0, -r[1][2])))
    yaw = math.atan2(r[0][2], r[2][2])
    roll = math.atan2(r[1][0], r[1][1])
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)

"""Fitting v0: camera pose, identity and expression of ICT-FaceKit from 2D landmarks.

Perspective camera with a fixed focal length (EXIF or a 50 mm-equivalent default), rigid pose
initialised by PnP, identity with an N(0,1) prior, expression weights kept in [0, 1] and
initialised from MediaPipe's blendshape scores. The loss is a Wing loss on the reprojection of
MediaPipe's landmarks through a fixed landmark-to-surface correspondence (weights/). Contour
(face-oval) landmarks slide along the silhouette on a real face, so they get a low weight.
Only the ~1.4k vertices under the landmarks are evaluated inside the loop, so a fit takes a
fraction of a second on a CPU. No randomness: the same input gives the same fit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from .camera import Intrinsics, axis_angle_to_matrix, project, to_camera
from .facemodel import FaceModel
from .paths import WEIGHTS_DIR
from .threads import torch_threads

CORRESPONDENCE_PATH = WEIGHTS_DIR / "mediapipe_to_ict.npz"
# MediaPipe's outer eye corners (image-left eye 33, image-right eye 263): the inter-ocular distance.
OUTER_EYE_CORNERS = (33, 263)


@dataclass
class Correspondence:
    """Each MediaPipe landmark as a point on the ICT surface: barycentric coords in a triangle."""
    vertex_ids: np.ndarray  # (L, 3) int64
    bary: np.ndarray        # (L, 3) float32
    weight: np.ndarray      # (L,) float32: 0 = not used in fitting
    contour: np.ndarray     # (L,) bool: face-oval landmark (slides along the silhouette)

    @classmethod
    def load(cls, path: Path = CORRESPONDENCE_PATH) -> "Correspondence":
        d = np.load(path)
        return cls(d["vertex_ids"].astype(np.int64), d["bary"].astype(np.float32),
                   d["weight"].astype(np.float32), d["contour"].astype(bool))


@dataclass
class FitSettings:
    rigid_steps: int = 80
    full_steps: int = 250
    # Prior weights, chosen on rendered heads with known shape (bench --synthetic, seed 0) and on the
    # London neutral/smiling pairs: MediaPipe's points are a few % of the inter-ocular distance off,
    # and with weak priors identity and expression fit that noise (4.3 mm face error, worse than the
    # mean face's 3.2 mm). A sparse (L1) expression prior keeps noise out of the 53 expression
    # weights while real smiles still fit, so smiling and neutral photos give the same identity.
    identity_prior: float = 20.0     # weight of mean(alpha^2), alpha ~ N(0, 1)
    expression_prior: float = 10.0   # weight of mean(beta^2)
    expression_l1: float = 10.0      # weight of mean(beta) (beta >= 0): sparse expressions
    contour_weight: float = 0.3
    wing_w: float = 10.0             # Wing loss, in units where the inter-ocular distance is 64
    wing_eps: float = 2.0


@dataclass
class FitResult:
    rotation: torch.Tensor      # (3, 3) model -> camera
    translation: torch.Tensor   # (3,) cm
    identity: torch.Tensor      # (K_id,)
    expression: torch.Tensor    # (K_exp,) in [0, 1]
    intrinsics: Intrinsics
    projected: np.ndarray       # (L, 2) the model's landmarks in full-resolution pixels
    error_px: float             # mean distance over the landmarks with weight > 0
    error_iod: float            # error_px / inter-ocular distance
    landmarks_used: int
    losses: list = field(default_factory=list)


def wing_loss(r: torch.Tensor, w: float, eps: float) -> torch.Tensor:
    """Feng et al. 2018: log-shaped near zero (small errors matter), L1 for outliers."""
    c = w - w * math.log(1 + w / eps)
    a = r.abs()
    return torch.where(a < w, w * torch.log1p(a / eps), a - c)


def expression_init(model: FaceModel, blendshapes: dict[str, float]) -> np.ndarray:
    """MediaPipe's ARKit-style scores (e.g. eyeBlinkLeft, cheekPuff) -> ICT's names (eyeBlink_L, cheekPuff_L)."""
    out = np.zeros(model.num_expression, dtype=np.float32)
    for i, name in enumerate(model.expression_names):
        stem, side = (name[:-2], {"_L": "Left", "_R": "Right"}[name[-2:]]) if name[-2:] in ("_L", "_R") else (name, "")
        out[i] = blendshapes.get(stem + side, blendshapes.get(stem, 0.0))
    return np.clip(out, 0.0, 1.0)


def inter_ocular_px(points: np.ndarray) -> float:
    a, b = OUTER_EYE_CORNERS
    return float(np.linalg.norm(points[a] - points[b]))


class Adam:
    """Adam (Kingma & Ba) on a few small tensors. torch.optim's first step imports torch._dynamo,
    which costs 3-5 s here: longer than the whole fit, and uncancellable."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.999), eps=1e-8):
        self.groups, self.betas, self.eps, self.steps = groups, betas, eps, 0
        self.m = [[torch.zeros_like(p) for p in g["params"]] for g in groups]
        self.v = [[torch.zeros_like(p) for p in g["params"]] for g in groups]

    @torch.no_grad()
    def step(self, lr_scale: float) -> None:
        self.steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for g, ms, vs in zip(self.groups, self.m, self.v):
            for p, m, v in zip(g["params"], ms, vs):
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-g["lr"] * lr_scale)

    def zero_grad(self) -> None:
        """Also clears gradients that piled up while a parameter sat out an earlier stage."""
        for g in self.groups:
            for p in g["params"]:
                p.grad = None


def _optimise(stages, loss_fn, beta, cancel_check, progress) -> list[float]:
    """Adam with a cosine learning-rate decay (to 0.1%) per stage; expression weights projected into [0, 1]."""
    total, done, losses = sum(n for _, n in stages), 0, []
    for groups, steps in stages:
        opt = Adam(groups)
        for i in range(steps):
            opt.zero_grad()
            loss, _ = loss_fn()
            loss.backward()
            opt.step(0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * (i + 1) / steps)))
            with torch.no_grad():
                beta.clamp_(0.0, 1.0)
            losses.append(loss.item())
            done += 1
            if done % 25 == 0:
                if cancel_check:
                    cancel_check()
                if progress:
                    progress(done / total)
    return losses


def solve_pnp(object_points: np.ndarray, image_points: np.ndarray, k: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Rigid pose from 3D-2D pairs, returned in our camera convention (looking down -Z, +Y up)."""
    cam = np.array([[k.focal_px, 0, k.cx], [0, k.focal_px, k.cy], [0, 0, 1]], dtype=np.float64)
    ok, rvec, tvec = cv2.solvePnP(object_points.astype(np.float64), image_points.astype(np.float64),
                                  cam, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        rvec, tvec = np.zeros(3), np.array([0.0, 0.0, 100.0])
    r_cv, _ = cv2.Rodrigues(rvec)
    flip = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) -> ours
    return flip @ r_cv, flip @ tvec.reshape(3)


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(np.asarray(r, dtype=np.float64))
    return rvec.reshape(3)


def fit_landmarks(model: FaceModel, corr: Correspondence, points: np.ndarray, intrinsics: Intrinsics,
                  blendshapes: dict[str, float] | None = None, settings: FitSettings = FitSettings(),
                  cancel_check: Callable[[], None] | None = None,
                  progress: Callable[[float], None] | None = None, iod_px: float | None = None) -> FitResult:
    """Fit pose, identity and expression to 2D landmarks `points` (L, 2) in full-res pixels.
    `iod_px` (the inter-ocular distance) defaults to that of MediaPipe's 478 points."""
    dev = model.device
    used = corr.weight > 0
    target = torch.as_tensor(points, dtype=torch.float32, device=dev)
    weight = torch.as_tensor(np.where(corr.contour, settings.contour_weight, 1.0) * corr.weight,
                             dtype=torch.float32, device=dev)
    iod_px = max(iod_px or inter_ocular_px(points), 1e-3)
    scale = 64.0 / iod_px  # residuals in "IOD = 64" units, whatever the photo's resolution

    # Rigid initialisation: PnP of the mean face's landmarks (non-contour ones) against the detections.
    basis = model.surface_basis(corr.vertex_ids, corr.bary)
    beta0 = expression_init(model, blendshapes or {})
    alpha0 = torch.zeros(model.num_identity, device=dev)
    mean_pts = basis.points(alpha0, torch.as_tensor(beta0, device=dev)).cpu().numpy()
    sel = used & ~corr.contour
    r0, t0 = solve_pnp(mean_pts[sel], points[sel], intrinsics)

    aa = torch.tensor(matrix_to_axis_angle(r0), dtype=torch.float32, device=dev, requires_grad=True)
    t = torch.tensor(t0, dtype=torch.float32, device=dev, requires_grad=True)
    alpha = alpha0.clone().requires_grad_(True)
    beta = torch.tensor(beta0, device=dev, requires_grad=True)
    n_used = float(weight.gt(0).sum())

    def loss_fn():
        uv = project(to_camera(basis.points(alpha, beta), axis_angle_to_matrix(aa), t), intrinsics)[:, :2]
        r = (uv - target).norm(dim=-1) * scale
        data = (wing_loss(r, settings.wing_w, settings.wing_eps) * weight).sum() / n_used
        prior = settings.identity_prior * (alpha ** 2).mean() + settings.expression_prior * (beta ** 2).mean() + settings.expression_l1 * beta.mean()
        return data + prior, uv

    stages = [
        ([{"params": [aa], "lr": 0.01}, {"params": [t], "lr": 0.5}], settings.rigid_steps),
        ([{"params": [aa], "lr": 0.005}, {"params": [t], "lr": 0.25}, {"params": [alpha], "lr": 0.05},
          {"params": [beta], "lr": 0.02}], settings.full_steps),
    ]
    # The loop is thousands of tiny ops: one CPU thread avoids OpenMP hand-off costs (3-8x faster here).
    with torch_threads(1 if dev.type == "cpu" else torch.get_num_threads()):
        losses = _optimise(stages, loss_fn, beta, cancel_check, progress)

    with torch.no_grad():
        _, uv = loss_fn()
        uv = uv.cpu().numpy()
    err = np.linalg.norm(uv - points, axis=1)
    error_px = float(err[used].mean())
    return FitResult(axis_angle_to_matrix(aa.detach()), t.detach(), alpha.detach(), beta.detach(), intrinsics,
                     uv, error_px, error_px / iod_px, int(used.sum()), losses)

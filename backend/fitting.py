"""Fitting: camera pose, identity and expression of ICT-FaceKit as a list of weighted loss terms.

The fit is made of three parts that are each replaceable:
- Parameters (`Param`), each with its own constraint applied after every step: the rigid pose (axis-
  angle rotation, translation in cm), identity coefficients (N(0, 1) prior, unconstrained), expression
  weights (kept in [0, 1]); later stages add lighting and albedo.
- Loss terms (`Term`): a name, a weight and a function of the step's `FitContext` (what the
  parameters make: landmark points on the surface, their projection, ...). The landmark Wing term is
  one term; the priors are terms; a photometric term renders through backend/render.py.
- Stages: which parameters move, at which learning rate, for how many Adam steps (cosine decay).

v1's terms: a Wing loss on the reprojection of MediaPipe's landmarks through a fixed landmark-to-surface
correspondence (weights/), with contour (face-oval) landmarks at a low weight because they slide along
the silhouette on a real face; an N(0, 1) identity prior; L2 and L1 (sparse) expression priors.
Perspective camera with a fixed focal length (EXIF or a 50 mm-equivalent default), rigid pose
initialised by PnP, expression initialised from MediaPipe's blendshape scores. Only the ~1.4k
vertices under the landmarks are evaluated inside the loop, so a fit takes a fraction of a second
on a CPU. No randomness: the same input gives the same fit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from .camera import Intrinsics, axis_angle_to_matrix, project, to_camera
from .facemodel import FaceModel, SurfaceBasis
from .paths import CORRESPONDENCE_PATH
from .scene import Hooks, SceneFit
from .threads import torch_threads

# MediaPipe's outer eye corners (image-left eye 33, image-right eye 263): the inter-ocular distance.
OUTER_EYE_CORNERS = (33, 263)


@dataclass
class Correspondence:
    """Each MediaPipe landmark as a point on the ICT surface: barycentric coords in a triangle."""
    vertex_ids: np.ndarray  # (L, 3) int64
    bary: np.ndarray        # (L, 3) float32
    weight: np.ndarray      # (L,) float32: 0 = not used in fitting
    contour: np.ndarray     # (L,) bool: face-oval landmark (slides along the silhouette)
    sha256: str = ""        # of the file it was loaded from (provenance in result.json)

    @classmethod
    def load(cls, path: Path = CORRESPONDENCE_PATH) -> "Correspondence":
        data = Path(path).read_bytes()
        d = np.load(io.BytesIO(data))
        return cls(d["vertex_ids"].astype(np.int64), d["bary"].astype(np.float32),
                   d["weight"].astype(np.float32), d["contour"].astype(bool), hashlib.sha256(data).hexdigest())

    def on_surface(self, per_vertex):
        """(L, ...) a per-vertex array (positions, normals; numpy, or torch on its device) at the landmarks'
        surface points: the barycentric blend of their triangles' corners."""
        ids, bary = self.vertex_ids, self.bary
        if isinstance(per_vertex, torch.Tensor):
            ids = torch.as_tensor(ids, device=per_vertex.device)
            bary = torch.as_tensor(bary, dtype=per_vertex.dtype, device=per_vertex.device)
        return (per_vertex[ids] * bary[..., None]).sum(1)


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
    sliding_contour: bool = True     # lateral face-oval landmarks follow the silhouette (ContourSlider)
    wing_w: float = 10.0             # Wing loss, in units where the inter-ocular distance is 64
    wing_eps: float = 2.0
    # Learning rates: (rigid stage, full stage) for rotation (rad) and translation (cm); identity and
    # expression move in the full stage only.
    lr_rotation: tuple[float, float] = (0.01, 0.005)
    lr_translation: tuple[float, float] = (0.5, 0.25)
    lr_identity: float = 0.05
    lr_expression: float = 0.02
    # MediaPipe's error on rendered heads of known shape (docs/fitting.md) is about 0.05 of the inter-ocular
    # distance where a landmark's surface point faces the camera and twice that where it is turned away: the
    # detector guesses what it cannot see. Such landmarks, and those that graze the view, weigh less.
    hidden_landmark_weight: float = 0.25
    hidden_landmark_cos: float = -0.4   # "hidden": cos(surface normal, view ray) above this (0 = grazing)


# ---------------------------------------------------------------------------------------------
# Parameters, context, terms


@dataclass
class Param:
    """One optimised tensor and the constraint that keeps it valid (applied in place after each step)."""
    value: torch.Tensor
    constrain: Callable[[torch.Tensor], None] | None = None


def clamp_unit(x: torch.Tensor) -> None:
    x.clamp_(0.0, 1.0)


class ContourSlider:
    """Face-oval landmarks that slide along the silhouette. On a turned head the outline of the far cheek
    is wherever the surface turns away from the camera, not a fixed point of the mesh: for each lateral
    oval landmark, the candidates are the face vertices at its height on its side (a band on the neutral
    head); while its fixed surface point faces away or grazes the view, the landmark is the visible
    candidate closest to grazing (the silhouette) instead."""

    BAND_CM = 0.45           # half-height of a landmark's band of candidates (neutral head)
    MIDLINE_CM = 2.0         # oval points closer to the midline (chin, forehead top) do not slide
    GRAZE = 0.25             # slide while the fixed point's cos(normal, view) is above -GRAZE
    MAX_CANDIDATES = 32      # per landmark

    def __init__(self, model: FaceModel, corr: Correspondence):
        from .facemodel import NARROW_FACE_LAST_VERTEX
        from .render import vertex_normals
        verts = model.neutral.cpu().numpy()
        tris = torch.from_numpy(model.topology.triangles)
        normals = vertex_normals(model.neutral.cpu(), tris).numpy()
        fixed, fixed_n = corr.on_surface(verts), corr.on_surface(normals)
        face = np.arange(NARROW_FACE_LAST_VERTEX + 1)
        ids, bands = [], []
        for j in np.flatnonzero(corr.contour & (corr.weight > 0)):
            x, y = fixed[j, 0], fixed[j, 1]
            if abs(x) < self.MIDLINE_CM:
                continue
            band = face[(np.abs(verts[face, 1] - y) < self.BAND_CM) & (np.sign(verts[face, 0]) == np.sign(x))
                        & (np.abs(verts[face, 0]) > abs(x) - 3.0)]
            if len(band) >= 3:
                # At most MAX_CANDIDATES, evenly spaced across the cheek (sorted by |x|): the outline moves
                # smoothly, and every candidate costs a basis row at every step of the fit.
                band = band[np.argsort(np.abs(verts[band, 0]))]
                band = band[np.unique(np.linspace(0, len(band) - 1, min(len(band), self.MAX_CANDIDATES)).round().astype(int))]
                ids.append(j)
                bands.append(band)
        width = max(len(b) for b in bands)
        cand = np.stack([np.pad(b, (0, width - len(b)), mode="edge") for b in bands])   # (J, C)
        dev = model.device
        self.landmarks = torch.as_tensor(np.array(ids), device=dev)
        self.candidates = torch.as_tensor(cand, device=dev)
        flat = cand.reshape(-1)
        self.basis = model.surface_basis(np.repeat(flat[:, None], 3, 1), np.tile([1.0, 0.0, 0.0], (len(flat), 1)))
        self.normals = torch.as_tensor(normals[flat], dtype=torch.float32, device=dev)     # (J*C, 3) model space
        self.fixed_normals = torch.as_tensor(fixed_n[ids], dtype=torch.float32, device=dev)

    def replace(self, ctx: "FitContext", points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-space landmark points (L, 3) with the sliding ones moved to the silhouette."""
        rot = ctx.rotation()
        cand = to_camera(self.basis.points(ctx["identity"], ctx["expression"]), rot, ctx["translation"])
        with torch.no_grad():
            J, C = self.candidates.shape
            view = torch.nn.functional.normalize(cand, dim=1)
            cos = ((self.normals @ rot.T) * view).sum(1).view(J, C)
            fixed = points_cam.index_select(0, self.landmarks)
            fixed_cos = ((self.fixed_normals @ rot.T) * torch.nn.functional.normalize(fixed, dim=1)).sum(1)
            grazing = torch.where(cos < 0, cos, torch.full_like(cos, -2.0)).argmax(1)        # visible, closest to 0
            slide = (fixed_cos > -self.GRAZE) & (cos < 0).any(1)
        chosen = cand.view(J, C, 3)[torch.arange(J, device=cand.device), grazing]
        moved = torch.where(slide[:, None], chosen, fixed)
        return points_cam.index_copy(0, self.landmarks, moved)


class FitContext:
    """What the loss terms see at one step: the parameters and, computed once and shared, what they make."""

    def __init__(self, params: dict[str, Param], basis: SurfaceBasis, intrinsics: Intrinsics,
                 slider: ContourSlider | None = None):
        self.params = params
        self.basis = basis
        self.intrinsics = intrinsics
        self.slider = slider
        self._memo: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.params[name].value

    def once(self, key: str, make: Callable[[], object]):
        """What `make()` returns, computed once per step (terms share renders, projections)."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def rotation(self) -> torch.Tensor:
        return self.once("rotation", lambda: axis_angle_to_matrix(self["rotation"]))

    def landmarks_model(self) -> torch.Tensor:
        """(L, 3) the landmark surface points in model space (cm)."""
        return self.once("landmarks", lambda: self.basis.points(self["identity"], self["expression"]))

    def landmarks_px(self) -> torch.Tensor:
        """(L, 2) the landmark surface points projected into the photo (full-resolution px); with a slider,
        the lateral face-oval landmarks follow the silhouette."""
        def make():
            cam = to_camera(self.landmarks_model(), self.rotation(), self["translation"])
            if self.slider is not None:
                cam = self.slider.replace(self, cam)
            return project(cam, self.intrinsics)[:, :2]
        return self.once("landmarks_px", make)


@dataclass
class Term:
    """A weighted loss term: weight * value(context)."""
    name: str
    weight: float
    value: Callable[[FitContext], torch.Tensor]


def wing_loss(r: torch.Tensor, w: float, eps: float) -> torch.Tensor:
    """Feng et al. 2018: log-shaped near zero (small errors matter), L1 for outliers; continuous at |r| = w."""
    c = w - w * math.log(1 + w / eps)
    a = r.abs()
    return torch.where(a < w, w * torch.log1p(a / eps), a - c)


def landmark_wing_term(target_px: torch.Tensor, weight: torch.Tensor, iod_px: float, w: float, eps: float,
                       term_weight: float = 1.0) -> Term:
    """Wing loss of the landmark reprojection error, in units where the inter-ocular distance is 64
    (whatever the photo's resolution), weighted per landmark, averaged over the landmarks used."""
    scale = 64.0 / max(iod_px, 1e-3)
    n_used = float(weight.gt(0).sum().clamp_min(1))

    def value(ctx: FitContext) -> torch.Tensor:
        r = (ctx.landmarks_px() - target_px).norm(dim=-1) * scale
        return (wing_loss(r, w, eps) * weight).sum() / n_used
    return Term("landmarks", term_weight, value)


def mean_square_term(name: str, param: str, weight: float) -> Term:
    """mean(x^2) of a parameter: the N(0, 1) prior of identity coefficients, an L2 prior elsewhere."""
    return Term(name, weight, lambda ctx: ctx[param].square().mean())


def mean_term(name: str, param: str, weight: float) -> Term:
    """mean(x) of a non-negative parameter: an L1 (sparsity) prior."""
    return Term(name, weight, lambda ctx: ctx[param].mean())


@dataclass
class Stage:
    name: str
    steps: int
    lrs: dict[str, float]   # parameter name -> learning rate; parameters not named stay fixed


# ---------------------------------------------------------------------------------------------
# The optimiser


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


def cosine_lr(i: int, steps: int) -> float:
    """Learning-rate scale of step i (0-based) of `steps`: cosine decay to 0.1%."""
    return 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * (i + 1) / steps))


def optimise(params: dict[str, Param], terms: list[Term], stages: list[Stage],
             context: Callable[[], FitContext], hooks: Hooks) -> list[float]:
    """Run the stages: per step, the weighted sum of the terms, one Adam step on the stage's parameters,
    then each parameter's constraint. Returns the total loss per step."""
    total, done, losses = sum(s.steps for s in stages), 0, []
    for stage in stages:
        opt = Adam([{"params": [params[name].value], "lr": lr} for name, lr in stage.lrs.items()])
        for i in range(stage.steps):
            opt.zero_grad()
            ctx = context()
            loss = sum(t.weight * t.value(ctx) for t in terms)
            loss.backward()
            opt.step(cosine_lr(i, stage.steps))
            with torch.no_grad():
                for p in params.values():
                    if p.constrain is not None:
                        p.constrain(p.value)
            losses.append(loss.item())
            done += 1
            hooks.cancel_check()   # every step: 25 joint photometric steps take over a second
            if done % 25 == 0:
                hooks.progress(done / max(total, 1))
    return losses


def term_values(terms: list[Term], ctx: FitContext) -> dict[str, dict[str, float]]:
    with torch.no_grad():
        return {t.name: {"weight": t.weight, "value": float(t.value(ctx))} for t in terms}


# ---------------------------------------------------------------------------------------------
# Initialisation


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


def frontal_inter_ocular_px(landmarks_model: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor,
                            intrinsics: Intrinsics) -> float:
    """The inter-ocular distance (px) the fitted head would show facing the camera at its distance: the focal
    length times the 3D outer-eye-corner distance over the depth of their midpoint. The projected distance
    shrinks as the head turns (about cos(yaw): a sixth at 80 degrees), while the landmark residual does not
    (the far side's landmarks are guesses), so residuals over the projected distance call every profile a
    failed fit; over this one they mean the same at every yaw (and nearly the same as the projected
    distance's for a frontal face)."""
    a, b = OUTER_EYE_CORNERS
    pa, pb = landmarks_model[a], landmarks_model[b]
    depth = -to_camera(((pa + pb) / 2)[None], rotation, translation)[0, 2]
    return float(intrinsics.focal_px * (pa - pb).norm() / depth.clamp_min(1e-6))


_CV_TO_OURS = np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) <-> ours (y up, looking down -Z)


def facing_pose(object_points: np.ndarray, image_points: np.ndarray, k: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """A pose that faces the camera, upright (R = I: the model's face looks down +Z, at our camera), at
    the distance where the points' spread matches, centred on the image points: PnP's fallback."""
    extent_model = float(np.ptp(object_points[:, :2], axis=0).max())
    extent_image = float(np.ptp(image_points, axis=0).max())
    depth = k.focal_px * extent_model / max(extent_image, 1e-6)
    cu, cv_ = image_points.mean(0)
    centre = object_points.mean(0)
    target = np.array([(cu - k.cx) * depth / k.focal_px, -(cv_ - k.cy) * depth / k.focal_px, -depth])
    return np.eye(3), target - centre


def solve_pnp(object_points: np.ndarray, image_points: np.ndarray, k: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Rigid pose from 3D-2D pairs, returned in our camera convention (looking down -Z, +Y up)."""
    cam = np.array([[k.focal_px, 0, k.cx], [0, k.focal_px, k.cy], [0, 0, 1]], dtype=np.float64)
    try:
        ok, rvec, tvec = cv2.solvePnP(object_points.astype(np.float64), image_points.astype(np.float64),
                                      cam, None, flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        ok = False
    if not ok or not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        return facing_pose(object_points, image_points, k)
    r_cv, _ = cv2.Rodrigues(rvec)
    return _CV_TO_OURS @ r_cv, _CV_TO_OURS @ tvec.reshape(3)


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(np.asarray(r, dtype=np.float64))
    return rvec.reshape(3)


# ---------------------------------------------------------------------------------------------
# The landmark fit


_SLIDERS: dict = {}


def contour_slider(model: FaceModel, corr: Correspondence) -> ContourSlider:
    key = (model.hash, str(model.device), corr.sha256)
    if key not in _SLIDERS:
        _SLIDERS[key] = ContourSlider(model, corr)
    return _SLIDERS[key]


def landmark_visibility_weights(model: FaceModel, corr: Correspondence, vertices: torch.Tensor,
                                rotation: torch.Tensor, translation: torch.Tensor, settings: FitSettings) -> np.ndarray:
    """(L,) per-landmark weights for a head (vertices, model space) at a pose: `hidden_landmark_weight` where
    the landmark's surface point faces away from the camera or grazes the view (cos(normal, view ray) above
    `hidden_landmark_cos`), 1 elsewhere. Face-oval landmarks keep 1: they slide to the silhouette instead
    (ContourSlider). Computed once per fit from its starting head, not per step."""
    from .render import vertex_normals
    with torch.no_grad():
        normals = vertex_normals(vertices, torch.as_tensor(model.topology.triangles, device=vertices.device))
        points = to_camera(corr.on_surface(vertices), rotation, translation)
        normal = corr.on_surface(normals) @ rotation.T
        cos = (normal * torch.nn.functional.normalize(points, dim=1)).sum(1).cpu().numpy()
    hidden = (cos > settings.hidden_landmark_cos) & ~corr.contour
    return np.where(hidden, settings.hidden_landmark_weight, 1.0).astype(np.float32)


def landmark_terms(corr: Correspondence, points: np.ndarray, iod_px: float, settings: FitSettings,
                   device, visibility: np.ndarray | None = None) -> list[Term]:
    """The landmark term (per-landmark weights: the correspondence's, the contour's, `visibility`'s) and the
    identity and expression priors."""
    target = torch.as_tensor(points, dtype=torch.float32, device=device)
    weight = np.where(corr.contour, settings.contour_weight, 1.0) * corr.weight
    if visibility is not None:
        weight = weight * visibility
    weight = torch.as_tensor(weight, dtype=torch.float32, device=device)
    return [landmark_wing_term(target, weight, iod_px, settings.wing_w, settings.wing_eps),
            mean_square_term("identity_prior", "identity", settings.identity_prior),
            mean_square_term("expression_prior", "expression", settings.expression_prior),
            mean_term("expression_sparsity", "expression", settings.expression_l1)]


def landmark_stages(settings: FitSettings) -> list[Stage]:
    return [Stage("rigid", settings.rigid_steps, {"rotation": settings.lr_rotation[0],
                                                  "translation": settings.lr_translation[0]}),
            Stage("full", settings.full_steps, {"rotation": settings.lr_rotation[1],
                                                "translation": settings.lr_translation[1],
                                                "identity": settings.lr_identity,
                                                "expression": settings.lr_expression})]


def fit_landmarks(model: FaceModel, corr: Correspondence, points: np.ndarray, intrinsics: Intrinsics,
                  blendshapes: dict[str, float] | None = None, settings: FitSettings = FitSettings(),
                  hooks: Hooks | None = None, iod_px: float | None = None) -> SceneFit:
    """Fit pose, identity and expression to 2D landmarks `points` (L, 2) in full-res pixels.
    `iod_px` (the inter-ocular distance) defaults to that of MediaPipe's 478 points."""
    hooks = hooks or Hooks()
    dev = model.device
    used = corr.weight > 0
    iod_px = max(iod_px or inter_ocular_px(points), 1e-3)

    # Rigid initialisation: PnP of the mean face's landmarks (non-contour ones) against the detections.
    basis = model.surface_basis(corr.vertex_ids, corr.bary)
    beta0 = expression_init(model, blendshapes or {})
    alpha0 = torch.zeros(model.num_identity, device=dev)
    mean_pts = basis.points(alpha0, torch.as_tensor(beta0, device=dev)).cpu().numpy()
    sel = used & ~corr.contour
    r0, t0 = solve_pnp(mean_pts[sel], points[sel], intrinsics)

    def leaf(x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev).clone().requires_grad_(True)
    params = {"rotation": Param(leaf(matrix_to_axis_angle(r0))), "translation": Param(leaf(t0)),
              "identity": Param(leaf(alpha0.cpu().numpy())), "expression": Param(leaf(beta0), clamp_unit)}
    # Which landmarks the detector could see, judged on the mean face at the PnP pose.
    visibility = landmark_visibility_weights(model, corr, model.vertices(alpha0, torch.as_tensor(beta0, device=dev)),
                                             torch.as_tensor(r0, dtype=torch.float32, device=dev),
                                             torch.as_tensor(t0, dtype=torch.float32, device=dev), settings)
    terms = landmark_terms(corr, points, iod_px, settings, dev, visibility)
    stages = landmark_stages(settings)

    slider = contour_slider(model, corr) if settings.sliding_contour else None

    def context() -> FitContext:
        return FitContext(params, basis, intrinsics, slider)

    # The loop is thousands of tiny ops: one CPU thread avoids OpenMP hand-off costs (3-8x faster here).
    with torch_threads(1 if dev.type == "cpu" else torch.get_num_threads()):
        losses = optimise(params, terms, stages, context, hooks)

    ctx = context()
    with torch.no_grad():
        uv = ctx.landmarks_px().cpu().numpy()
        identity, expression = ctx["identity"].detach(), ctx["expression"].detach()
        basis_vertices = model.vertices(identity)
        vertices = model.vertices(identity, expression)
    err = np.linalg.norm(uv - points, axis=1)
    error_px = float(err[used].mean())
    with torch.no_grad():
        frontal_px = frontal_inter_ocular_px(ctx.landmarks_model(), ctx.rotation(), ctx["translation"], intrinsics)
    metrics = {"landmark_error_px": error_px, "landmark_error_iod": error_px / iod_px,
               "landmark_error_frontal_iod": error_px / max(frontal_px, 1e-3),
               "landmarks_used": int(used.sum()), "landmarks_hidden": int((visibility < 1)[used].sum()),
               "final_loss": losses[-1] if losses else None}
    recorded = {"method": "landmarks", **dataclasses.asdict(settings),
                "stages": [dataclasses.asdict(s) for s in stages]}
    return SceneFit(intrinsics, ctx.rotation().detach(), ctx["translation"].detach(), identity, expression,
                    vertices, basis_vertices, uv, metrics, recorded, term_values(terms, ctx))

"""Photometric fitting: spherical-harmonics lighting, skin albedo and the head's geometry from the photo's
pixels, on top of the landmark fit (the multi-level loss of weakly supervised 3DMM fitting).

The face skin of the fitted head is rendered into a crop of the photo (render.py: fixed-id rasterization,
differentiable barycentrics), coloured by the albedo model (albedo.py) sampled through the UVs and shaded
by 27 SH coefficients (render.sh_shading, camera-space normals), and compared with the photo in linear
light, inside the skin mask (segmentation.py: no hair, brows, eyes, inner mouth, background), under a
robust (Cauchy) loss, so that what no mask names (hands, glasses, a microphone, a specular highlight)
drops out as an outlier instead of bending the light; a channel the photo clipped at its 8-bit ceiling
only bounds the prediction from below (censored_residual). Terms: landmarks (Wing, as in the landmark fit),
photometric, and priors on identity, expression, albedo coefficients and the lighting (smooth, of one
colour, and nowhere negative: light_positive_term).
Coarse to fine: lighting and albedo first on a small crop with the geometry fixed (one raster for all
steps), then everything together on a larger crop.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import render
from .albedo import AlbedoModel
from .camera import Intrinsics
from .colour import SRGB8_CLIPPED, SRGB8_TO_LINEAR
from .facemodel import NARROW_FACE_LAST_VERTEX, PART_NAMES, FaceModel
from .fitting import (Correspondence, FitContext, FitSettings, Param, Stage, Term, clamp_unit, contour_slider,
                      frontal_inter_ocular_px, inter_ocular_px, landmark_terms, landmark_visibility_weights,
                      matrix_to_axis_angle, optimise, term_values)
from .scene import Hooks, Observation, SceneFit
from .texture import linear_resampled
from .threads import idle_cpu_threads, torch_threads


@dataclass
class PhotometricSettings:
    coarse_size: int = 128       # px, longest side of the crop for lighting and albedo
    fine_size: int = 224         # px, for the joint stage
    light_steps: int = 60
    joint_steps: int = 100
    crop_margin: float = 0.12    # around the landmarks' box, x its size
    robust_sigma: float = 0.04   # Cauchy scale of the colour residual (linear light, RGB distance)
    photo_weight: float = 100.0  # photometric term vs the landmark term (IOD = 64 units)
    albedo_prior: float = 0.5    # weight of mean(c^2), c ~ N(0, 1)
    light_prior: float = 0.05    # weight of mean(sh[4:9]^2) relative to the DC term (smooth light)
    light_colour_prior: float = 20.0  # weight of the spread of the channels' directional terms (one colour)
    light_positive_prior: float = 1000.0  # weight of the shading's negative part over the sphere (light_positive_term)
    identity_weight: float = 0.0  # weight of the face-descriptor distance (dlib's same-person threshold: 0.6)
    part_weight: float = 0.0      # weight of the part re-projection distance (inter-ocular units)
    lr_lighting: float = 0.05
    lr_albedo: float = 0.1
    lr_rotation: float = 0.002
    lr_translation: float = 0.05
    lr_identity: float = 0.3
    lr_expression: float = 0.02


@dataclass
class Crop:
    """A region of the photo, resampled in linear light, with its skin weight and camera."""
    image: torch.Tensor          # (h, w, 3) linear
    skin: torch.Tensor           # (h, w) 0..1
    intrinsics: Intrinsics       # of the crop
    box: tuple[int, int, int, int]  # photo px (x0, y0, x1, y1)
    clipped: torch.Tensor        # (h, w, 3) 0..1 per channel: the share of its photo pixels at the 8-bit ceiling

    def at(self, pixel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Photo colour (N, 3), skin weight (N,) and clipped share (N, 3) at flat crop pixel indices."""
        return self.image.reshape(-1, 3)[pixel], self.skin.reshape(-1)[pixel], self.clipped.reshape(-1, 3)[pixel]


def crop_points(obs: Observation, crop: Crop) -> torch.Tensor:
    """The detected landmarks in the crop's pixels."""
    k, kc = obs.intrinsics, crop.intrinsics
    s = kc.focal_px / k.focal_px
    pts = (obs.detection.points - np.array([crop.box[0], crop.box[1]])) * s
    return torch.as_tensor(pts, dtype=torch.float32, device=crop.image.device)


def face_box(obs: Observation, margin: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = obs.detection.box
    m = margin * max(x1 - x0, y1 - y0)
    W, H = obs.photo.width, obs.photo.height
    return (max(0, int(x0 - m)), max(0, int(y0 - m)), min(W, int(math.ceil(x1 + m))), min(H, int(math.ceil(y1 + m))))


def make_crop(obs: Observation, box: tuple[int, int, int, int], side: int, device) -> Crop:
    x0, y0, x1, y1 = box
    s = side / max(x1 - x0, y1 - y0)
    w, h = max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))
    lin, clipped = (cv2.resize(linear_resampled(obs.photo.rgb, 1.0 / s, box, lut)[0], (w, h),
                               interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
                    for lut in (SRGB8_TO_LINEAR, SRGB8_CLIPPED))
    masks = obs.masks
    if masks is not None and getattr(masks, "skin", None) is not None:
        ms = masks.scale
        # crop pixel centre (i + 0.5) -> photo x0 + (i + 0.5) / s -> mask (x) * ms, as a remap.
        xs = ((np.arange(w) + 0.5) / s + x0) * ms - 0.5
        ys = ((np.arange(h) + 0.5) / s + y0) * ms - 0.5
        mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        skin = cv2.remap(masks.skin, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    else:
        skin = np.ones((h, w), np.float32)
    k = obs.intrinsics
    kc = Intrinsics(k.focal_px * s, (k.cx - x0) * s, (k.cy - y0) * s, w, h)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)  # noqa: E731
    return Crop(t(lin), t(skin), kc, box, t(clipped))


class FaceSkin:
    """The narrow face's skin triangles as their own small mesh: a sub-basis of the model for just their
    vertices (4x fewer than the whole head), their corner UVs (tile 1001) and the triangles."""

    def __init__(self, model: FaceModel):
        topo = model.topology
        tri_part = topo.polygon_part[topo.triangle_polygon]
        tri_tile = np.floor(topo.triangle_uvs[:, :, 0].min(1)).astype(np.int64) + 1001
        keep = (tri_part == PART_NAMES.index("skin")) & (topo.triangles.max(1) <= NARROW_FACE_LAST_VERTEX) \
            & (tri_tile == 1001)
        tris = topo.triangles[keep]
        used = np.unique(tris)
        remap = np.full(model.num_vertices, -1, np.int64)
        remap[used] = np.arange(len(used))
        dev = model.device
        idx = torch.from_numpy(used).to(dev)
        self.vertex_ids = used
        self.vertex_map = remap                                      # model vertex -> index here (-1: not here)
        self.triangles = torch.from_numpy(remap[tris]).to(dev)
        self.corner_uvs = torch.from_numpy(topo.triangle_uvs[keep].astype(np.float32)).to(dev)  # (T, 3, 2)
        self.neutral = model.neutral.index_select(0, idx)
        self.identity = model.identity.index_select(1, idx).reshape(model.num_identity, -1)
        self.expression = model.expression.index_select(1, idx).reshape(model.num_expression, -1)

    def vertices(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        return self.neutral + (identity @ self.identity + expression @ self.expression).view(-1, 3)


@dataclass
class Drawn:
    """The face skin rendered into a crop: per covered pixel its colour, normal, UV and weights."""
    pixel: torch.Tensor
    normal: torch.Tensor   # (N, 3) unit, camera space
    uv: torch.Tensor       # (N, 2) UDIM
    photo: torch.Tensor    # (N, 3) linear
    skin: torch.Tensor     # (N,)
    raster: render.Raster
    clipped: torch.Tensor  # (N, 3) 0..1 (Crop.clipped)


def draw(skin: FaceSkin, crop: Crop, vertices: torch.Tensor, rotation: torch.Tensor,
         translation: torch.Tensor, raster: render.Raster | None = None) -> Drawn:
    """The skin in the crop; with `raster` (from a recent step) only the barycentrics are recomputed for
    its pixel -> triangle assignment, which holds while the head moves a fraction of a pixel per step."""
    cam = render.to_camera(vertices, rotation, translation)
    screen = render.project(cam, crop.intrinsics)
    r = raster if raster is not None else render.rasterize(
        screen, skin.triangles, crop.intrinsics.height, crop.intrinsics.width, cull_backfaces=True)
    frags = render.fragments(r, screen if vertices.requires_grad or rotation.requires_grad else None)
    normal = F.normalize(render.interpolate(frags, render.vertex_normals(cam, skin.triangles)), dim=1)
    uv = render.interpolate(frags, skin.corner_uvs)
    photo, weight, clipped = crop.at(frags.pixel)
    return Drawn(frags.pixel, normal, uv, photo, weight, r, clipped)


def censored_residual(pred: torch.Tensor, photo: torch.Tensor, clipped: torch.Tensor) -> torch.Tensor:
    """pred - photo per channel, where a clipped channel counts only while the prediction is darker than
    the photo: the scene was at least as bright as a clipped value, by how much is unknown. Without it an
    over-exposed face (a phone photo's red channel pinned at 255 over half the skin) reads as flatter
    light than it had and leaves the light in the de-lit map."""
    r = pred - photo
    return r - clipped * r.clamp_min(0.0)


def cauchy(residual: torch.Tensor, sigma: float) -> torch.Tensor:
    """log(1 + |r|^2 / sigma^2) per pixel: quadratic for small errors, logarithmic for outliers."""
    return torch.log1p(residual.square().sum(-1) / (sigma * sigma))


def albedo_at(albedo_model: AlbedoModel | None, uv: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """(N, 3): the model's albedo at the UVs, or a constant colour (coeffs (3,)) without a model."""
    if albedo_model is None:
        return coeffs.expand(len(uv), 3)
    return albedo_model.sample(uv, coeffs)


def least_squares_lighting(photo: torch.Tensor, albedo: torch.Tensor, normals: torch.Tensor,
                           weight: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """SH lighting (9, 3) minimising sum w |photo - albedo * sh_basis(n) @ sh|^2 per channel (closed form)."""
    y = render.sh_basis(normals.double())                     # (N, 9)
    w = weight.double()[:, None]
    out = []
    for c in range(3):
        a = y * albedo[:, c:c + 1].double()
        # The ridge keeps the system solvable when no pixel is skin (a fit that landed off the face).
        lhs = a.T @ (a * w) + ridge * max(float(w.sum()), 1.0) * torch.eye(9, dtype=torch.float64, device=a.device)
        out.append(torch.linalg.solve(lhs, a.T @ (w[:, 0] * photo[:, c].double())))
    return torch.stack(out, 1).float()


RASTER_EVERY = 5  # steps between rasterizations while the geometry moves


class CropRenderer:
    """The textured face skin in one crop, drawn once per step and shared by the terms that need it
    (photometric, identity): re-rasterized every RASTER_EVERY steps while the geometry moves, or never
    (`fixed`) while it is held still."""

    def __init__(self, skin: FaceSkin, crop: Crop, albedo_model: AlbedoModel | None, fixed: Drawn | None = None):
        self.skin, self.crop, self.albedo_model, self.fixed = skin, crop, albedo_model, fixed
        self._steps, self._raster = 0, None

    def drawn(self, ctx: FitContext) -> tuple[Drawn, torch.Tensor]:
        """(the drawn pixels, their predicted linear colour) for this step."""
        def make():
            if self.fixed is not None:
                d = self.fixed
            else:
                reuse = self._raster if self._steps % RASTER_EVERY else None
                d = draw(self.skin, self.crop, self.skin.vertices(ctx["identity"], ctx["expression"]),
                         ctx.rotation(), ctx["translation"], reuse)
                self._steps += 1
                self._raster = d.raster
            pred = albedo_at(self.albedo_model, d.uv, ctx["albedo"]) * render.sh_shading(d.normal, ctx["lighting"])
            return d, pred
        return ctx.once(f"drawn:{id(self)}", make)


def photometric_term(renderer: CropRenderer, sigma: float, weight: float) -> Term:
    """Mean robust colour error over the skin pixels of the crop."""
    def value(ctx: FitContext) -> torch.Tensor:
        d, pred = renderer.drawn(ctx)
        return (cauchy(censored_residual(pred, d.photo, d.clipped), sigma) * d.skin).sum() / d.skin.sum().clamp_min(1.0)
    return Term("photometric", weight, value)


def identity_term(renderer: CropRenderer, points_crop: torch.Tensor, weight: float) -> Term:
    """Distance between dlib's face descriptors (backend/face_descriptor.py, a torch port) of the photo and
    of the render pasted into it (the face skin over the photo's own eyes, mouth and hair), both cut to
    dlib's aligned 150 px chip from the same landmarks: the fit is pulled towards a head that a face
    recogniser takes for the same person."""
    from .colour import linear_to_srgb
    from .face_descriptor import descriptor, load_face_descriptor
    net = load_face_descriptor(device=str(renderer.crop.image.device))
    photo = (linear_to_srgb(renderer.crop.image) * 255.0).permute(2, 0, 1)      # (3, h, w) 0..255 sRGB
    with torch.no_grad():
        target = descriptor(photo, points_crop, net=net)

    def value(ctx: FitContext) -> torch.Tensor:
        d, pred = renderer.drawn(ctx)
        flat = photo.reshape(3, -1)
        pasted = flat.index_copy(1, d.pixel, (linear_to_srgb(pred) * 255.0).T).view_as(photo)
        return (descriptor(pasted, points_crop, net=net) - target).norm()
    return Term("identity", weight, value)


def part_distance_term(skin: FaceSkin, sets, intrinsics: Intrinsics, weight: float) -> Term:
    """Part re-projection distance (part_distance.py) of the face skin's vertices, front-facing ones only."""
    from .part_distance import part_distance

    def value(ctx: FitContext) -> torch.Tensor:
        cam = render.to_camera(skin.vertices(ctx["identity"], ctx["expression"]), ctx.rotation(), ctx["translation"])
        with torch.no_grad():
            n = render.vertex_normals(cam, skin.triangles)
            facing = (n * cam).sum(1) < 0
        return part_distance(sets, render.project(cam, intrinsics)[:, :2], facing)
    return Term("part_distance", weight, value)


def render_identity_distance(crop: Crop, d: Drawn, pred: torch.Tensor, points_crop: torch.Tensor) -> float | None:
    """dlib descriptor distance between the photo's face and the render pasted into it (no gradient):
    below 0.6 a face recogniser takes them for the same person. None when the descriptor is not installed."""
    from .colour import linear_to_srgb
    from .errors import LikenessError
    from .face_descriptor import descriptor, load_face_descriptor
    try:
        net = load_face_descriptor(device=str(crop.image.device))
    except LikenessError:
        return None
    photo = (linear_to_srgb(crop.image) * 255.0).permute(2, 0, 1)
    pasted = photo.reshape(3, -1).index_copy(1, d.pixel, (linear_to_srgb(pred) * 255.0).T).view_as(photo)
    return float((descriptor(pasted, points_crop, net=net) - descriptor(photo, points_crop, net=net)).norm())


# Residuals -> a 0..1 confidence: (good, bad) per measure, linear in between; the score is the worst one.
# The landmark residual is over the head's frontal inter-ocular distance (fitting.frontal_inter_ocular_px), so
# that a profile is not refused for its small projected eye distance.
CONFIDENCE_RAMPS = {"landmark_error_frontal_iod": (0.03, 0.10), "photometric_skin_share": (0.35, 0.10),
                    "photometric_rms": (0.06, 0.20),
                    "photometric_outlier_share": (0.45, 0.90), "identity_distance": (0.45, 0.80)}
PLACEMENT_PARTS = ("landmark_error_frontal_iod", "photometric_skin_share")   # is the head on the face at all


def fit_confidence(metrics: dict) -> dict:
    """How far the fit can be trusted, from its residuals (result.json `metrics.confidence`): each part on its
    ramp, `score` the weakest part, and `trust` what the pipeline warns and refuses on (`trust_set_by`: the
    part that sets it).

    Trust is the weaker of the placement parts (landmarks, skin share: is the head on the face at all) and
    the *second*-weakest appearance part (colour residual, outlier share, identity): one weak appearance
    residual alone is what an ordinary photo does to a good fit (a sharpened, saturated in-the-wild JPEG's
    per-pixel texture, which no smooth albedo model has: wild_dev 290's colour residual at its limit with
    landmarks and skin perfect; a small, smiling face's render chip: the demo photo's identity distance 0.63).
    Warned on one weak part: the demo photo and 17 of the 40 wild_dev photos; on two: 8 (docs/fitting.md)."""
    parts = {}
    for key, (good, bad) in CONFIDENCE_RAMPS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts[key] = float(np.clip((bad - value) / (bad - good), 0.0, 1.0))
    if not parts:
        return {"score": 0.0, "parts": parts, "weakest": None, "trust": 0.0, "trust_set_by": None}
    candidates = {k: parts[k] for k in PLACEMENT_PARTS if k in parts}
    looks = sorted((k for k in parts if k not in PLACEMENT_PARTS), key=parts.get)
    if len(looks) > 1:
        candidates[looks[1]] = parts[looks[1]]
    trust_set_by = min(candidates, key=candidates.get) if candidates else None
    return {"score": min(parts.values()), "parts": parts, "weakest": min(parts, key=parts.get),
            "trust": candidates[trust_set_by] if trust_set_by else 1.0, "trust_set_by": trust_set_by}


def light_prior_term(weight: float) -> Term:
    """The second band relative to the first: real light is smooth (and band 2 is what noise fits first)."""
    def value(ctx: FitContext) -> torch.Tensor:
        sh = ctx["lighting"]
        return sh[4:].square().mean() / sh[0].square().mean().clamp_min(1e-6)
    return Term("lighting_prior", weight, value)


def sphere_directions(n: int = 64) -> torch.Tensor:
    """(n, 3) unit directions spread evenly over the sphere (a Fibonacci lattice)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = (1.0 - z * z).sqrt()
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1).float()


def light_positive_term(weight: float) -> Term:
    """Light is never negative, so neither is its shading in any direction: the squared negative part of
    the shading over the whole sphere, relative to the constant term. A face seen from one side shows
    normals within about 60 degrees of the camera, where the constant and the camera-facing terms are
    nearly interchangeable; unconstrained, the fit trades one for the other and the shading then falls
    off too steeply towards the grazing skin it barely sees (docs/fitting.md, "Light")."""
    dirs = sphere_directions()

    def value(ctx: FitContext) -> torch.Tensor:
        sh = ctx["lighting"]
        shading = render.sh_shading(dirs.to(sh.device), sh)                       # (n, 3)
        scale = (render.SH_CONSTANTS[0] * sh[0]).square().mean().clamp_min(1e-6)
        return (-shading).clamp_min(0.0).square().mean() / scale
    return Term("lighting_positive", weight, value)


def light_colour_term(weight: float) -> Term:
    """Light of one colour from every direction (a tint overall, not a blue key and a red fill): each
    channel's directional terms relative to its own DC term should agree. Without it the light soaks up
    the albedo's colour (red lips become 'red light from below')."""
    def value(ctx: FitContext) -> torch.Tensor:
        sh = ctx["lighting"]
        rel = sh[1:] / sh[0].abs().clamp_min(1e-3)
        return (rel - rel.mean(1, keepdim=True)).square().mean()
    return Term("lighting_colour", weight, value)


def fit_photometric(obs: Observation, fit: SceneFit, model: FaceModel, corr: Correspondence,
                    albedo_model: AlbedoModel | None, settings: PhotometricSettings = PhotometricSettings(),
                    landmark_settings: FitSettings = FitSettings(), hooks: Hooks | None = None) -> SceneFit:
    """Refine a landmark fit with the photo's pixels; returns the fit with `lighting` (9, 3), `albedo`
    coefficients, and the photometric metrics (residual, share of outlier pixels)."""
    hooks = hooks or Hooks()
    dev = model.device
    skin = FaceSkin(model)
    box = face_box(obs, settings.crop_margin)
    points = obs.detection.points
    iod_px = max(inter_ocular_px(points), 1e-3)

    def leaf(x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev).clone().requires_grad_(True)

    # Hundreds of small ops per step: on busy cores, OpenMP hand-offs cost more than they gain
    # (threads.idle_cpu_threads).
    with torch_threads(idle_cpu_threads() if dev.type == "cpu" else torch.get_num_threads()):
        coarse = make_crop(obs, box, settings.coarse_size, dev)
        with torch.no_grad():
            fixed = draw(skin, coarse, skin.vertices(fit.identity, fit.expression), fit.rotation, fit.translation)
        if albedo_model is None:
            start_albedo = (fixed.photo * fixed.skin[:, None]).sum(0) / fixed.skin.sum().clamp_min(1.0)
            start_albedo = start_albedo.clamp_min(1e-3)
        else:
            start_albedo = torch.zeros(albedo_model.num_components, device=dev)
        # A closed-form start: clipped pixels (a lower bound only) stay out of it.
        sh0 = least_squares_lighting(fixed.photo, albedo_at(albedo_model, fixed.uv, start_albedo), fixed.normal,
                                     fixed.skin * (1.0 - fixed.clipped.amax(1)))
        params = {"rotation": Param(leaf(matrix_to_axis_angle(fit.rotation.cpu().numpy()))),
                  "translation": Param(leaf(fit.translation.cpu().numpy())),
                  "identity": Param(leaf(fit.identity.cpu().numpy())),
                  "expression": Param(leaf(fit.expression.cpu().numpy()), clamp_unit),
                  "lighting": Param(leaf(sh0.cpu().numpy())),
                  "albedo": Param(leaf(start_albedo.cpu().numpy()))}
        basis = model.surface_basis(corr.vertex_ids, corr.bary)
        slider = contour_slider(model, corr) if landmark_settings.sliding_contour else None
        # Which landmarks the detector could see, judged again on the landmark fit's head.
        visibility = landmark_visibility_weights(model, corr, fit.vertices, fit.rotation, fit.translation,
                                                 landmark_settings)
        landmarks = landmark_terms(corr, points, iod_px, landmark_settings, dev, visibility)
        priors = [light_prior_term(settings.light_prior), light_colour_term(settings.light_colour_prior)]
        if settings.light_positive_prior > 0:
            priors.append(light_positive_term(settings.light_positive_prior))
        if albedo_model is not None:
            priors.append(Term("albedo_prior", settings.albedo_prior, lambda ctx: ctx["albedo"].square().mean()))

        def context() -> FitContext:
            return FitContext(params, basis, obs.intrinsics, slider)

        light_terms = [photometric_term(CropRenderer(skin, coarse, albedo_model, fixed), settings.robust_sigma,
                                        settings.photo_weight)] + priors
        # Without a model the albedo stays the face's mean colour: it pins the light's scale (the albedo
        # model's own bootstrap: scripts/build_albedo_model.py).
        light_lrs = {"lighting": settings.lr_lighting, **({"albedo": settings.lr_albedo} if albedo_model else {})}
        stages = [Stage("lighting", settings.light_steps, light_lrs)]
        split = Hooks(hooks.cancel_check, lambda f: hooks.progress(0.5 * f))
        losses = optimise(params, light_terms, stages, context, split)

        fine = make_crop(obs, box, settings.fine_size, dev)
        fine_renderer = CropRenderer(skin, fine, albedo_model)
        joint_terms = landmarks + [photometric_term(fine_renderer, settings.robust_sigma, settings.photo_weight)] + priors
        if settings.identity_weight > 0:
            joint_terms.append(identity_term(fine_renderer, crop_points(obs, fine), settings.identity_weight))
        if settings.part_weight > 0:
            from .part_distance import targets
            sets = targets(model, corr, points, dev, skin.vertex_map)
            joint_terms.append(part_distance_term(skin, sets, obs.intrinsics, settings.part_weight))
        joint = [Stage("joint", settings.joint_steps,
                       {"rotation": settings.lr_rotation, "translation": settings.lr_translation,
                        "identity": settings.lr_identity, "expression": settings.lr_expression,
                        **{name: lr * 0.5 for name, lr in light_lrs.items()}})]
        if settings.joint_steps:
            split = Hooks(hooks.cancel_check, lambda f: hooks.progress(0.5 + 0.5 * f))
            losses += optimise(params, joint_terms, joint, context, split)

    ctx = context()
    with torch.no_grad():
        identity, expression = ctx["identity"].detach(), ctx["expression"].detach()
        rotation, translation = ctx.rotation().detach(), ctx["translation"].detach()
        lighting, albedo = ctx["lighting"].detach(), ctx["albedo"].detach()
        uv = ctx.landmarks_px().cpu().numpy()
        d = draw(skin, fine, skin.vertices(identity, expression), rotation, translation)
        pred = albedo_at(albedo_model, d.uv, albedo) * render.sh_shading(d.normal, lighting)
        err = censored_residual(pred, d.photo, d.clipped).square().sum(-1).sqrt()
        inlier = 1.0 / (1.0 + err.square() / settings.robust_sigma ** 2)
        on_skin = d.skin > 0.5
        terms = term_values(joint_terms, ctx)
        vertices, basis_vertices = model.vertices(identity, expression), model.vertices(identity)
        id_distance = render_identity_distance(fine, d, pred, crop_points(obs, fine))
        frontal_px = frontal_inter_ocular_px(ctx.landmarks_model(), rotation, translation, obs.intrinsics)
    used = corr.weight > 0
    error_px = float(np.linalg.norm(uv - points, axis=1)[used].mean())
    metrics = dict(fit.metrics)
    metrics.update({"landmark_error_px": error_px, "landmark_error_iod": error_px / iod_px,
                    "landmark_error_frontal_iod": error_px / max(frontal_px, 1e-3),
                    "photometric_rms": float(err[on_skin].square().mean().sqrt()) if on_skin.any() else None,
                    "photometric_outlier_share": float((inlier[on_skin] < 0.5).float().mean()) if on_skin.any() else None,
                    "photometric_pixels": int(on_skin.sum()),
                    "photometric_skin_share": float(on_skin.float().mean()) if len(on_skin) else 0.0,
                    "final_loss": losses[-1] if losses else None,
                    "identity_distance": id_distance})
    metrics["confidence"] = fit_confidence(metrics)
    settings_rec = {**fit.settings, "method": "landmarks+photometric", "photometric": dataclasses.asdict(settings),
                    "albedo_model_sha256": albedo_model.sha256 if albedo_model is not None else None}
    out = SceneFit(fit.intrinsics, rotation, translation, identity, expression, vertices, basis_vertices, uv,
                   metrics, settings_rec, terms, lighting)
    out.albedo, out.albedo_model = albedo, albedo_model
    out.extras = {"crop": fine, "drawn_pixel": d.pixel, "prediction": pred, "inlier": inlier}
    return out

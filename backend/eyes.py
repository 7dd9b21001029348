"""Eyes from the photo: the iris's colour and size from the Face Landmarker's iris points (468-477), the
sclera's colour from the rest of the eye opening, drawn as the eyeball's image (bundle role "eyes").

- Measuring (`measure_eyes`): per eye, the iris centre (468 / 473) and its radius (mean distance to the
  four boundary points 469-472 / 474-477); its pixels are the disc inside the eye opening (the lid
  margins: face_regions.RIGHT_EYE / LEFT_EYE), without the pupil, the limbus's blend with the sclera, and
  the brightest (the light's reflection on the cornea) and darkest (lashes) tenths; their mean in linear
  light is the iris colour. The sclera: the opening outside 1.2 iris radii, its brighter half (lid
  shadows and the corners' caruncle out). Both eyes are pooled by pixel count.
- De-lighting: divided by the fitted SH shading at the eyeball's front normal, like the skin.
- Size: the iris radius in the photo (px) at the fitted eyeball's depth gives centimetres, clamped to
  human irises (10-13.2 mm across), then the UV radius on the ICT eyeball's outer shell (its planar UV
  has the front pole at (0.5, 0.5); `eyeball_uv_table` reads radius in UV against distance from the
  eye's axis off the mesh, so no UV constant is assumed).
- The image (`eye_image`): pupil, iris (a radial gradient and fibres around the measured colour, its
  mean the measured colour), a darker limbal ring, the sclera colour; sRGB, 8-bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from . import face_regions as fr
from .colour import SRGB8_TO_LINEAR, encode_srgb8
from .facemodel import VERTEX_RANGES, FaceModel

IRIS_POINTS = {"right": (468, (469, 470, 471, 472)), "left": (473, (474, 475, 476, 477))}  # subject's sides
EYE_LOOPS = {"right": fr.RIGHT_EYE, "left": fr.LEFT_EYE}
PUPIL_FRACTION = 0.4          # of the iris radius: pixels inside are pupil
LIMBUS_FRACTION = 0.9         # iris pixels up to this fraction of the radius (the limbus blends outside)
SCLERA_FROM = 1.2             # sclera pixels from this many iris radii
TRIM = (0.1, 0.9)             # luminance quantiles kept of the iris pixels (lashes, corneal reflection out)
MIN_PIXELS = 12               # per eye, for a measurement to count
IRIS_DIAMETER_MM = (10.0, 13.2)
DEFAULT_IRIS_LINEAR = (0.18, 0.11, 0.06)      # export_layout.DEFAULT_IRIS: the importer's own default
DEFAULT_SCLERA_LINEAR = (0.80, 0.78, 0.74)
SCLERA_LUMINANCE = (0.45, 0.85)
SCLERA_MAX_SATURATION = 0.15
IRIS_LINEAR_RANGE = (0.004, 0.6)
EYE_IMAGE_SIZE = 512
LUMA = np.array([0.2126, 0.7152, 0.0722])


@dataclass
class EyeMeasure:
    side: str
    centre: np.ndarray            # (2,) photo px
    radius_px: float
    iris_linear: np.ndarray | None  # (3,) mean of the iris pixels (photo, linear light)
    iris_pixels: int
    sclera_linear: np.ndarray | None
    sclera_pixels: int
    disc_mean_linear: np.ndarray | None  # plain mean of every visible pixel of the iris disc (a reference)
    disc_pixels: int


def _crop(photo: np.ndarray, centre: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = photo.shape[:2]
    x0, y0 = max(0, int(centre[0] - half)), max(0, int(centre[1] - half))
    x1, y1 = min(w, int(np.ceil(centre[0] + half)) + 1), min(h, int(np.ceil(centre[1] + half)) + 1)
    return photo[y0:y1, x0:x1], np.array([x0, y0], np.float64)


def eye_pixels(photo_rgb: np.ndarray, points: np.ndarray, side: str) -> dict:
    """Linear pixels (N, 3) of one eye's iris annulus, visible iris disc and sclera, and the iris geometry."""
    pts = np.asarray(points, dtype=np.float64)
    c_id, ring = IRIS_POINTS[side]
    centre = pts[c_id]
    radius = float(np.mean(np.linalg.norm(pts[list(ring)] - centre, axis=1)))
    loop = np.asarray(EYE_LOOPS[side])
    half = max(4.0 * radius, float(np.abs(pts[loop] - centre).max()) + 4.0)
    crop, origin = _crop(np.asarray(photo_rgb)[..., :3], centre, half)
    out = {"centre": centre, "radius": radius, "iris": np.zeros((0, 3)), "disc": np.zeros((0, 3)),
           "sclera": np.zeros((0, 3))}
    if crop.size == 0 or radius < 1.0:
        return out
    local = pts - origin
    opening = fr.polygon_mask(crop.shape[:2], local, [EYE_LOOPS[side]], grow=-0.5) > 0.5
    yy, xx = np.mgrid[:crop.shape[0], :crop.shape[1]]
    dist = np.hypot(xx + 0.5 - (centre[0] - origin[0]), yy + 0.5 - (centre[1] - origin[1])) / radius
    lin = SRGB8_TO_LINEAR[crop]
    out["disc"] = lin[opening & (dist <= 1.0)]
    out["iris"] = lin[opening & (dist >= PUPIL_FRACTION) & (dist <= LIMBUS_FRACTION)]
    out["sclera"] = lin[opening & (dist >= SCLERA_FROM)]
    return out


def _trimmed_mean(pixels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lum = pixels @ LUMA
    a, b = np.quantile(lum, [lo, hi])
    keep = (lum >= a) & (lum <= b)
    return pixels[keep].mean(0) if keep.any() else pixels.mean(0)


def measure_eyes(photo_rgb: np.ndarray, points: np.ndarray) -> list[EyeMeasure]:
    """Both eyes' iris and sclera colours (linear, as photographed) and iris radii."""
    out = []
    for side in ("right", "left"):
        px = eye_pixels(photo_rgb, points, side)
        iris, sclera, disc = px["iris"], px["sclera"], px["disc"]
        out.append(EyeMeasure(
            side, px["centre"], px["radius"],
            _trimmed_mean(iris, *TRIM) if len(iris) >= MIN_PIXELS else None, len(iris),
            _trimmed_mean(sclera, 0.5, 0.95) if len(sclera) >= MIN_PIXELS else None, len(sclera),
            disc.mean(0) if len(disc) else None, len(disc)))
    return out


def pooled(measures: list[EyeMeasure], attr: str, count: str) -> np.ndarray | None:
    vals = [(getattr(m, attr), getattr(m, count)) for m in measures if getattr(m, attr) is not None]
    if not vals:
        return None
    w = np.array([c for _, c in vals], dtype=np.float64)
    return (np.stack([v for v, _ in vals]) * w[:, None]).sum(0) / w.sum()


# ---------------------------------------------------------------------------------------------
# The ICT eyeball's UV


def _outer_shell(model: FaceModel, name: str) -> np.ndarray:
    """Vertex ids of the eyeball's outer shell (the front-most of its connected parts)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components
    lo, hi = VERTEX_RANGES[name]
    tri = model.topology.triangles
    tri = tri[(tri[:, 0] >= lo) & (tri[:, 0] <= hi)] - lo
    n = hi - lo + 1
    g = sp.coo_matrix((np.ones(3 * len(tri)), (tri.ravel(), np.roll(tri, 1, axis=1).ravel())), shape=(n, n))
    _, label = connected_components(g, directed=False)
    z = model.neutral.detach().cpu().numpy()[lo:hi + 1, 2]
    front = label[int(np.argmax(z))]
    return lo + np.flatnonzero(label == front)


def eyeball_uv_table(model: FaceModel, name: str = "eyeball_left") -> tuple[np.ndarray, np.ndarray]:
    """(distance from the eye's axis in cm, UV radius from (0.5, 0.5)) along the outer shell's front
    half, increasing: the neutral eyeball's planar UV read off the mesh."""
    ids = _outer_shell(model, name)
    topo = model.topology
    v = model.neutral.detach().cpu().numpy().astype(np.float64)
    p = v[ids]
    a = np.c_[2 * p, np.ones(len(p))]
    sol = np.linalg.lstsq(a, (p * p).sum(1), rcond=None)[0]
    centre = sol[:3]
    pole = p[int(np.argmax(p[:, 2]))]
    axis = (pole - centre) / np.linalg.norm(pole - centre)
    corner = np.isin(topo.face_vertex_indices, ids)
    cv = topo.face_vertex_indices[corner]
    uv = topo.corner_uvs[corner].astype(np.float64)
    d = v[cv] - centre
    front = d @ axis > 0.3 * np.linalg.norm(d, axis=1)
    planar = np.linalg.norm(d - (d @ axis)[:, None] * axis, axis=1)[front]
    r_uv = np.hypot(uv[front, 0] % 1.0 - 0.5, uv[front, 1] - 0.5)
    edges = np.linspace(0.0, planar.max(), 24)
    xs, ys = [0.0], [0.0]
    for e0, e1 in zip(edges[:-1], edges[1:]):
        sel = (planar > e0) & (planar <= e1)
        if sel.sum() >= 3:
            xs.append(float(np.median(planar[sel])))
            ys.append(float(np.median(r_uv[sel])))
    xs, ys = np.asarray(xs), np.maximum.accumulate(np.asarray(ys))
    return xs, ys


def eyeball_radius(vertices: np.ndarray, name: str = "eyeball_left") -> float:
    lo, hi = VERTEX_RANGES[name]
    p = np.asarray(vertices, dtype=np.float64)[lo:hi + 1]
    return float(np.linalg.norm(p - p.mean(0), axis=1).mean())


# ---------------------------------------------------------------------------------------------
# The image


def _smooth_noise(rng: np.random.Generator, n: int, smooth: int) -> np.ndarray:
    x = rng.normal(size=n)
    k = np.exp(-0.5 * (np.arange(-3 * smooth, 3 * smooth + 1) / smooth) ** 2)
    x = np.convolve(np.concatenate([x[-3 * smooth:], x, x[:3 * smooth]]), k / k.sum(), mode="same")[3 * smooth:-3 * smooth]
    return x / max(float(x.std()), 1e-9)


def eye_profile_linear(r: np.ndarray, theta: np.ndarray, iris: np.ndarray, sclera: np.ndarray,
                       iris_uv: float) -> np.ndarray:
    """Linear RGB of the eyeball at UV radius r and angle theta (arrays): pupil, iris, limbus, sclera."""
    iris = np.asarray(iris, dtype=np.float64)
    sclera = np.asarray(sclera, dtype=np.float64)
    t = r / iris_uv
    rng = np.random.default_rng(7)
    fibres = _smooth_noise(rng, 720, 2)
    idx = ((theta % (2 * np.pi)) / (2 * np.pi) * 720).astype(np.int64) % 720
    # iris: lighter near the collarette, darker outwards, fibres of +-12 %
    shade = (1.15 - 0.3 * np.clip((t - PUPIL_FRACTION) / (1 - PUPIL_FRACTION), 0, 1)) * (1.0 + 0.12 * fibres[idx])
    limbus = 1.0 - 0.55 * np.clip((t - 0.85) / 0.15, 0, 1)
    col = (shade * limbus)[..., None] * iris
    pupil = np.full(3, 0.005)
    blend_p = np.clip((t - (PUPIL_FRACTION - 0.04)) / 0.06, 0, 1)[..., None]
    col = pupil * (1 - blend_p) + col * blend_p
    outside = np.clip((t - 1.0) / 0.08, 0, 1)[..., None]
    back = sclera * 0.92 * np.array([1.0, 0.95, 0.93])
    far = np.clip((r - 0.2) / 0.2, 0, 1)[..., None]
    scl = sclera * (1 - far) + back * far
    return col * (1 - outside) + scl * outside


def annulus_mean(iris: np.ndarray, iris_uv: float, size: int = 256) -> np.ndarray:
    """Mean linear colour of the profile's iris annulus (pupil to limbus) for iris colour `iris`."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c * iris_uv, c * iris_uv)
    r, th = np.hypot(x, y), np.arctan2(y, x)
    col = eye_profile_linear(r, th, iris, np.ones(3), iris_uv)
    sel = (r >= PUPIL_FRACTION * iris_uv) & (r <= LIMBUS_FRACTION * iris_uv)
    return col[sel].mean(0)


def eye_image(iris_linear, sclera_linear, iris_uv: float, size: int = EYE_IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 sRGB image of the eyeball on its planar UV (front pole at the centre); the
    iris annulus averages to `iris_linear`."""
    iris = np.asarray(iris_linear, dtype=np.float64)
    gain = iris / np.maximum(annulus_mean(iris, iris_uv), 1e-6)
    c = (np.arange(size) + 0.5) / size - 0.5
    x, y = np.meshgrid(c, -c)
    col = eye_profile_linear(np.hypot(x, y), np.arctan2(y, x), iris * gain, sclera_linear, iris_uv)
    return encode_srgb8(np.clip(col, 0.0, 1.0).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# From a fitted photo


@dataclass
class EyeResult:
    image: np.ndarray                 # (S, S, 3) uint8 sRGB
    info: dict = field(default_factory=dict)


def _clamp_sclera(c: np.ndarray) -> np.ndarray:
    c = np.maximum(np.asarray(c, dtype=np.float64), 1e-4)
    lum = float(c @ LUMA)
    c = c * (np.clip(lum, *SCLERA_LUMINANCE) / lum)
    grey = float(c @ LUMA)
    sat = np.abs(c - grey).max() / grey
    if sat > SCLERA_MAX_SATURATION:
        c = grey + (c - grey) * (SCLERA_MAX_SATURATION / sat)
    return c


def eyes_from_photo(photo_rgb: np.ndarray, points: np.ndarray, model: FaceModel, vertices: np.ndarray,
                    rotation: np.ndarray, translation: np.ndarray, focal_px: float,
                    sh: np.ndarray | None, size: int = EYE_IMAGE_SIZE) -> EyeResult:
    """The eyes' image for a fitted photo, and what was measured (result.json texture.info.eyes)."""
    measures = measure_eyes(photo_rgb, points)
    rot = np.asarray(rotation, dtype=np.float64)
    trans = np.asarray(translation, dtype=np.float64)
    verts = np.asarray(vertices, dtype=np.float64)
    info: dict = {"measured": {m.side: {"radius_px": round(m.radius_px, 2), "iris_pixels": m.iris_pixels,
                                        "sclera_pixels": m.sclera_pixels} for m in measures}}
    shading = sh_basis_np_front(rot, sh) if sh is not None else np.ones(3)
    iris = pooled(measures, "iris_linear", "iris_pixels")
    sclera = pooled(measures, "sclera_linear", "sclera_pixels")
    iris_albedo = (np.clip(iris / shading, *IRIS_LINEAR_RANGE) if iris is not None
                   else np.asarray(DEFAULT_IRIS_LINEAR))
    sclera_albedo = _clamp_sclera(sclera / shading) if sclera is not None else np.asarray(DEFAULT_SCLERA_LINEAR)
    # Iris size: px at the eyeball's depth -> cm -> the neutral eyeball's UV (scaled by the fitted eyeball).
    xs, ys = eyeball_uv_table(model)
    radii = [m.radius_px for m in measures if m.iris_pixels >= MIN_PIXELS]
    iris_uv, radius_cm = float(np.interp(0.55, xs, ys)), None
    if radii:
        depths = []
        for name in ("eyeball_right", "eyeball_left"):
            lo, hi = VERTEX_RANGES[name]
            depths.append(-(rot @ verts[lo:hi + 1].mean(0) + trans)[2])
        radius_cm = float(np.mean(radii)) * float(np.mean(depths)) / float(focal_px)
        radius_cm = float(np.clip(radius_cm, IRIS_DIAMETER_MM[0] / 20.0, IRIS_DIAMETER_MM[1] / 20.0))
        neutral = model.neutral.detach().cpu().numpy()
        scale = eyeball_radius(verts) / max(eyeball_radius(neutral), 1e-6)
        iris_uv = float(np.interp(radius_cm / scale, xs, ys))
    info.update({"iris_linear": _r(iris_albedo), "sclera_linear": _r(sclera_albedo), "iris_uv_radius": round(iris_uv, 4),
                 "iris_radius_cm": None if radius_cm is None else round(radius_cm, 4),
                 "shading_at_eye": _r(shading), "from_photo": iris is not None})
    return EyeResult(eye_image(iris_albedo, sclera_albedo, iris_uv, size), info)


def sh_basis_np_front(rotation: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """(3,) the fitted shading at the eyes' front normal (model +Z, turned by the head's rotation)."""
    from .skin_maps import sh_basis_np
    front = np.asarray(rotation, dtype=np.float64) @ np.array([0.0, 0.0, 1.0])
    return np.maximum(sh_basis_np(front[None]) @ np.asarray(sh, dtype=np.float64), 0.02)[0]


def _r(x) -> list[float]:
    return [round(float(v), 5) for v in np.asarray(x).ravel()]

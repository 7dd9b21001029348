"""Partial views of heads of known albedo: the UV texture generator's training pairs and the completion bench.

A *studio head* is a London photo through the pipeline: landmarks, segmentation, landmark and photometric
fit, and the "delit" texture (the photo divided by the fitted shading). Its diffuse tiles are the truth
albedo, its visibility map says where that truth was seen (the London light is even, the view frontal).

A *partial view* draws that head again, with its fitted shape and its truth albedo, at a new pose (yaw up
to 70 degrees), under a new light (second-order SH plus, most of the time, a hard directional light whose
shadows the head casts on itself), with occluders (hair cut from another studio photo by its hair mask, a
hand shape) over a plain background, JPEG-compressed. The pipeline's own texture stage then runs on that
image with the known geometry: segmentation (hair, person), the photometric fit of lighting and albedo
(backend/photometric.py, geometry fixed: `joint_steps=0`), and a texture strategy
(`run_strategy`). What the strategies see of the head is that stage's direct view, the same as a photo's.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .. import render
from ..camera import Intrinsics
from ..colour import decode_srgb8, encode_srgb8, srgb_to_linear
from ..facemodel import NARROW_FACE_LAST_VERTEX, VERTEX_RANGES
from ..landmarks import FaceDetection
from ..scene import Observation, SceneFit
from .render import PART_ALBEDO, _raster, _skin_uv, eye_colours, mesh_from_model, sample_tiles

TILES = (1001, 1002)
TRUTH_SIZE = 256          # texels per tile side of the stored truth
IMAGE_SIDE = 512          # px, the rendered view
PHOTO_SIDE = 512          # px, the studio photo kept for hair occluders
YAW_MAX = 70.0
IRIS = ((0.25, 0.15, 0.08), (0.35, 0.25, 0.12), (0.25, 0.35, 0.45), (0.30, 0.38, 0.25))
SHADOW_MAP_SIDE = 384
SHADOW_BIAS_CM = 0.08


# ---------------------------------------------------------------------------------------------
# Studio heads


@dataclass
class StudioHead:
    name: str                  # photo stem ("001_03")
    identity: str              # "001"
    vertices: np.ndarray       # (V, 3) float32 fitted (identity and expression), model space cm
    truth: np.ndarray          # (2, 3, R, R) float32 linear albedo, tiles 1001 and 1002
    confidence: np.ndarray     # (2, R, R) float32 visibility of the studio photo
    photo: np.ndarray          # (P, P, 3) uint8: the studio photo, resized (hair occluders)
    hair: np.ndarray           # (P, P) float32 hair probability on that grid
    box: np.ndarray            # (4,) face box on that grid (landmarks' x0, y0, x1, y1)
    skin: np.ndarray           # (3,) linear median skin colour
    coefficients: np.ndarray   # identity coefficients then expression weights of the fit (vertices' source)

    def tiles(self) -> dict[int, np.ndarray]:
        return {t: np.ascontiguousarray(self.truth[i].transpose(1, 2, 0)) for i, t in enumerate(TILES)}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "StudioHead":
        with np.load(path, allow_pickle=False) as z:
            kw = {f.name: z[f.name] for f in dataclasses.fields(cls)}
        kw["name"], kw["identity"] = str(kw["name"]), str(kw["identity"])
        return cls(**kw)


def fitted_photo(photo_path, model, corr, albedo_model):
    """(photo, obs, fit): a photo (a path or a loaded Photo) through the pipeline's detect, segment,
    landmark and photometric fit stages."""
    from ..fitting import fit_landmarks
    from ..imageio import load_photo
    from ..photometric import fit_photometric
    from ..pipeline import get_analyzer, get_segmenter, observe
    photo = load_photo(photo_path) if isinstance(photo_path, (str, Path)) else photo_path
    obs = observe(photo, get_analyzer())
    obs.masks = get_segmenter().segment(photo, obs.detection)
    det = obs.detection
    fit = fit_landmarks(model, corr, det.points, obs.intrinsics, det.blendshapes)
    return photo, obs, fit_photometric(obs, fit, model, corr, albedo_model)


def delit_photo(photo_path, model, corr, albedo_model, size: int, debug: dict | None = None):
    """(photo, obs, fit, texture): `fitted_photo`, then the "delit" texture stage (the albedo model's
    training images, the studio heads and the de-lighting tests alike); `debug` receives the texture's
    debug images."""
    from ..texture import delit_texture
    photo, obs, fit = fitted_photo(photo_path, model, corr, albedo_model)
    return photo, obs, fit, delit_texture(obs, fit, model, size, _debug=debug)


def studio_head(photo_path: Path, model, corr, albedo_model, size: int = TRUTH_SIZE) -> StudioHead:
    """A studio photo through the pipeline's detect, fit and "delit" texture stages."""
    photo, obs, fit, tex = delit_photo(photo_path, model, corr, albedo_model, size)
    det = obs.detection
    truth = np.stack([tex.maps["diffuse"][t].transpose(2, 0, 1) for t in TILES]).astype(np.float32)
    conf = np.stack([tex.maps["visibility"][t] for t in TILES]).astype(np.float32)
    s = PHOTO_SIDE / max(photo.width, photo.height)
    small = cv2.resize(photo.rgb, (round(photo.width * s), round(photo.height * s)), interpolation=cv2.INTER_AREA)
    m = obs.masks
    hair = cv2.resize(m.hair, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
    box = np.asarray(det.box, np.float32) * s
    return StudioHead(photo_path.stem, photo_path.stem.split("_")[0], fit.vertices.cpu().numpy().astype(np.float32),
                      truth, conf, small, hair.astype(np.float32), box,
                      np.asarray(tex.info["skin_colour_linear"], np.float32),
                      torch.cat([fit.identity, fit.expression]).cpu().numpy().astype(np.float32))


# ---------------------------------------------------------------------------------------------
# Views


@dataclass
class ViewSpec:
    """Everything random about one view (drawn by `random_view`, or given: the bench's fixed yaws)."""
    yaw: float
    pitch: float
    roll: float
    distance_cm: float
    sh: np.ndarray                       # (9, 3) SH shading
    light_dir: np.ndarray | None         # (3,) camera space, towards the light; None: SH only
    light_rgb: np.ndarray | None         # (3,) intensity of the hard light
    hair_donor: int | None               # index into the donor list, or None
    hair_shift: tuple[float, float, float]  # dx, dy (face widths), scale factor
    hand: dict | None                    # centre (face units), size, angle, colour gain
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    jpeg_quality: int
    exposure: float
    seed: int = 0


def rotation_ypr(yaw: float, pitch: float, roll: float) -> np.ndarray:
    from .synthetic import rotation_ypr as r
    return r(yaw, pitch, roll)


def random_light(rng: np.random.Generator, hard: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """SH (9, 3) with ambient and a soft directional part, and (with `hard`) a directional light from the
    front hemisphere, strong enough that its shadows are deep."""
    from .synthetic import sample_sh
    sh = sample_sh(rng)
    if not hard:
        return sh, None, None
    d = rng.normal(size=3)
    d[2] = abs(d[2]) * 0.8 + 0.1
    d /= np.linalg.norm(d)
    share = rng.uniform(0.4, 0.8)                       # of the light that the hard light brings
    sh = sh * (1.0 - share)
    tint = 1.0 + rng.normal(0.0, 0.05, 3)
    return sh, d, share * 1.6 * tint


def random_view(rng: np.random.Generator, n_donors: int, yaw: float | None = None, occluders: bool = True,
                hard_light: float = 0.7) -> ViewSpec:
    yaw = float(rng.uniform(-1, 1) * YAW_MAX) if yaw is None else float(yaw)
    sh, d, rgb = random_light(rng, rng.random() < hard_light)
    hair = int(rng.integers(n_donors)) if occluders and n_donors and rng.random() < 0.6 else None
    hand = None
    if occluders and rng.random() < 0.35:
        hand = {"centre": (float(rng.uniform(-0.45, 0.45)), float(rng.uniform(0.1, 0.75))),
                "size": float(rng.uniform(0.35, 0.6)), "angle": float(rng.uniform(0, 2 * math.pi)),
                "gain": float(rng.uniform(0.7, 1.2)), "donor": int(rng.integers(max(1, n_donors)))}
    c1 = tuple(int(x) for x in rng.integers(20, 235, 3))
    c2 = tuple(int(np.clip(x + rng.normal(0, 30), 0, 255)) for x in c1)
    return ViewSpec(yaw, float(rng.uniform(-12, 12)), float(rng.uniform(-6, 6)), float(rng.uniform(52, 70)),
                    sh, d, rgb, hair, (float(rng.normal(0, 0.05)), float(rng.normal(0, 0.05)),
                                       float(rng.uniform(0.95, 1.1))), hand, (c1, c2),
                    int(rng.integers(80, 96)), float(rng.uniform(0.75, 1.25)))


@dataclass
class View:
    image: np.ndarray              # (H, W, 3) uint8 sRGB
    intrinsics: Intrinsics
    rotation: np.ndarray           # (3, 3)
    translation: np.ndarray        # (3,)
    points: np.ndarray             # (478, 2) MediaPipe-layout landmarks (the correspondence, projected)
    spec: ViewSpec


def camera_for(head: StudioHead, spec: ViewSpec, side: int = IMAGE_SIDE) -> tuple[Intrinsics, np.ndarray, np.ndarray]:
    k = Intrinsics(1.9 * side, side / 2, side / 2, side, side)
    rot = rotation_ypr(spec.yaw, spec.pitch, spec.roll)
    face = head.vertices[:NARROW_FACE_LAST_VERTEX + 1]
    centre = (face.min(0) + face.max(0)) / 2
    trans = np.array([0.0, 0.0, -spec.distance_cm]) - rot @ centre
    return k, rot, trans


def draw(model, head: StudioHead, spec: ViewSpec, side: int = IMAGE_SIDE) -> tuple[np.ndarray, np.ndarray, Intrinsics,
                                                                                    np.ndarray, np.ndarray]:
    """The head in linear light over the background: (H, W, 3) float32 image, (H, W) bool coverage, camera."""
    k, rot, trans = camera_for(head, spec, side)
    mesh = mesh_from_model(model, head.vertices)
    frags, covered = _raster(mesh, k, rot, trans, side, side)
    t = frags.triangle.numpy()
    part = mesh.triangle_part[t]
    albedo = np.zeros((len(t), 3), np.float32)
    skin = np.flatnonzero(part == mesh.part_names.index("skin"))
    uv, tile_of = _skin_uv(mesh, frags, skin)
    col, ok = sample_tiles(uv, tile_of, head.tiles())
    col[~ok] = head.skin
    albedo[skin] = col
    for name, rgb in PART_ALBEDO.items():
        albedo[part == mesh.part_names.index(name)] = srgb_to_linear(np.asarray(rgb))
    eyes = part == mesh.part_names.index("eyes")
    if eyes.any():
        iris = np.asarray(IRIS[spec.seed % len(IRIS)])
        ecol = eye_colours(model.neutral.cpu().numpy(), [VERTEX_RANGES["eyeball_left"], VERTEX_RANGES["eyeball_right"]], iris)
        albedo[eyes] = srgb_to_linear((ecol[mesh.triangles[t[eyes]]] * frags.bary.numpy()[eyes, :, None]).sum(1))
    v_cam = render.to_camera(torch.from_numpy(mesh.vertices).double(), torch.from_numpy(rot).double(),
                             torch.from_numpy(trans).double())
    tris = torch.from_numpy(mesh.triangles)
    n = torch.nn.functional.normalize(render.interpolate(frags, render.vertex_normals(v_cam, tris)), dim=1)
    shading = render.sh_shading(n, torch.from_numpy(np.asarray(spec.sh, np.float64)))
    if spec.light_dir is not None:
        d = torch.from_numpy(np.asarray(spec.light_dir, np.float64))
        cos = (n @ d).clamp_min(0.0)
        occluders = tris[torch.from_numpy(np.isin(mesh.triangle_part, [mesh.part_names.index(p) for p in
                                                                         ("skin", "eyes", "teeth", "mouth")]))]
        lit = render.shadow_factor(render.interpolate(frags, v_cam), v_cam, occluders, d, side=SHADOW_MAP_SIDE,
                                   bias_cm=SHADOW_BIAS_CM)
        shading = shading + (cos * lit)[:, None] * torch.from_numpy(np.asarray(spec.light_rgb, np.float64))[None]
    shading = shading.clamp_min(0.0).float().numpy() * spec.exposure
    c1, c2 = (np.asarray(c, np.float32) / 255.0 for c in spec.background)
    ramp = np.linspace(0, 1, side, dtype=np.float32)[:, None, None]
    img = srgb_to_linear(c1 * (1 - ramp) + c2 * ramp) * np.ones((side, side, 3), np.float32)
    flat = img.reshape(-1, 3)
    flat[frags.pixel.numpy()] = albedo * shading
    return np.clip(img, 0.0, 1.0), covered, k, rot, trans


def landmarks_of(model, corr, head: StudioHead, k: Intrinsics, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    pts = corr.on_surface(head.vertices)
    cam = render.to_camera(torch.from_numpy(pts).double(), torch.from_numpy(rot).double(), torch.from_numpy(trans).double())
    return render.project(cam, k)[:, :2].float().numpy()


def _paste_hair(img: np.ndarray, donor: StudioHead, box: np.ndarray, shift) -> None:
    """The donor's hair (its photo where its hair mask says so), moved so that its face box lands on `box`."""
    db = donor.box
    s = (box[2] - box[0]) / max(db[2] - db[0], 1e-3) * shift[2]
    dw = box[2] - box[0]
    tx = (box[0] + box[2]) / 2 + shift[0] * dw - s * (db[0] + db[2]) / 2
    ty = (box[1] + box[3]) / 2 + shift[1] * dw - s * (db[1] + db[3]) / 2
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    h, w = img.shape[:2]
    colour = decode_srgb8(cv2.warpAffine(donor.photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    alpha = cv2.warpAffine(donor.hair, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = np.clip((alpha - 0.3) / 0.4, 0, 1)[..., None]
    img[:] = img * (1 - alpha) + colour * alpha


def _paste_hand(img: np.ndarray, hand: dict, colour: np.ndarray, box: np.ndarray, shade: float) -> None:
    """A hand shape (palm and four fingers) of a skin colour, lit from the front."""
    h, w = img.shape[:2]
    fw = box[2] - box[0]
    cx = (box[0] + box[2]) / 2 + hand["centre"][0] * fw
    cy = box[1] + hand["centre"][1] * (box[3] - box[1])
    size = hand["size"] * fw
    ss = 4
    mask = np.zeros((h * ss, w * ss), np.uint8)
    a = hand["angle"]
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def pt(x, y):
        q = rot @ np.array([x, y]) * size + np.array([cx, cy])
        return (int(q[0] * ss), int(q[1] * ss))
    cv2.ellipse(mask, pt(0, 0), (int(0.42 * size * ss), int(0.5 * size * ss)), math.degrees(a), 0, 360, 255, -1)
    for i, fx in enumerate((-0.3, -0.1, 0.1, 0.3)):
        length = (0.75, 0.9, 0.85, 0.65)[i]
        cv2.line(mask, pt(fx, -0.3), pt(fx * 1.15, -0.3 - length), 255, int(0.17 * size * ss))
    alpha = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255.0
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None]
    col = colour[None, None] * hand["gain"] * shade * (1.0 - 0.15 * ys)
    img[:] = img * (1 - alpha) + np.clip(col, 0, 1) * alpha


def make_view(model, corr, head: StudioHead, spec: ViewSpec, donors: list[StudioHead], side: int = IMAGE_SIDE) -> View:
    img, covered, k, rot, trans = draw(model, head, spec, side)
    points = landmarks_of(model, corr, head, k, rot, trans)
    box = np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])
    if spec.hair_donor is not None and donors:
        _paste_hair(img, donors[spec.hair_donor % len(donors)], box, spec.hair_shift)
    if spec.hand is not None:
        donor = donors[spec.hand["donor"] % len(donors)] if donors else head
        shade = float(np.clip(spec.sh[0, 1] * 0.282095 + (spec.light_rgb.mean() * 0.5 if spec.light_rgb is not None
                                                         else 0.0), 0.3, 1.5)) * spec.exposure
        _paste_hand(img, spec.hand, donor.skin, box, shade)
    out = encode_srgb8(img)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality])
    out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return View(out, k, rot, trans, points, spec)


# ---------------------------------------------------------------------------------------------
# The pipeline's texture stage on a view


def observe_view(model, corr, head: StudioHead, view: View, albedo_model, segment: bool = True
                 ) -> tuple[Observation, SceneFit]:
    """The view as the pipeline sees it after detection (landmarks: the projected correspondence) and
    segmentation, and the photometric fit of its lighting and albedo on the known geometry."""
    from ..imageio import photo_from_array
    from ..photometric import PhotometricSettings, fit_photometric
    from ..pipeline import get_segmenter
    pts = view.points.astype(np.float32)
    det = FaceDetection(pts, np.zeros(len(pts), np.float32), {}, np.eye(4),
                        (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())), 1)
    photo = photo_from_array(view.image, "view.png")
    obs = Observation(photo, det, view.intrinsics)
    if segment:
        obs.masks = get_segmenter().segment(photo, det)
    v = torch.from_numpy(head.vertices)
    c = torch.from_numpy(head.coefficients)
    ident, expr = c[:model.num_identity], c[model.num_identity:]
    fit = SceneFit(view.intrinsics, torch.from_numpy(view.rotation).float(), torch.from_numpy(view.translation).float(),
                   ident, expr, v, model.vertices(ident), pts, {"landmark_error_px": 0.0}, {}, {})
    fit = fit_photometric(obs, fit, model, corr, albedo_model, PhotometricSettings(joint_steps=0))
    return obs, fit

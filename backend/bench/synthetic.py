"""Synthetic heads with known 3D truth: random ICT identity, expression, pose, lens, albedo and lighting.

Each sample is drawn from its own generator seeded by (seed, index), so a sample does not change
when N does, and a run is reproducible. Skin albedo is a set of UV maps the real pipeline made from
photos (London neutral set by default): those linear tiles *are* the truth albedo of the head, and the
truth file keeps them (8-bit sRGB, as the bundle stored them: decoding is exact). Lighting is random
second-order SH on camera-space normals; for HARD_LIGHT_SHARE of the samples (indices 1 and 3 of every
5, so any run of 3 or more has one) it is a hard directional light with cast shadows (a shadow map, see
render.shadow_factor) over a dim SH ambient. The draws for the hard light and for the relighting test
light come from generators of their own ((seed, index, 1) and (seed, index, 2)), so adding them left
every earlier draw (geometry, pose, lens, texture, background) as it was. Backgrounds are crops of
real photos with structure (wild_dev by default: corners, away from the face). The image is written as
a JPEG whose EXIF gives the 35 mm-equivalent focal length (as a phone camera would), and the truth as .npz.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..camera import Intrinsics, focal_px_from_35mm
from ..colour import decode_srgb8
from ..facemodel import NARROW_FACE_LAST_VERTEX, VERTEX_RANGES
from .render import DEFAULT_SKIN_SRGB8, Head, Light, eye_colours, mesh_from_model, render_head

IMAGE_SIDE = 512
YAW_MAX, PITCH_MAX, ROLL_MAX = 60.0, 25.0, 10.0   # degrees
FOCAL_35MM = (24, 85)                              # mm, uniform
FACE_FRACTION = (0.35, 0.55)                       # face-region height / image height
IRIS_COLOURS = ((0.25, 0.15, 0.08), (0.35, 0.25, 0.12), (0.25, 0.35, 0.45), (0.30, 0.38, 0.25), (0.12, 0.08, 0.05))
FACE_IDS = np.arange(NARROW_FACE_LAST_VERTEX + 1)
HARD_LIGHT_EVERY = (5, (1, 3))                     # index % 5 in (1, 3): 40 % of the samples
HARD_LIGHT_SHARE = len(HARD_LIGHT_EVERY[1]) / HARD_LIGHT_EVERY[0]
RELIGHT_HARD_SHARE = 0.4                           # of the relighting test lights
TILES = (1001, 1002)


@dataclass
class Sample:
    name: str
    image: Path
    truth: Path
    params: dict


def rotation_ypr(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(yaw) Rx(pitch) Rz(roll), degrees (camera.yaw_pitch_roll_deg inverts it)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def sample_expression(rng: np.random.Generator, names: list[str]) -> np.ndarray:
    """0-3 random expression shapes (both sides together 70% of the time), weights 0.2-0.9."""
    w = np.zeros(len(names), np.float32)
    stems = sorted({n[:-2] if n[-2:] in ("_L", "_R") else n for n in names})
    n = rng.choice(4, p=[0.2, 0.35, 0.3, 0.15])
    for stem in rng.choice(stems, size=n, replace=False):
        weight = rng.uniform(0.2, 0.9)
        if stem in names:
            w[names.index(stem)] = weight
        else:
            sides = ["_L", "_R"] if rng.random() < 0.7 else [rng.choice(["_L", "_R"])]
            for s in sides:
                w[names.index(stem + s)] = weight
    return w


EXPRESSION_SETS = ("random", "eyes_mouth")
LID_STEMS = ("eyeBlink", "eyeSquint", "eyeWide")


def sample_eyes_mouth(rng: np.random.Generator, names: list[str], base: np.ndarray) -> np.ndarray:
    """Closed eyes and a crooked mouth on top of `base` (the random set's draw for the same head, so its
    brows, cheeks and jaw stay): base's lid and mouth shapes are dropped, then
    - eyes: both closed, the left closed (a wink) or the right closed, one third each; a closed eye has
      eyeBlink 0.7-1.0, an open one 0-0.2;
    - mouth, one of (a quarter each): a one-sided smile (mouthSmile 0.4-0.9 on one side, 0-0.3 on the
      other), mouthLeft or mouthRight 0.4-0.9, a one-sided frown (mouthFrown 0.4-0.9, one side), or both
      sides smiling unevenly (0.2-0.5 and 0.6-1.0)."""
    w = np.asarray(base, np.float32).copy()
    drop = [i for i, n in enumerate(names) if n.startswith("mouth") or n.rstrip("_LR").rstrip("_") in LID_STEMS]
    w[drop] = 0.0
    side = ["_L", "_R"]

    def put(name: str, value: float) -> None:
        w[names.index(name)] = value
    eyes = rng.integers(3)                          # 0 both closed, 1 left closed, 2 right closed
    for j, s in enumerate(side):
        closed = eyes == 0 or eyes == j + 1
        put("eyeBlink" + s, rng.uniform(0.7, 1.0) if closed else rng.uniform(0.0, 0.2))
    mouth, first = rng.integers(4), int(rng.integers(2))
    a, b = side[first], side[1 - first]
    if mouth == 0:
        put("mouthSmile" + a, rng.uniform(0.4, 0.9))
        put("mouthSmile" + b, rng.uniform(0.0, 0.3))
    elif mouth == 1:
        put(("mouthLeft", "mouthRight")[first], rng.uniform(0.4, 0.9))
    elif mouth == 2:
        put("mouthFrown" + a, rng.uniform(0.4, 0.9))
    else:
        put("mouthSmile" + a, rng.uniform(0.2, 0.5))
        put("mouthSmile" + b, rng.uniform(0.6, 1.0))
    return w


def sample_sh(rng: np.random.Generator) -> np.ndarray:
    """(9, 3) SH lighting: ambient, a directional term from the camera's side, a little band 2."""
    amb = rng.uniform(0.7, 1.0)
    strength = rng.uniform(0.2, 0.8)
    d = rng.normal(size=3)
    d[2] = abs(d[2]) + 0.3
    d /= np.linalg.norm(d)
    tint = 1.0 + rng.normal(0.0, 0.04, size=3)
    c = np.zeros((9, 3))
    c[0] = amb / 0.282095
    c[1:4] = (strength / 0.488603) * np.array([d[1], d[2], d[0]])[:, None]
    c[4:9] = rng.normal(0.0, 0.08, size=(5, 1))
    return c * tint[None, :] * (1.05 / (amb + strength))


def has_hard_light(index: int) -> bool:
    return index % HARD_LIGHT_EVERY[0] in HARD_LIGHT_EVERY[1]


def sample_direction(rng: np.random.Generator, min_z: float, max_z: float) -> np.ndarray:
    """A unit camera-space direction towards a light on the camera's side (z = cos of its angle to the
    view axis in [min_z, max_z], azimuth uniform, a little more often from above)."""
    z = rng.uniform(min_z, max_z)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    r = np.sqrt(1.0 - z * z)
    d = np.array([r * np.cos(phi), r * np.sin(phi), z])
    d[1] = abs(d[1]) if rng.random() < 0.7 else d[1]
    return d / np.linalg.norm(d)


def sample_hard_light(rng: np.random.Generator) -> Light:
    """A directional light from well off the view axis (45-78 deg, so the nose and brows cast shadows
    the camera sees) of intensity 0.7-1.0 (shading units), slightly tinted, over a dim SH ambient
    (0.15-0.35 uniform plus a weak band 1 from elsewhere)."""
    d = sample_direction(rng, 0.2, 0.7)
    intensity = rng.uniform(0.7, 1.0) * (1.0 + rng.normal(0.0, 0.04, size=3))
    amb = rng.uniform(0.15, 0.35)
    fill = sample_direction(rng, 0.3, 1.0) * rng.uniform(0.0, 0.1)
    sh = np.zeros((9, 3))
    sh[0] = amb / 0.282095
    sh[1:4] = (np.array([fill[1], fill[2], fill[0]]) / 0.488603)[:, None]
    return Light(sh * (1.0 + rng.normal(0.0, 0.03, size=3))[None], d, intensity)


def relight_light(seed: int, index: int) -> Light:
    """The relighting test light of sample `index`: new and random (its own generator), SH as the
    captures' or, RELIGHT_HARD_SHARE of the time, a hard directional light with shadows."""
    rng = np.random.default_rng([seed, index, 2])
    return sample_hard_light(rng) if rng.random() < RELIGHT_HARD_SHARE else Light(sample_sh(rng))


def load_backgrounds(folder: Path | None, limit: int = 64) -> list[tuple[str, np.ndarray]]:
    if folder is None or not Path(folder).is_dir():
        return []
    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and len(out) < limit:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None and min(img.shape[:2]) >= 64:
                out.append((p.name, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
    return out


def background_crop(rng: np.random.Generator, sources, side: int) -> tuple[str, np.ndarray]:
    """A corner crop (a quarter of the short side, away from a centred face) of a random photo,
    flipped at random and scaled to side x side; or procedural noise when there are no photos."""
    if not sources:
        noise = rng.normal(0, 1, size=(side // 16, side // 16, 3))
        img = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
        img = (110 + 35 * img).clip(0, 255).astype(np.uint8)
        return "noise", img
    name, img = sources[rng.integers(len(sources))]
    h, w = img.shape[:2]
    c = max(32, min(h, w) // 4)
    corner = rng.integers(4)
    y0 = 0 if corner < 2 else h - c
    x0 = 0 if corner % 2 == 0 else w - c
    crop = img[y0:y0 + c, x0:x0 + c]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.GaussianBlur(cv2.resize(crop, (side, side), interpolation=cv2.INTER_CUBIC), (0, 0), 1.0)
    return f"{name}:corner{corner}", crop


def make_sample(index: int, seed: int, model, textures: list[tuple[str, dict]], backgrounds, out_dir: Path,
                side: int = IMAGE_SIDE, exif_focal: bool = True, yaw_deg: float | None = None,
                expression_set: str = "random") -> Sample:
    """Render sample `index` into out_dir/images and its truth into out_dir/truth. `yaw_deg` replaces the
    drawn yaw (every draw stays as it was): a profile beyond the set's YAW_MAX, for robustness tests.
    `expression_set` "eyes_mouth" gives the same head (identity, pose, lens, light, ...) closed eyes and a
    crooked mouth (sample_eyes_mouth, from a generator of its own, (seed, index, 3))."""
    import torch
    rng = np.random.default_rng([seed, index])
    identity = rng.normal(size=model.num_identity).astype(np.float32)
    expression = sample_expression(rng, model.expression_names)
    if expression_set == "eyes_mouth":
        expression = sample_eyes_mouth(np.random.default_rng([seed, index, 3]), model.expression_names, expression)
    elif expression_set != "random":
        raise ValueError(f"unknown expression set {expression_set!r} (one of {EXPRESSION_SETS})")
    yaw, pitch, roll = rng.uniform(-YAW_MAX, YAW_MAX), rng.uniform(-PITCH_MAX, PITCH_MAX), rng.uniform(-ROLL_MAX, ROLL_MAX)
    if yaw_deg is not None:
        yaw = float(yaw_deg)
    f35 = int(rng.integers(FOCAL_35MM[0], FOCAL_35MM[1] + 1))
    frac = rng.uniform(*FACE_FRACTION)
    jitter = rng.uniform(-0.08, 0.08, size=2) * side
    sh = sample_sh(rng)
    tex_name, tiles8 = textures[rng.integers(len(textures))] if textures else ("flat", {})
    bg_name, bg = background_crop(rng, backgrounds, side)
    iris = np.asarray(IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))])
    noise_sigma = rng.uniform(0.5, 2.5)
    jpeg_quality = int(rng.integers(80, 96))

    with torch.no_grad():
        verts = model.vertices(torch.from_numpy(identity).to(model.device),
                               torch.from_numpy(expression).to(model.device)).cpu().numpy()
    k = Intrinsics(focal_px_from_35mm(f35, side, side), side / 2, side / 2, side, side)
    rot = rotation_ypr(yaw, pitch, roll)
    face = verts[FACE_IDS]
    centre = (face.min(0) + face.max(0)) / 2
    height = face[:, 1].max() - face[:, 1].min()
    dist = k.focal_px * height / (frac * side)
    offset = np.array([jitter[0] * dist / k.focal_px, -jitter[1] * dist / k.focal_px, -dist])
    trans = offset - rot @ centre

    light = sample_hard_light(np.random.default_rng([seed, index, 1])) if has_hard_light(index) else Light(sh)
    rest = model.neutral.cpu().numpy()
    eyes = eye_colours(rest, [VERTEX_RANGES["eyeball_left"], VERTEX_RANGES["eyeball_right"]], iris)
    tiles = {t: decode_srgb8(img) for t, img in tiles8.items()}
    rend = render_head(mesh_from_model(model, verts), k, rot, trans, tiles, light, bg, eye_albedo=eyes)
    img, covered = rend.image, rend.covered
    img = np.clip(img.astype(np.float32) + rng.normal(0, noise_sigma, img.shape), 0, 255).astype(np.uint8)

    name = f"synth_{index:04d}"
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    image_path = out_dir / "images" / f"{name}.jpg"
    pil = Image.fromarray(img)
    exif = Image.Exif()
    if exif_focal:
        exif.get_ifd(0x8769)[0xA405] = f35
    pil.save(image_path, quality=jpeg_quality, exif=exif)
    params = {"side": side, "yaw_deg": yaw, "pitch_deg": pitch, "roll_deg": roll, "focal_35mm": f35, "focal_px": k.focal_px,
              "exif_focal": exif_focal, "face_fraction": frac, "texture": tex_name, "background": bg_name,
              "expression_set": expression_set,
              "expressions": {n: float(w) for n, w in zip(model.expression_names, expression) if w > 0},
              "noise_sigma": noise_sigma, "jpeg_quality": jpeg_quality, "head_pixels": int(covered.sum()),
              "face_skin_pixels": int(rend.face_skin.sum()), "light": light.to_dict()}
    truth_path = out_dir / "truth" / f"{name}.npz"
    # The truth albedo: the tiles themselves (8-bit sRGB as stored; decode_srgb8 gives the linear values
    # the head was rendered with). `sh` is the SH part of the light (all of it, or a hard light's ambient).
    albedo = {f"albedo_{t}": img for t, img in tiles8.items()}
    np.savez_compressed(truth_path, vertices=verts.astype(np.float32), identity=identity, expression=expression,
                        rotation=rot, translation=trans, focal_px=k.focal_px, sh=light.sh,
                        light=json.dumps(light.to_dict()), params=json.dumps(params), **albedo)
    return Sample(name, image_path, truth_path, params)


def texture_sources(session, photos: list[Path], cache: Path) -> list[tuple[str, dict]]:
    """Diffuse tiles (8-bit sRGB, as stored) made by the real pipeline from `photos`, cached as bundles
    under `cache`."""
    from ..bundle import is_bundle, load_bundle
    out = []
    for p in photos:
        bundle = cache / p.stem
        if not is_bundle(bundle):
            ans = session.reconstruct(str(p.absolute()), bundle)
            if ans.get("event") != "result":
                print(f"bench: texture photo {p.name} failed: {ans.get('code')} {ans.get('message')}")
                continue
        out.append((p.name, load_bundle(bundle).tiles("diffuse")))
    return out


def vertex_errors_mm(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-vertex error (mm) over the narrow face region after a similarity alignment."""
    from .metrics import aligned_vertex_errors
    return 10.0 * aligned_vertex_errors(np.asarray(pred)[FACE_IDS], np.asarray(truth)[FACE_IDS])


def eyes_mouth_errors_mm(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Per eye [L, R] (ICT's sides: L = the subject's left, +x): the eyelid-opening error and the true
    opening; per mouth corner [L, R]: its error after the face error's similarity alignment (all mm)."""
    from .metrics import eye_closure_errors, eyelid_openings, mouth_corner_errors
    pred, truth = np.asarray(pred), np.asarray(truth)
    return {"eye_closure_mm": (10.0 * eye_closure_errors(pred, truth)).tolist(),
            "true_opening_mm": (10.0 * eyelid_openings(truth)).tolist(),
            "mouth_corner_mm": (10.0 * mouth_corner_errors(pred, truth, FACE_IDS)).tolist()}


def truth_light(truth) -> Light:
    """The light a sample was rendered with (truth files from before hard lights hold only `sh`)."""
    if "light" in truth.files:
        return Light.from_dict(json.loads(str(truth["light"])))
    return Light(np.asarray(truth["sh"], np.float64))


def truth_head(truth_path: Path, model) -> Head:
    """The true head of a sample: true mesh, camera and pose, the truth albedo as its tiles (a flat
    skin colour where the sample had none), and no fitted lighting."""
    t = np.load(truth_path)
    side = json.loads(str(t["params"])).get("side", IMAGE_SIDE)
    k = Intrinsics(float(t["focal_px"]), side / 2, side / 2, side, side)
    tiles = {}
    for tile in TILES:
        key = f"albedo_{tile}"
        img = t[key] if key in t.files else np.broadcast_to(np.asarray(DEFAULT_SKIN_SRGB8, np.uint8), (8, 8, 3))
        tiles[tile] = decode_srgb8(img)
    return Head(mesh_from_model(model, t["vertices"]), k, np.asarray(t["rotation"]), np.asarray(t["translation"]),
                tiles, {}, None, "truth")

"""Synthetic heads of known detail normals, specular level, roughness and iris colour: the truth that the
measured maps (backend/skin_maps.py, backend/eyes.py) are calibrated on (one seed) and judged against (a
seed they were not tuned on). docs/maps.md has the method and the tables.

    python -m backend.bench.maps_truth --seed 2 --heads 4 [--textures DIR] [--out DIR]
    python -m backend.bench.maps_truth --tune --seed 1 --heads 4      # the calibration grid

A head (`make_head`): a random ICT identity, near-frontal pose, a skin albedo made by the real pipeline
from a London photo (`--textures`: de-lit bundles, as the bench's texture cache; a flat skin colour
without), and truth maps on its UV tiles:
- relief: a height field (cm) of three bands (pores 0.8 mm, fine lines 1.5 mm, creases 4 mm; random
  orientation and per-region amplitude), whose tangent-space normals (skin_maps.height_to_normal, the
  convention tests/blender/test_maps_blender.py checks against Cycles) and ambient occlusion (horizon
  based, from the same height field) are what the renderer uses;
- specular level and roughness: random per region (level 0.25-1.0, roughness 0.3-0.7) with smooth
  variation inside regions;
- iris: one of the bench's iris colours.
It is rendered by this module's renderer (the project's rasterizer, per-pixel tangent frames, the
normal map, Lambert + ambient x occlusion + a GGX lobe, Principled's alpha = roughness^2 and F0 = 2 x
0.0278 x level) under a key light and an ambient fill, 2x supersampled, with sensor noise, as an 8-bit
photo. The pipeline then fits the lighting (photometric fit on the known geometry), makes the de-lit
texture with its measured maps, and is scored:
- normals: angle to the truth normal over the well-seen face texels, against the flat map;
- specular: |level - truth| and |roughness - truth| over the same texels, against the constants 0.5;
- relit: the head re-rendered under other lights (a grazing side light, a top light) with the truth
  maps, the measured maps, flat normals, constant specular, and both constants (v0); relative RMS
  radiance error over the face's skin pixels, and over its highlights (truth specular > 10 % of diffuse);
- eyes: the de-lit iris colour against the true iris albedo (CIEDE2000);
- diffuse: the de-lit diffuse with the photo's highlights kept and taken out (backend/highlights.py)
  against the true albedo (per-channel gain matched), over the face, its highlight cores and the rest,
  and the head relit with each as its albedo.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from .. import render, skin_maps
from ..camera import Intrinsics, focal_px_from_35mm
from ..colour import decode_srgb8, encode_srgb8, srgb_to_linear
from ..facemodel import NARROW_FACE_LAST_VERTEX, VERTEX_RANGES
from .render import PART_ALBEDO, _raster, eye_colours, mesh_from_model
from .synthetic import IRIS_COLOURS, rotation_ypr

SIDE = 1024
TEX = 1024
RELIEF_BANDS = ((0.08, 0.07, 1.0), (0.15, 0.12, 3.0), (0.4, 0.10, 2.0))   # (wavelength cm, rms slope, anisotropy)
LEVEL_RANGE = (0.25, 1.0)
ROUGH_RANGE = (0.3, 0.7)
AO_DIRECTIONS = 8
AO_RADIUS_CM = 0.25
IRIS_ANGLE_DEG = 24.0          # bench.render.eye_colours: the iris ends 24 degrees off the eyeball's axis
RELIGHTS = {"grazing": ((80.0, 5.0), 2.4, 0.04), "top": ((0.0, 60.0), 2.2, 0.08)}  # (az, el) deg, E, ambient


@dataclass
class Light:
    direction: np.ndarray      # (3,) camera space, towards the light
    irradiance: np.ndarray     # (3,) rgb of the key light
    ambient: np.ndarray        # (3,) rgb radiance of a uniform environment (diffuse only)

    @classmethod
    def from_angles(cls, az_deg: float, el_deg: float, e: float, ambient: float, tint=(1.0, 1.0, 1.0)):
        az, el = math.radians(az_deg), math.radians(el_deg)
        d = np.array([math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)])
        t = np.asarray(tint, dtype=np.float64)
        return cls(d, e * t, ambient * t)


@dataclass
class TruthMaps:
    height: dict[int, np.ndarray]
    normal: dict[int, np.ndarray]
    ao: dict[int, np.ndarray]
    level: dict[int, np.ndarray]
    roughness: dict[int, np.ndarray]


@dataclass
class TruthHead:
    name: str
    image: np.ndarray          # (H, W, 3) uint8 sRGB
    k: Intrinsics
    rotation: np.ndarray
    translation: np.ndarray
    vertices: np.ndarray
    albedo: dict[int, np.ndarray]
    maps: TruthMaps
    light: Light
    iris_linear: np.ndarray
    iris_points: np.ndarray    # (10, 2) photo px: MediaPipe 468-477
    params: dict = field(default_factory=dict)
    view: "View | None" = None
    identity: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Truth maps


def band_noise(rng: np.random.Generator, size: int, wavelength_texels: float, anisotropy: float = 1.0,
               angle: float = 0.0) -> np.ndarray:
    """(size, size) zero-mean, unit-RMS noise of one wavelength band (log-normal in frequency), stretched
    by `anisotropy` along `angle` (long features across it)."""
    f = np.fft.fftfreq(size)
    fx, fy = np.meshgrid(f, f)
    c, s = math.cos(angle), math.sin(angle)
    a, b = c * fx + s * fy, -s * fx + c * fy
    r = np.hypot(a * anisotropy, b) + 1e-9
    filt = np.exp(-0.5 * (np.log(r * wavelength_texels) / 0.35) ** 2)
    out = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * filt))
    return out / max(float(out.std()), 1e-12)


def ambient_occlusion(height: np.ndarray, texel_cm: float, radius_cm: float = AO_RADIUS_CM) -> np.ndarray:
    """Horizon-based ambient occlusion of a height field (cm) on a grid of `texel_cm`: per direction the
    highest horizon elevation within `radius_cm`, visible cosine-weighted fraction cos^2 of it, averaged."""
    steps = max(1, int(round(radius_cm / texel_cm)))
    h = np.asarray(height, dtype=np.float32)
    total = np.zeros_like(h)
    for k in range(AO_DIRECTIONS):
        a = 2 * math.pi * k / AO_DIRECTIONS
        dx, dy = math.cos(a), math.sin(a)
        best = np.zeros_like(h)
        for s in range(1, steps + 1):
            ox, oy = int(round(dx * s)), int(round(dy * s))
            dist = math.hypot(ox, oy) * texel_cm
            if dist == 0:
                continue
            shifted = np.roll(np.roll(h, -oy, axis=0), -ox, axis=1)
            best = np.maximum(best, (shifted - h) / dist)
        total += 1.0 / (1.0 + best * best)          # cos^2(atan(tan)) = 1 / (1 + tan^2)
    return total / AO_DIRECTIONS


def truth_maps(rng: np.random.Generator, model, frames: dict[int, skin_maps.TileFrames]) -> TruthMaps:
    R = len(skin_maps.REGION_NAMES)
    amp = rng.uniform(0.6, 1.4, size=(R, len(RELIEF_BANDS)))
    amp[skin_maps.REGION_NAMES.index("lips")] *= 0.6
    levels = rng.uniform(*LEVEL_RANGE, size=R)
    roughs = rng.uniform(*ROUGH_RANGE, size=R)
    angles = rng.uniform(0, math.pi, size=len(RELIEF_BANDS))
    out = TruthMaps({}, {}, {}, {}, {})
    for tile, fr in frames.items():
        S = fr.raster.size
        texel_cm = skin_maps.texel_size_cm(fr)
        w = fr.regions.astype(np.float64)
        h = np.zeros(S * S)
        for b, (lam, slope, aniso) in enumerate(RELIEF_BANDS):
            noise = band_noise(rng, S, lam / texel_cm, aniso, angles[b]).reshape(-1)
            gain = np.zeros(S * S)
            gain[fr.texel] = w @ amp[:, b]
            h += noise * gain * slope * lam / (2 * math.pi)
        h = h.reshape(S, S)
        out.height[tile] = h
        out.normal[tile] = skin_maps.height_to_normal(h, fr)
        out.ao[tile] = ambient_occlusion(h, texel_cm)
        var = band_noise(rng, S, 3.0 / texel_cm)
        lv = np.full(S * S, 0.5)
        ro = np.full(S * S, 0.5)
        lv[fr.texel] = w @ levels
        ro[fr.texel] = w @ roughs
        out.level[tile] = np.clip(lv.reshape(S, S) * (1.0 + 0.12 * var), 0.05, 1.0)
        out.roughness[tile] = np.clip(ro.reshape(S, S) + 0.04 * var, 0.2, 0.8)
    return out


# ---------------------------------------------------------------------------------------------
# Rendering with normal maps and a GGX lobe


@dataclass
class View:
    """A head's per-pixel geometry at the supersampled resolution, computed once and shaded many times."""
    size: tuple[int, int, int, int]    # H, W (supersampled), h, w (output)
    pixel: np.ndarray                  # (N,) flat supersampled pixel of each fragment
    skin: np.ndarray                   # fragment indices of skin
    taps: dict                         # tile -> (selection into skin, flat texel indices (4, n), weights (4, n))
    normal: np.ndarray                 # (n_skin, 3) model-space interpolated normal
    tangent: np.ndarray
    bitangent: np.ndarray
    view: np.ndarray                   # (n_skin, 3) camera space, towards the camera
    rotation: np.ndarray
    other: np.ndarray                  # fragment indices of eyes, teeth, mouth
    other_albedo: np.ndarray           # (n_other, 3) linear
    other_normal: np.ndarray           # (n_other, 3) camera space
    face: np.ndarray                   # (N,) bool: skin of the narrow face


def head_view(model, vertices: np.ndarray, k: Intrinsics, rot: np.ndarray, trans: np.ndarray, iris_srgb=None,
              tex_size: int = TEX, supersample: int = 2) -> View:
    mesh = mesh_from_model(model, vertices)
    h, w = k.height, k.width
    H, W = h * supersample, w * supersample
    frags, _ = _raster(mesh, k.scaled(supersample), rot, trans, H, W)
    t = frags.triangle.numpy()
    bary = frags.bary.numpy().astype(np.float64)
    part = mesh.triangle_part[t]
    tri_v = mesh.triangles[t]
    rot = np.asarray(rot, dtype=np.float64)
    v64 = np.asarray(vertices, dtype=np.float64)
    topo = model.topology
    vn = skin_maps._vertex_normals(v64, topo.triangles)
    n_model = skin_maps._unit(np.einsum("nk,nkc->nc", bary, vn[tri_v]))
    p_cam = np.einsum("nk,nkc->nc", bary, v64[tri_v]) @ rot.T + np.asarray(trans)
    view = -p_cam / np.linalg.norm(p_cam, axis=1, keepdims=True)
    skin = np.flatnonzero(part == mesh.part_names.index("skin"))
    tri = t[skin]
    uv = np.einsum("nk,nkc->nc", bary[skin], mesh.triangle_uvs[tri].astype(np.float64))
    tile_of = np.floor(mesh.triangle_uvs[tri, :, 0].min(1)).astype(np.int64) + 1001
    pu_all, pv_all = skin_maps.triangle_jacobians(v64, topo.corner_uvs, topo.triangles, topo.triangle_corners)
    nm = n_model[skin]
    pu, pv = pu_all[tri], pv_all[tri]
    tt = skin_maps._unit(pu - nm * skin_maps._dot(nm, pu)[:, None])
    bt = np.cross(nm, tt)
    bt *= np.where(skin_maps._dot(bt, pv) < 0, -1.0, 1.0)[:, None]
    taps = {}
    for tile in skin_maps.TILES:
        sel = np.flatnonzero(tile_of == tile)
        x = np.clip((uv[sel, 0] - (tile - 1001)) * tex_size - 0.5, 0, tex_size - 1)
        y = np.clip((1.0 - uv[sel, 1]) * tex_size - 0.5, 0, tex_size - 1)
        x0 = np.minimum(np.floor(x).astype(np.int64), tex_size - 2)
        y0 = np.minimum(np.floor(y).astype(np.int64), tex_size - 2)
        fx, fy = x - x0, y - y0
        idx = np.stack([y0 * tex_size + x0, y0 * tex_size + x0 + 1, (y0 + 1) * tex_size + x0, (y0 + 1) * tex_size + x0 + 1])
        wts = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
        taps[tile] = (sel, idx, wts)
    other = np.flatnonzero(part != mesh.part_names.index("skin"))
    alb = np.zeros((len(other), 3))
    for name, rgb in PART_ALBEDO.items():
        alb[part[other] == mesh.part_names.index(name)] = srgb_to_linear(np.asarray(rgb))
    eyes = part[other] == mesh.part_names.index("eyes")
    if iris_srgb is not None and eyes.any():
        cols = eye_colours(model.neutral.cpu().numpy(), [VERTEX_RANGES["eyeball_left"], VERTEX_RANGES["eyeball_right"]],
                           np.asarray(iris_srgb))
        alb[eyes] = srgb_to_linear((cols[tri_v[other[eyes]]] * bary[other[eyes], :, None]).sum(1))
    face = np.zeros(len(t), bool)
    face[skin] = mesh.triangle_face[tri]
    return View((H, W, h, w), frags.pixel.numpy(), skin, taps, nm, tt, bt, view[skin], rot, other, alb,
                n_model[other] @ rot.T, face)


def _sample(view: View, tiles: dict[int, np.ndarray], channels: int) -> np.ndarray:
    out = np.zeros((len(view.skin), channels))
    for tile, (sel, idx, wts) in view.taps.items():
        if tile not in tiles or len(sel) == 0:
            continue
        flat = np.asarray(tiles[tile], dtype=np.float64).reshape(-1, channels)
        out[sel] = sum(wts[j][:, None] * flat[idx[j]] for j in range(4))
    return out


@dataclass
class Rendered:
    radiance: np.ndarray       # (H, W, 3) linear, at the output resolution
    face_skin: np.ndarray      # (H, W) bool
    specular: np.ndarray       # (H, W) luminance of the specular part
    diffuse: np.ndarray        # (H, W) luminance of the diffuse part


def shade(view: View, albedo: dict, normal: dict | None, ao: dict | None, level: dict | None, rough: dict | None,
          light: Light, background: np.ndarray | None = None) -> Rendered:
    """Linear radiance of the head: skin = albedo (E/pi max(n'.l, 0) + ambient * ao) + E * GGX(n', level,
    roughness), n' the normal map in the per-pixel tangent frame (constants where a map is None: flat,
    no occlusion, level 0.5, roughness 0.5); eyes, teeth and mouth diffuse with plain colours."""
    H, W, h, w = view.size
    n = len(view.skin)
    a = _sample(view, albedo, 3)
    nm = view.normal
    if normal is not None:
        tn = _sample(view, normal, 3)
        nm = skin_maps._unit(tn[:, 0:1] * view.tangent + tn[:, 1:2] * view.bitangent + tn[:, 2:3] * nm)
    n_cam = nm @ view.rotation.T
    occ = _sample(view, ao, 1)[:, 0] if ao is not None else np.ones(n)
    lv = _sample(view, level, 1)[:, 0] if level is not None else np.full(n, 0.5)
    ro = _sample(view, rough, 1)[:, 0] if rough is not None else np.full(n, 0.5)
    cos = np.clip(n_cam @ light.direction, 0.0, None)
    dif = a * (light.irradiance[None] / math.pi * cos[:, None] + light.ambient[None] * occ[:, None])
    spec = skin_maps.ggx_specular(n_cam, view.view, light.direction, ro, skin_maps.f0_from_level(lv))
    N = len(view.pixel)
    radiance = np.zeros((N, 3))
    spec_l, dif_l = np.zeros(N), np.zeros(N)
    radiance[view.skin] = dif + spec[:, None] * light.irradiance[None]
    spec_l[view.skin] = spec * float(light.irradiance @ skin_maps.LUMA)
    dif_l[view.skin] = dif @ skin_maps.LUMA
    cos_o = np.clip(view.other_normal @ light.direction, 0.0, None)
    radiance[view.other] = view.other_albedo * (light.irradiance[None] / math.pi * cos_o[:, None] + light.ambient[None])
    img = np.zeros((H * W, 3))
    if background is not None:
        img[:] = decode_srgb8(cv2.resize(background, (W, H), interpolation=cv2.INTER_LINEAR)).reshape(-1, 3)
    img[view.pixel] = radiance
    extra = np.zeros((H * W, 3))
    extra[view.pixel, 0] = view.face
    extra[view.pixel, 1] = spec_l
    extra[view.pixel, 2] = dif_l
    down = lambda x: cv2.resize(x.reshape(H, W, 3).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)  # noqa: E731
    e = down(extra)
    return Rendered(down(img), e[..., 0] > 0.99, e[..., 1], e[..., 2])


# ---------------------------------------------------------------------------------------------
# Heads


def albedo_sources(folder: Path | None, limit: int = 8) -> list[tuple[str, dict]]:
    """Linear diffuse tiles of de-lit bundles in `folder` (the bench's texture cache)."""
    from ..bundle import is_bundle, load_bundle
    from .render import linear_tiles
    out = []
    if folder is None or not Path(folder).is_dir():
        return out
    for b in sorted(Path(folder).iterdir()):
        if len(out) >= limit:
            break
        if is_bundle(b):
            tiles = linear_tiles(load_bundle(b), "diffuse")
            if all(t in tiles for t in skin_maps.TILES):
                out.append((b.name, tiles))
    return out


def flat_albedo(rng: np.random.Generator, size: int = TEX) -> dict[int, np.ndarray]:
    skin = srgb_to_linear(np.array([0.78, 0.6, 0.5]) * rng.uniform(0.8, 1.05))
    return {t: np.broadcast_to(skin.astype(np.float32), (size, size, 3)).copy() for t in skin_maps.TILES}


def _resized(tiles: dict[int, np.ndarray], size: int) -> dict[int, np.ndarray]:
    return {t: (img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
            for t, img in tiles.items()}


def iris_landmarks(model, vertices: np.ndarray, k: Intrinsics, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """(10, 2) px of MediaPipe's iris points 468-477 on the synthetic eyes: each iris's centre (the
    outer shell's front pole) and four points of its edge (IRIS_ANGLE_DEG off the axis, as eye_colours)."""
    from ..eyes import _outer_shell
    rest = model.neutral.cpu().numpy().astype(np.float64)
    pts = []
    for name in ("eyeball_right", "eyeball_left"):       # 468.. = the subject's right eye
        lo, hi = VERTEX_RANGES[name]
        ids = _outer_shell(model, name)
        centre = rest[lo:hi + 1].mean(0)
        d = rest[ids] - centre
        ang = np.degrees(np.arccos(np.clip(d[:, 2] / np.linalg.norm(d, axis=1), -1, 1)))
        pole = ids[int(np.argmin(ang))]
        ring = ids[np.abs(ang - IRIS_ANGLE_DEG) < 1.5]
        dr = rest[ring] - centre
        edge = [ring[int(np.argmax(dr[:, 0]))], ring[int(np.argmax(dr[:, 1]))], ring[int(np.argmin(dr[:, 0]))],
                ring[int(np.argmin(dr[:, 1]))]]
        pts += [pole] + edge
    cam = render.to_camera(torch.from_numpy(vertices[pts]), torch.from_numpy(rot), torch.from_numpy(trans))
    return render.project(cam, k)[:, :2].numpy()


def make_head(index: int, seed: int, model, sources: list, side: int = SIDE, tex: int = TEX) -> TruthHead:
    rng = np.random.default_rng([seed, index, 9])
    identity = (rng.normal(size=model.num_identity) * 0.7).astype(np.float32)
    with torch.no_grad():
        verts = model.vertices(torch.from_numpy(identity)).cpu().numpy().astype(np.float64)
    yaw, pitch, roll = rng.uniform(-20, 20), rng.uniform(-8, 8), rng.uniform(-4, 4)
    rot = rotation_ypr(yaw, pitch, roll)
    k = Intrinsics(focal_px_from_35mm(int(rng.integers(50, 86)), side, side), side / 2, side / 2, side, side)
    face = verts[:NARROW_FACE_LAST_VERTEX + 1]
    centre = (face.min(0) + face.max(0)) / 2
    dist = k.focal_px * (face[:, 1].max() - face[:, 1].min()) / (0.62 * side)
    trans = np.array([0.0, 0.0, -dist]) - rot @ centre
    if sources:
        src_name, albedo = sources[int(rng.integers(len(sources)))]
        albedo = _resized(albedo, tex)
    else:
        src_name, albedo = "flat", flat_albedo(rng, tex)
    frames = skin_maps.texel_frames(model, verts, tex)
    maps = truth_maps(rng, model, frames)
    light = Light.from_angles(rng.uniform(-50, 50), rng.uniform(10, 45), rng.uniform(1.0, 2.6), rng.uniform(0.1, 0.45),
                              1.0 + rng.normal(0, 0.03, size=3))
    iris = np.asarray(IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))])
    bg = np.clip(110 + 30 * cv2.resize(rng.normal(size=(side // 32, side // 32, 3)), (side, side)), 0, 255).astype(np.uint8)
    view = head_view(model, verts, k, rot, trans, iris, tex_size=tex)
    r = shade(view, albedo, maps.normal, maps.ao, maps.level, maps.roughness, light, bg)
    noisy = encode_srgb8(np.clip(r.radiance, 0, 1)).astype(np.float32) + rng.normal(0, 1.0, r.radiance.shape)
    image = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    params = {"yaw": yaw, "pitch": pitch, "roll": roll, "albedo": src_name, "side": side, "tex": tex, "light_dir": light.direction.tolist(),
              "light_e": light.irradiance.tolist(), "ambient": light.ambient.tolist()}
    return TruthHead(f"maps_{seed}_{index}", image, k, rot, trans, verts, albedo, maps, light,
                     srgb_to_linear(iris), iris_landmarks(model, verts, k, rot, trans), params, view, identity)


# ---------------------------------------------------------------------------------------------
# The pipeline on a head


def run_pipeline(head: TruthHead, model, corr, albedo_model, size: int | None = None, raw: bool = False):
    """The de-lit texture (with the measured maps and eyes) of a head of known pose and shape: lighting
    and albedo from the photometric fit, the geometry as it is (as tests/test_delit.py). With `raw`, also
    the de-lit diffuse tiles as they were before the highlights were taken out (a 4th value)."""
    from ..imageio import photo_from_array
    from ..landmarks import FaceDetection
    from ..photometric import PhotometricSettings, fit_photometric
    from ..scene import Observation, SceneFit
    from ..texture import delit_texture
    v = head.vertices
    pts = corr.on_surface(v)
    rot_t, trans_t = torch.from_numpy(head.rotation).float(), torch.from_numpy(head.translation).float()
    uv = render.project(render.to_camera(torch.from_numpy(pts).float(), rot_t, trans_t), head.k)[:, :2].numpy()
    uv[468:478] = head.iris_points
    box = (float(uv[:468, 0].min()), float(uv[:468, 1].min()), float(uv[:468, 0].max()), float(uv[:468, 1].max()))
    det = FaceDetection(uv.astype(np.float32), np.zeros(478, np.float32), {}, np.eye(4), box, 1)
    obs = Observation(photo_from_array(head.image, head.name + ".png"), det, head.k)
    vt = torch.from_numpy(v).float()
    ident = torch.from_numpy(head.identity).float() if head.identity is not None else torch.zeros(model.num_identity)
    # the photometric fit rebuilds the vertices from the coefficients: the truth's identity, no expression
    fit = SceneFit(head.k, rot_t, trans_t, ident, torch.zeros(model.num_expression), vt, vt,
                   uv, {"landmark_error_px": 0.0}, {}, {})
    lit = fit_photometric(obs, fit, model, corr, albedo_model, PhotometricSettings(joint_steps=0))
    size = size or head.params.get("tex", TEX)
    if not raw:
        return obs, lit, delit_texture(obs, lit, model, size)
    from ..texture import delit_recipe, make_texture      # delit_texture's two steps, the first one kept
    plain = make_texture(obs, lit, model, size, delit_recipe(obs, lit))
    return obs, lit, skin_maps.with_measured_maps(plain, obs, lit, model), plain.maps["diffuse"]


# ---------------------------------------------------------------------------------------------
# Scores


def eval_mask(tex, frames: dict, tile: int = 1001) -> np.ndarray:
    """(N,) bool over the tile's texels: well seen (visibility > 0.5), narrow face, not brows."""
    fr = frames[tile]
    vis = fr.at(tex.maps["visibility"][tile])
    tri = fr.raster.triangle
    narrow = (tri_vertices_max(fr) <= NARROW_FACE_LAST_VERTEX)
    return (vis > 0.5) & narrow & (fr.regions[:, skin_maps.REGION_NAMES.index("brows")] < 0.5)


def tri_vertices_max(fr) -> np.ndarray:
    from ..facemodel import load_face_model
    return load_face_model().topology.triangles[fr.raster.triangle].max(1)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, 1), -1.0, 1.0)))


def map_scores(head: TruthHead, maps: dict, tex, frames: dict, tile: int = 1001) -> dict:
    fr = frames[tile]
    sel = eval_mask(tex, frames, tile)
    truth_n = fr.at(head.maps.normal[tile])[sel]
    ours_n = fr.at(maps["normal"][tile])[sel]
    flat = np.tile([0.0, 0.0, 1.0], (len(truth_n), 1))
    out = {"texels": int(sel.sum()),
           "normal_deg": float(angle_deg(ours_n, truth_n).mean()), "normal_flat_deg": float(angle_deg(flat, truth_n).mean())}
    for role, truth in (("specular", head.maps.level), ("roughness", head.maps.roughness)):
        t = fr.at(truth[tile])[sel]
        out[f"{role}_mae"] = float(np.abs(fr.at(maps[role][tile])[sel] - t).mean())
        out[f"{role}_const_mae"] = float(np.abs(0.5 - t).mean())
    return out


def relit_scores(model, head: TruthHead, maps: dict, maps_priors: dict | None = None,
                 diffuse: dict | None = None) -> dict:
    """Relative RMS radiance error of re-renders under RELIGHTS, over the face's skin and its highlights.
    The maps' variants use the true albedo; `diffuse` (name -> (tiles, gain)) adds the measured maps with
    a de-lit diffuse (divided by its gain, albedo_gain) as the albedo: the bundle as it relights."""
    out = {}
    for name, ((az, el), e, amb) in RELIGHTS.items():
        light = Light.from_angles(az, el, e, amb)
        view = head.view or head_view(model, head.vertices, head.k, head.rotation, head.translation,
                                      tex_size=head.params.get("tex", TEX))
        truth = shade(view, head.albedo, head.maps.normal, head.maps.ao, head.maps.level, head.maps.roughness, light)
        a = head.albedo
        variants = {"measured": (a, maps["normal"], maps["specular"], maps["roughness"]),
                    "flat_normals": (a, None, maps["specular"], maps["roughness"]),
                    "constant_specular": (a, maps["normal"], None, None),
                    "v0_constants": (a, None, None, None)}
        if maps_priors is not None:
            variants["prior_specular"] = (a, maps["normal"], maps_priors["specular"], maps_priors["roughness"])
        for key, (tiles, gain) in (diffuse or {}).items():
            scaled = {t: np.asarray(img, np.float64) / gain for t, img in tiles.items()}
            variants[f"diffuse_{key}"] = (scaled, maps["normal"], maps["specular"], maps["roughness"])
        face = truth.face_skin
        hl = face & (truth.specular > 0.1 * np.maximum(truth.diffuse, 1e-4))
        ref = float(np.sqrt(np.mean(truth.radiance[face] ** 2)))
        for key, (alb, n, lv, ro) in variants.items():
            r = shade(view, alb, n, None, lv, ro, light)     # the bundle has no occlusion map
            err = (r.radiance - truth.radiance)
            out[f"{name}_{key}"] = float(np.sqrt(np.mean(err[face] ** 2)) / ref)
            out[f"{name}_{key}_highlights"] = float(np.sqrt(np.mean(err[hl] ** 2)) / ref) if hl.sum() > 50 else None
        out[f"{name}_highlight_pixels"] = int(hl.sum())
    return out


def truth_light_at_texels(head: TruthHead, fr, tile: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """At a tile's texels (frames `fr`, the head's own vertices): the truth's specular radiance (N,)
    (luminance) and its diffuse shading (N, 3) under the photo's light (relief normals, occlusion)."""
    tn = fr.at(head.maps.normal[tile]).astype(np.float64)
    n_true = skin_maps._unit(tn[:, 0:1] * fr.tangent + tn[:, 1:2] * fr.bitangent + tn[:, 2:3] * fr.normal) @ head.rotation.T
    p = fr.position.astype(np.float64) @ head.rotation.T + head.translation
    v = -p / np.linalg.norm(p, axis=1, keepdims=True)
    e = head.light.irradiance
    spec = float(e @ skin_maps.LUMA) * skin_maps.ggx_specular(
        n_true, v, head.light.direction, fr.at(head.maps.roughness[tile]),
        skin_maps.f0_from_level(fr.at(head.maps.level[tile])))
    cos = np.clip(n_true @ head.light.direction, 0.0, None)
    return spec, e[None] / math.pi * cos[:, None] + head.light.ambient[None] * fr.at(head.maps.ao[tile])[:, None]


def albedo_gain(head: TruthHead, diffuse: dict, tex, frames: dict, tile: int = 1001) -> np.ndarray:
    """(3,) per channel, the median of the de-lit diffuse over the true albedo on the well-seen face texels:
    light and albedo share one scale the photo cannot split, which is not what the diffuse rows judge."""
    fr = frames[tile]
    sel = eval_mask(tex, frames, tile)
    return np.median(fr.at(diffuse[tile])[sel].astype(np.float64) / np.maximum(fr.at(head.albedo[tile])[sel], 1e-4), 0)


def diffuse_scores(head: TruthHead, variants: dict, tex, frames: dict, tile: int = 1001) -> dict:
    """Per variant (name -> diffuse tiles): the mean relative error |d / gain - albedo|_1 / |albedo|_1 over
    the well-seen face texels, over the truth's highlight cores (specular > 10 % of diffuse radiance in the
    photo) and over the rest."""
    fr = frames[tile]
    sel = eval_mask(tex, frames, tile)
    spec, shading = truth_light_at_texels(head, fr, tile)
    albedo = fr.at(head.albedo[tile]).astype(np.float64)
    core = sel & (spec > 0.1 * ((albedo * shading) @ skin_maps.LUMA))
    out = {"highlight_texels": int(core.sum())}
    for name, diffuse in variants.items():
        d = fr.at(diffuse[tile]).astype(np.float64) / albedo_gain(head, diffuse, tex, frames, tile)
        rel = np.abs(d - albedo).sum(1) / np.maximum(albedo.sum(1), 1e-4)
        out[f"diffuse_{name}"] = float(rel[sel].mean())
        out[f"diffuse_{name}_highlights"] = float(rel[core].mean()) if core.sum() >= 50 else None
        out[f"diffuse_{name}_elsewhere"] = float(rel[sel & ~core].mean())
    return out


def evidence_diagnosis(model, head: TruthHead, lit, tex, diffuse: dict, size: int = 256, tile: int = 1001) -> dict:
    """Where the photo's specular evidence (skin_maps.specular_evidence, the dichromatic split) goes wrong
    on a head of known maps, at the specular estimate's resolution and under the true key light:
    - `oracle`: the split given the true albedo and the true diffuse shading (per channel, with the relief
      and its occlusion): how well the photo itself shows the highlight;
    - `true_albedo`: the true albedo with the fitted SH shading: what the light fit costs;
    - per region, on the truth's highlight cores (specular > 10 % of diffuse): the evidence as the estimator
      forms it (the reference colour the local mean of the de-lit map away from the expected highlight)
      split into the highlight's own part (evidence of the photo minus evidence of the photo without its
      specular) and the specular-free part (evidence of the photo without its specular: what the reference
      colour and the shading misfit leak), against the true specular there.
    `diffuse`: the de-lit tiles with the photo's highlights still in (run_pipeline's raw ones).
    Sums are ratios to the true specular's sum; corr the texel correlation."""
    S = size
    shrink = lambda im: cv2.resize(np.asarray(im, np.float32), (S, S), interpolation=cv2.INTER_AREA)  # noqa: E731
    fr = skin_maps.texel_frames(model, head.vertices, S, (tile,))[tile]
    big = skin_maps.texel_frames(model, head.vertices, head.params.get("tex", TEX), (tile,))[tile]
    # truth at full resolution, area-averaged as the photo averages it
    spec_big, sd_big = truth_light_at_texels(head, big, tile)
    e = head.light.irradiance
    e_lum = float(e @ skin_maps.LUMA)
    vis = fr.at(shrink(tex.maps["visibility"][tile]))
    idx = np.flatnonzero(vis > 0.5)
    st = fr.at(shrink(big.image(spec_big.astype(np.float32))))[idx].astype(np.float64)
    sd = fr.at(shrink(big.image(sd_big.astype(np.float32))))[idx].astype(np.float64)
    albedo = fr.at(shrink(head.albedo[tile]))[idx].astype(np.float64)
    rot = lit.rotation.numpy().astype(np.float64)
    n = fr.normal[idx].astype(np.float64) @ rot.T
    pos = fr.position[idx].astype(np.float64) @ rot.T + lit.translation.numpy().astype(np.float64)
    v = -pos / np.linalg.norm(pos, axis=1, keepdims=True)
    shading = np.maximum(skin_maps.sh_basis_np(n) @ lit.lighting.numpy().astype(np.float64), 1e-3)
    photo = fr.at(shrink(diffuse[tile]))[idx].astype(np.float64) * shading
    light_colour = e / e_lum
    w = vis[idx]

    def score(s):
        return {"sum": round(float(s.sum() / st.sum()), 3), "corr": round(float(np.corrcoef(s, st)[0, 1]), 3)}
    out = {"oracle": score(skin_maps.specular_evidence(photo, albedo, sd, light_colour)),
           "true_albedo": score(skin_maps.specular_evidence(photo, albedo, shading, light_colour))}
    # the estimator's reference colour: local mean of the de-lit colour away from the expected highlight
    expected = e_lum * skin_maps.ggx_specular(n, v, head.light.direction, 0.5, skin_maps.f0_from_level(0.5))
    away = 1.0 - np.clip(expected / max(float(np.percentile(expected, 90)), 1e-9), 0.0, 1.0)
    sigma = max(1.0, skin_maps.DEFAULT_SETTINGS.spec_chroma_cm / skin_maps.texel_size_cm(fr))

    def evidence(p):
        img = np.zeros((S * S, 3), np.float32)
        img[fr.texel[idx]] = p / shading
        wt = np.zeros(S * S, np.float32)
        wt[fr.texel[idx]] = w * away
        ref = fr.at(skin_maps.masked_blur(img.reshape(S, S, 3), wt.reshape(S, S), sigma))[idx]
        return skin_maps.specular_evidence(p, ref, shading, light_colour)
    full = evidence(photo)
    free = evidence(albedo * sd)
    out["estimator"] = score(full)
    core = st > 0.1 * ((albedo * sd) @ skin_maps.LUMA)
    regions = {}
    for i, name in enumerate(skin_maps.REGION_NAMES):
        m = core & (fr.regions[idx, i] > 0.75)
        if m.sum() >= 20 and name != "brows":
            regions[name] = {"texels": int(m.sum()), "truth": round(float(st[m].mean()), 4),
                             "highlight": round(float((full - free)[m].mean()), 4), "leak": round(float(free[m].mean()), 4)}
    out["cores"] = regions
    return out


def eye_scores(head: TruthHead, tex) -> dict:
    from skimage.color import deltaE_ciede2000, rgb2lab

    from ..colour import linear_to_srgb
    info = tex.info.get("maps", {}).get("eyes", {})
    if not info:
        return {}
    lab = lambda c: rgb2lab(np.asarray(linear_to_srgb(np.asarray(c, np.float32)))[None, None])[0, 0]  # noqa: E731
    from ..eyes import DEFAULT_IRIS_LINEAR
    return {"iris_delta_e": float(deltaE_ciede2000(lab(info["iris_linear"]), lab(head.iris_linear))),
            "iris_default_delta_e": float(deltaE_ciede2000(lab(DEFAULT_IRIS_LINEAR), lab(head.iris_linear)))}


# ---------------------------------------------------------------------------------------------
# Runs


def prepare(seed: int, heads: int, model, corr, albedo_model, sources, log=print):
    out = []
    for i in range(heads):
        t0 = time.perf_counter()
        head = make_head(i, seed, model, sources)
        obs, lit, tex, raw = run_pipeline(head, model, corr, albedo_model, raw=True)
        frames = skin_maps.texel_frames(model, head.vertices, tex.size)
        out.append((head, lit, tex, frames, raw))
        log(f"{head.name}: rendered and fitted in {time.perf_counter() - t0:.1f} s ({head.params['albedo']})")
    return out


TUNE_GRID = {"cavity_cm": (0.0, 0.002), "shading_gain": (1.0, 1.5, 2.0, 3.0), "shading_eps": (0.3, 0.6, 1.0)}
SPEC_GRID = {"spec_region_strength": (0.25, 1.0, 4.0, 16.0, 64.0), "spec_moments": (False, True)}


def tune(prepared, model, base: skin_maps.MapSettings = skin_maps.DEFAULT_SETTINGS, log=print) -> skin_maps.MapSettings:
    """Grid search of the detail gains (mean normal error) and the specular shrinkage (mean level error)."""
    best, best_err = base, math.inf
    for values in itertools.product(*TUNE_GRID.values()):
        s = replace(base, **dict(zip(TUNE_GRID, values)))
        errs = []
        for head, lit, tex, frames, raw in prepared:
            fr = frames[1001]
            sel = eval_mask(tex, frames)
            n = skin_maps.detail_normals(raw[1001], tex.maps["visibility"][1001], fr,
                                         lit.rotation.numpy(), lit.lighting.numpy(), s)
            errs.append(angle_deg(fr.at(n)[sel], fr.at(head.maps.normal[1001])[sel]).mean())
        err = float(np.mean(errs))
        log(f"  detail {dict(zip(TUNE_GRID, values))}: {err:.3f} deg")
        if err < best_err:
            best, best_err = s, err
    spec_best, spec_err = best, math.inf
    for values in itertools.product(*SPEC_GRID.values()):
        s = replace(best, **dict(zip(SPEC_GRID, values)))
        errs = []
        for head, lit, tex, frames, raw in prepared:
            fit = skin_maps.specular_from_tiles(raw, tex.maps["visibility"], model, head.vertices,
                                                lit.rotation.numpy(), lit.translation.numpy(), lit.lighting.numpy(),
                                                replace(s, spec_evidence=True))
            fr = frames[1001]
            sel = eval_mask(tex, frames)
            errs.append(np.abs(fr.at(fit.level[1001])[sel] - fr.at(head.maps.level[1001])[sel]).mean()
                        + np.abs(fr.at(fit.roughness[1001])[sel] - fr.at(head.maps.roughness[1001])[sel]).mean())
        err = float(np.mean(errs))
        log(f"  specular {dict(zip(SPEC_GRID, values))}: {err:.4f}")
        if err < spec_err:
            spec_best, spec_err = s, err
    return spec_best


def evaluate(prepared, model, settings: skin_maps.MapSettings, relight: bool = True, log=print) -> list[dict]:
    rows = []
    for head, lit, tex, frames, raw in prepared:
        # the maps from the de-lit photo with its highlights, as with_measured_maps makes them
        maps, _ = skin_maps.measured_maps(replace(tex, maps={**tex.maps, "diffuse": raw}), lit, model, settings, frames)
        # the region priors alone (MapSettings.spec_evidence off): what the photo's evidence adds
        pri = skin_maps.specular_maps(raw, tex.maps["visibility"], frames, lit.rotation.numpy(), lit.translation.numpy(),
                                      lit.lighting.numpy(), replace(settings, spec_evidence=False))
        maps_pri = {**maps, "specular": pri.level, "roughness": pri.roughness}
        row = {"head": head.name, **map_scores(head, maps, tex, frames), **eye_scores(head, tex)}
        row.update({f"{k}_priors": v for k, v in map_scores(head, maps_pri, tex, frames).items()
                    if k in ("specular_mae", "roughness_mae")})
        row.update(diffuse_scores(head, {"delit": tex.maps["diffuse"], "with_highlights": raw}, tex, frames))
        if relight:
            row.update(relit_scores(model, head, maps, maps_pri, {
                "delit": (tex.maps["diffuse"], albedo_gain(head, tex.maps["diffuse"], tex, frames)),
                "with_highlights": (raw, albedo_gain(head, raw, tex, frames))}))
        rows.append(row)
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return rows


def table(rows: list[dict]) -> str:
    """The report's tables (markdown): means over the heads."""
    def m(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else float("nan")
    lines = [f"{len(rows)} heads, {int(m('texels'))} face texels each on average (tile 1001, visibility > 0.5)", "",
             "| map | measured | baseline | baseline is |", "|---|---|---|---|",
             f"| detail normal, mean angle to truth | {m('normal_deg'):.2f} deg | {m('normal_flat_deg'):.2f} deg | flat (0, 0, 1) |",
             f"| specular level, mean abs error | {m('specular_mae'):.3f} | {m('specular_const_mae'):.3f} | constant 0.5 |",
             f"| roughness, mean abs error | {m('roughness_mae'):.3f} | {m('roughness_const_mae'):.3f} | constant 0.5 |"]
    if any("specular_mae_priors" in r for r in rows):
        lines += [f"| specular level, the region priors alone (the photo's evidence off) | {m('specular_mae_priors'):.3f} | {m('specular_const_mae'):.3f} | constant 0.5 |",
                  f"| roughness, the region priors alone (the photo's evidence off) | {m('roughness_mae_priors'):.3f} | {m('roughness_const_mae'):.3f} | constant 0.5 |"]
    if any("iris_delta_e" in r for r in rows):
        lines.append(f"| iris colour, CIEDE2000 to the true albedo | {m('iris_delta_e'):.2f} | {m('iris_default_delta_e'):.2f} | the importer's default iris |")
    if any("diffuse_delit" in r for r in rows):
        lines += ["", "Diffuse map against the true albedo (mean relative error, per-channel gain matched; the well-seen face texels, "
                  "the truth's highlight cores, the rest):", "",
                  "| diffuse | all | highlight cores | elsewhere |", "|---|---|---|---|"]
        for k, label in (("delit", "de-lit, highlights taken out (default)"), ("with_highlights", "de-lit, highlights kept")):
            lines.append(f"| {label} | {m(f'diffuse_{k}'):.4f} | {m(f'diffuse_{k}_highlights'):.4f} | {m(f'diffuse_{k}_elsewhere'):.4f} |")
    if any(f"{n}_diffuse_delit" in r for r in rows for n in RELIGHTS):
        lines += ["", "Relit with the de-lit diffuse as the albedo and the measured maps (the bundle as it relights; face skin, in brackets its highlights):",
                  "", "| light | highlights taken out (default) | highlights kept |", "|---|---|---|"]
        for n in RELIGHTS:
            cells = [f"{m(f'{n}_diffuse_{k}'):.4f} ({m(f'{n}_diffuse_{k}_highlights'):.4f})" for k in ("delit", "with_highlights")]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if any(f"{n}_measured" in r for r in rows for n in RELIGHTS):
        lines += ["", "Relit error (RMS radiance error / RMS truth radiance, face skin; in brackets: over the highlights):",
                  "", "| light | measured maps (default) | flat normals + measured specular | detail normals + constant specular | v0 constants | detail normals + region priors (evidence off) |",
                  "|---|---|---|---|---|---|"]
        for n in RELIGHTS:
            cells = [f"{m(f'{n}_{k}'):.4f} ({m(f'{n}_{k}_highlights'):.4f})" for k in
                     ("measured", "flat_normals", "constant_specular", "v0_constants", "prior_specular")]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from ..albedo import load_albedo_model
    from ..facemodel import load_face_model
    from ..pipeline import load_correspondence
    ap = argparse.ArgumentParser(prog="python -m backend.bench.maps_truth", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tune", action="store_true", help="grid-search the settings on this seed and print them")
    ap.add_argument("--textures", type=Path, default=Path("out/bench_cache/textures"),
                    help="de-lit bundles whose diffuse tiles are the heads' albedo (the bench's texture cache)")
    ap.add_argument("--no-relight", action="store_true")
    ap.add_argument("--evidence-diagnosis", action="store_true",
                    help="where the specular evidence goes wrong on each head (evidence_diagnosis), then stop")
    ap.add_argument("--real", type=Path, help="also: eye colour on these photos (a folder) against their mean iris pixel")
    ap.add_argument("--real-limit", type=int, default=12)
    ap.add_argument("--out", type=Path, help="write report.md and report.json here")
    a = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    model, corr, am = load_face_model(), load_correspondence(), load_albedo_model()
    if a.real is not None:
        rows = []
        for p in sorted(a.real.glob("*.jpg"))[:a.real_limit]:
            rows.append(real_eye_scores(p, model, corr, am))
            log(json.dumps(rows[-1]))
        de = [r["delta_e"] for r in rows if "delta_e" in r]
        dd = [r["default_delta_e"] for r in rows if "default_delta_e" in r]
        text = (f"Eyes on {len(de)} photos of {a.real}: CIEDE2000 of the iris disc (lit by the fitted shading) to the "
                f"photo's mean iris pixel: from the photo {np.mean(de):.2f} (median {np.median(de):.2f}, max {np.max(de):.2f}); "
                f"the importer's default iris {np.mean(dd):.2f} (median {np.median(dd):.2f})")
        print(text)
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "eyes_real.json").write_text(json.dumps({"rows": rows, "summary": text}, indent=1), encoding="utf-8")
        return 0
    sources = albedo_sources(a.textures)
    log(f"albedo from {len(sources)} bundles in {a.textures}" if sources else "albedo: flat skin colour")
    prepared = prepare(a.seed, a.heads, model, corr, am, sources, log)
    if a.evidence_diagnosis:
        rows = [{"head": head.name, **evidence_diagnosis(model, head, lit, tex, raw)} for head, lit, tex, _, raw in prepared]
        for r in rows:
            print(json.dumps(r))
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "evidence_diagnosis.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return 0
    settings = skin_maps.DEFAULT_SETTINGS
    if a.tune:
        settings = tune(prepared, model, settings, log)
        log(f"tuned: {settings}")
    rows = evaluate(prepared, model, settings, not a.no_relight, log)
    text = f"seed {a.seed}{' (tuned on it)' if a.tune else ''}\n\n" + table(rows)
    print(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "report.md").write_text(text + "\n", encoding="utf-8")
        (a.out / "report.json").write_text(json.dumps({"seed": a.seed, "tuned": a.tune, "settings": repr(settings),
                                                        "rows": rows}, indent=1), encoding="utf-8")
    return 0



# ---------------------------------------------------------------------------------------------
# Real photos: the eyes' colour against the photo's mean iris pixel


def _disc_mean(image_linear: np.ndarray, radius_uv: float) -> np.ndarray:
    """Mean linear colour of an eye image (S, S, 3) over the disc of `radius_uv` around its centre."""
    S = image_linear.shape[0]
    c = (np.arange(S) + 0.5) / S - 0.5
    r = np.hypot(c[None, :], c[:, None])
    return image_linear[r <= radius_uv].mean(0)


def photo_iris_mean(photo_rgb: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """The photo's mean iris pixel (linear): every visible pixel of both iris discs (the eye opening within
    the iris radius), the corneal reflection (the disc's brightest 5 %) left out."""
    from ..eyes import LUMA as EYE_LUMA, eye_pixels
    px = [eye_pixels(photo_rgb, points, side)["disc"] for side in ("right", "left")]
    px = np.concatenate([p for p in px if len(p)]) if any(len(p) for p in px) else np.zeros((0, 3))
    if len(px) < 20:
        return None
    lum = px @ EYE_LUMA
    return px[lum <= np.quantile(lum, 0.95)].mean(0)


def real_eye_scores(photo_path: Path, model, corr, albedo_model) -> dict:
    """CIEDE2000 between the photo's mean iris pixel and the iris disc of (a) the eyes image made from the
    photo, (b) the importer's default eyes image, both lit by the fitted shading at the eye (the photo's
    light, as the "As Photographed" preset renders it)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    from ..colour import SRGB8_TO_LINEAR, linear_to_srgb
    from ..eyes import eyes_from_photo, sh_basis_np_front
    from ..fitting import fit_landmarks
    from ..imageio import load_photo
    from ..landmarks import get_analyzer
    from ..photometric import fit_photometric
    from ..pipeline import observe
    from ..segmentation import get_segmenter
    photo = load_photo(photo_path)
    obs = observe(photo, get_analyzer(None))
    obs.masks = get_segmenter().segment(photo, obs.detection)
    det = obs.detection
    fit = fit_landmarks(model, corr, det.points, obs.intrinsics, det.blendshapes)
    fit = fit_photometric(obs, fit, model, corr, albedo_model)
    sh = fit.lighting.numpy()
    res = eyes_from_photo(photo.rgb, det.points, model, fit.vertices.numpy(), fit.rotation.numpy(),
                          fit.translation.numpy(), fit.intrinsics.focal_px, sh)
    ref = photo_iris_mean(photo.rgb, det.points)
    shading = sh_basis_np_front(fit.rotation.numpy(), sh)
    lab = lambda c: rgb2lab(np.asarray(linear_to_srgb(np.clip(np.asarray(c, np.float32), 0, 1)))[None, None])[0, 0]  # noqa: E731
    ours = _disc_mean(SRGB8_TO_LINEAR[res.image], res.info["iris_uv_radius"]) * shading
    out = {"photo": Path(photo_path).name, "iris_uv_radius": res.info["iris_uv_radius"]}
    try:
        import export_layout  # the importer's default eyes (repository root, pure numpy)
        default_img = SRGB8_TO_LINEAR[np.clip(np.round(export_layout.eye_image(512)[..., :3] * 255), 0, 255).astype(np.uint8)]
        out["default_delta_e"] = float(deltaE_ciede2000(lab(_disc_mean(default_img, 0.10) * shading), lab(ref)))
    except ImportError:
        pass
    if ref is not None:
        out["delta_e"] = float(deltaE_ciede2000(lab(ours), lab(ref)))
    return out


if __name__ == "__main__":
    sys.exit(main())

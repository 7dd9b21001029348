"""Relighting measures (issue #8): how well a bundle separates albedo from light.

Synthetic heads (the truth is known, `synthetic.truth_head` / `truth_light`):
- albedo error: the bundle's diffuse tile 1001 against the truth albedo in UV space, over the visible face
  texels, after a per-channel gain (`albedo_error`);
- relit error: the reconstruction and the truth drawn under a new light into the same image, compared
  inside the truth's face-skin coverage (`relit_error`);
- shading leakage against the *true* shading (`true_shading_leakage`): defined for every bundle, v0
  included, because the synthetic truth knows the light.
Real photos (`photo_measures`):
- shading leakage: correlation of the diffuse map's luminance with the bundle's fitted shading over skin
  texels (undefined without a fitted lighting: reported as None);
- photo re-render: albedo x fitted shading drawn into the photo, compared with it inside the skin mask;
- hair leakage: the share of seen tile-1001 texels whose photo pixel is hair.

Every UV measure runs on tile 1001 (the face) at UV_SIDE texels (the maps are area-resized: a 512 px
synthetic image holds less detail than that anyway), with texels found by rasterizing the UV layout
(render.rasterize on render.uv_screen); each texel's 3D point and normal come from its triangle and
barycentrics on the head's own mesh. Colours are linear until an image is compared: then they are
sRGB-encoded (0..255), as every image row of the bench (perceptually even steps).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .. import render
from ..colour import decode_srgb8, linear_to_srgb
from . import metrics
from .evaluate import masked_image_measures
from .render import Head, Light, Rendering, bilinear, render_bundle, render_head, shadow_factor, drawn_triangles

TILE = 1001
UV_SIDE = 512                 # texels per side of the UV grid the UV measures use
SEEN = 0.5                    # visibility above this: the texel was seen in the photo
SKIN = 0.5                    # skin-mask value above this: the texel's photo pixel is skin
HAIR = 0.5                    # hair-mask value above this: the texel's photo pixel is hair
RELIT_BACKGROUND = 128        # sRGB grey behind both relit heads (outside the compared mask anyway)
LUMA = np.array([0.2126, 0.7152, 0.0722])   # Rec. 709 luminance of linear RGB

# The measures by report.json key: (name, unit, which way is better).
SYNTHETIC_MEASURES = {
    "albedo_psnr_db": ("albedo PSNR (gain-aligned, visible face texels)", "dB", "higher"),
    "albedo_ssim": ("albedo SSIM (gain-aligned, visible face texels)", "0..1", "higher"),
    "relit_psnr_db": ("relit PSNR (new light, face skin)", "dB", "higher"),
    "relit_ssim": ("relit SSIM (new light, face skin)", "0..1", "higher"),
    "relit_lpips": ("relit ST-LPIPS (new light, face skin)", "0..1", "lower"),
    "relit_oracle_psnr_db": ("relit PSNR of the truth albedo on the fitted mesh (this fit's ceiling)", "dB", "higher"),
    "leakage_true_r": ("shading leakage against the true shading", "abs(r)", "lower"),
    "truth_albedo_r": ("shading leakage of the truth albedo against the true shading (the floor)", "abs(r)", "lower"),
}
PHOTO_MEASURES = {
    "shading_leakage": ("shading leakage (diffuse vs fitted shading, skin texels)", "abs(r)", "lower"),
    "rerender_ssim": ("photo re-render SSIM (albedo x fitted shading, skin mask)", "0..1", "higher"),
    "rerender_psnr_db": ("photo re-render PSNR (albedo x fitted shading, skin mask)", "dB", "higher"),
    "rerender_lpips": ("photo re-render ST-LPIPS (albedo x fitted shading, skin mask)", "0..1", "lower"),
    "hair_leakage": ("hair leakage (seen texels whose pixel is hair)", "share", "lower"),
}
# The targets on real photos, checked on the mean over a set's photos: (comparison, value, the
# photos the issue sets it for). The report checks every set and says which set a target is meant for.
TARGETS = {
    "shading_leakage": ("<=", 0.1, "in-the-wild photos"),
    "hair_leakage": ("<=", 0.01, "all photos"),
    "rerender_ssim": (">=", 0.95, "London dev photos"),
    "rerender_psnr_db": (">=", 35.0, "London dev photos"),
    "rerender_lpips": ("<=", 0.04, "London dev photos"),
}
# Synthetic targets, against the baseline in every yaw bin: relit PSNR at least this many dB above it,
# albedo error below it (albedo PSNR above it).
RELIT_GAIN_DB = 3.0


def check_target(key: str, value: float | None) -> dict:
    """{"op", "target", "for", "value", "pass"} for a photo measure's value (pass None: no value)."""
    op, target, where = TARGETS[key]
    ok = None if value is None or not np.isfinite(value) else bool(value <= target if op == "<=" else value >= target)
    return {"op": op, "target": target, "for": where, "value": value, "pass": ok}


def synthetic_targets(bins: list[dict]) -> dict:
    """The two synthetic targets per yaw bin and overall (every bin with samples must pass); None
    without a baseline. `bins`: [{"yaw", "n", "current": {key: summary}, "baseline": {key: summary}}]."""
    def mean(b, variant, key):
        m = b.get(variant, {}).get(key)
        return m["mean"] if m and m["n"] else None

    out = {}
    for key, rule in (("relit_psnr_db", "baseline + 3 dB"), ("albedo_psnr_db", "above baseline")):
        per_bin = []
        for b in bins:
            cur, base = mean(b, "current", key), mean(b, "baseline", key)
            ok = None
            if cur is not None and base is not None:
                ok = bool(cur >= base + RELIT_GAIN_DB) if key == "relit_psnr_db" else bool(cur > base)
            per_bin.append({"yaw": b["yaw"], "current": cur, "baseline": base,
                            "difference": None if ok is None else cur - base, "pass": ok})
        checked = [x["pass"] for x in per_bin if x["pass"] is not None]
        out[key] = {"rule": rule, "per_bin": per_bin, "pass": (all(checked) if checked else None)}
    return out


# ---------------------------------------------------------------------------------------------
# The UV grid of tile 1001


@dataclass
class TexelLayout:
    """The covered texels of one tile on a side x side grid, with the triangle under each centre."""
    tile: int
    side: int
    texel: np.ndarray      # (N,) flat index row * side + column
    triangle: np.ndarray   # (N,) index into mesh.triangles
    bary: np.ndarray       # (N, 3) barycentrics of the texel centre in that triangle
    face: np.ndarray       # (N,) bool: the triangle is in the narrow face region (vertices 0-6705)

    def image(self, values: np.ndarray, fill=0.0) -> np.ndarray:
        """Per-texel values (N,) or (N, C) -> (side, side[, C]) image, `fill` elsewhere."""
        out = np.full((self.side * self.side,) + values.shape[1:], fill, dtype=np.float64)
        out[self.texel] = values
        return out.reshape((self.side, self.side) + values.shape[1:])


_LAYOUTS: dict[tuple, TexelLayout] = {}


def texel_layout(mesh, tile: int = TILE, side: int = UV_SIDE) -> TexelLayout:
    """The skin texels of `tile` (cached per topology: bundles and the face model triangulate the same
    polygons in different orders, so each order gets its own layout)."""
    key = (hashlib.sha1(mesh.triangles.tobytes() + mesh.triangle_uvs.tobytes()).hexdigest(), tile, side)
    if key not in _LAYOUTS:
        uv = mesh.triangle_uvs
        in_tile = (np.floor(uv[:, :, 0].min(1)).astype(np.int64) + 1001 == tile) & \
                  (np.floor(uv[:, :, 0].max(1) - 1e-6).astype(np.int64) + 1001 == tile)
        ids = np.flatnonzero(in_tile & (mesh.triangle_part == mesh.part_names.index("skin")))
        corners = torch.from_numpy(uv[ids].reshape(-1, 2))
        r = render.rasterize(render.uv_screen(corners, tile, side), torch.arange(3 * len(ids)).view(-1, 3),
                             side, side, perspective_correct=False)
        flat = r.triangle.reshape(-1).numpy()
        texel = np.flatnonzero(flat >= 0)
        tri = ids[flat[texel]]
        _LAYOUTS[key] = TexelLayout(tile, side, texel, tri, r.bary.reshape(-1, 3).numpy()[texel].astype(np.float64),
                                    mesh.triangle_face[tri])
    return _LAYOUTS[key]


def on_grid(img: np.ndarray, side: int) -> np.ndarray:
    """A tile (S, S[, C]) area-resized to side x side, float32 (linear values stay linear)."""
    img = np.asarray(img, np.float32)
    if img.shape[0] == side and img.shape[1] == side:
        return img
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA if img.shape[0] > side else cv2.INTER_LINEAR)


def texel_values(tile_img: np.ndarray, layout: TexelLayout) -> np.ndarray:
    """(N, C) or (N,) values of a tile image at the layout's texels."""
    g = on_grid(tile_img, layout.side)
    return g.reshape((layout.side * layout.side,) + g.shape[2:])[layout.texel].astype(np.float64)


def texel_visibility(head: Head, layout: TexelLayout) -> np.ndarray:
    """(N,) the bundle's visibility at the texels (all 1 for a head without a visibility map: the truth)."""
    vis = head.visibility.get(layout.tile)
    return np.ones(len(layout.texel)) if vis is None else texel_values(vis, layout)


def texel_geometry(head: Head, layout: TexelLayout) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space points (N, 3) and unit normals (N, 3) of the texels on the head's own mesh (its
    area-weighted vertex normals, interpolated, as the renders shade)."""
    vc = head.camera_vertices()
    tris = head.mesh.triangles
    vn = render.vertex_normals(torch.from_numpy(vc), torch.from_numpy(tris)).numpy()
    corner = tris[layout.triangle]                                      # (N, 3)
    b = layout.bary[..., None]
    p = (vc[corner] * b).sum(1)
    n = (vn[corner] * b).sum(1)
    return p, n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def shading_of(light: Light, points: np.ndarray, normals: np.ndarray, head: Head | None = None) -> np.ndarray:
    """(N, 3) shading of camera-space points under `light` (bench.render's definition); a directional
    light is shadowed by `head`'s mesh."""
    n = torch.from_numpy(normals)
    s = render.sh_shading(n, torch.from_numpy(np.asarray(light.sh, np.float64)))
    if light.direction is not None:
        d = torch.nn.functional.normalize(torch.from_numpy(np.asarray(light.direction, np.float64)), dim=0)
        cos = n @ d
        lit = torch.ones_like(cos)
        if head is not None:
            vc = torch.from_numpy(head.camera_vertices())
            lit = shadow_factor(torch.from_numpy(points), vc, torch.from_numpy(head.mesh.triangles[drawn_triangles(head.mesh)]),
                                d, cos)
        s = s + (cos.clamp_min(0.0) * lit)[:, None] * torch.from_numpy(np.asarray(light.intensity, np.float64))[None]
    return s.clamp_min(0.0).numpy()


def luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, np.float64) @ LUMA


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two (N,) samples; None when either is constant (r undefined) or N < 10."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 10:
        return None
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if den <= 1e-12 * max(1, len(a)):
        return None
    return float((a * b).sum() / den)


def srgb255(linear: np.ndarray) -> np.ndarray:
    """Linear values -> sRGB-encoded 0..255 floats (clamped), for image measures."""
    return linear_to_srgb(np.asarray(linear, np.float32)).astype(np.float64) * 255.0


# ---------------------------------------------------------------------------------------------
# Synthetic: albedo error, relit error, leakage against the true shading


def channel_gains(recon: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(3,) least-squares gains g_c = sum(r t) / sum(r r): the scale that maps a reconstruction's albedo
    channel onto the truth's (albedo and light trade a scale per channel: only the product is seen)."""
    den = (recon * recon).sum(0)
    return np.where(den > 0, (recon * truth).sum(0) / np.maximum(den, 1e-30), 1.0)


def albedo_error(recon: Head, truth: Head, tile: int = TILE, side: int = UV_SIDE) -> dict:
    """The bundle's diffuse tile against the truth albedo, on the UV grid, over the visible face texels
    (narrow-face triangles whose bundle visibility is above SEEN), after per-channel gains; PSNR (dB) and
    masked SSIM on sRGB-encoded values (SSIM's window sees the neighbouring texels of both maps)."""
    layout = texel_layout(recon.mesh, tile, side)
    sel = layout.face & (texel_visibility(recon, layout) > SEEN)
    if sel.sum() < 100:
        return {"albedo_texels": int(sel.sum())}
    r_tile = on_grid(recon.tiles[tile], side).astype(np.float64)
    t_tile = on_grid(truth.tiles[tile], side).astype(np.float64)
    flat = layout.texel[sel]
    gains = channel_gains(r_tile.reshape(-1, 3)[flat], t_tile.reshape(-1, 3)[flat])
    mask = np.zeros(side * side, bool)
    mask[flat] = True
    mask = mask.reshape(side, side)
    a, b = srgb255(r_tile * gains), srgb255(t_tile)
    x0, y0, x1, y1 = _box(mask)
    a, b, mask = a[y0:y1, x0:x1], b[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    return {"albedo_psnr_db": metrics.psnr(a, b, mask), "albedo_ssim": metrics.ssim(a, b, mask),
            "albedo_gain": gains.tolist(), "albedo_texels": int(sel.sum())}


def _box(mask: np.ndarray, pad: int = 8) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return max(0, xs.min() - pad), max(0, ys.min() - pad), min(w, xs.max() + 1 + pad), min(h, ys.max() + 1 + pad)


def relit_render(head: Head, light: Light, side: int, gains=None) -> Rendering:
    """`head` drawn under `light` into a side x side image over grey (its own camera, scaled to the
    image), its diffuse tiles times `gains` (3,) when given (albedo_error's: see relit_error)."""
    k = head.k if (head.k.width, head.k.height) == (side, side) else head.k.scaled(side / head.k.width)
    bg = np.full((side, side, 3), RELIT_BACKGROUND, np.uint8)
    tiles = head.tiles if gains is None else {t: img * np.asarray(gains, np.float32) for t, img in head.tiles.items()}
    return render_head(head.mesh, k, head.rotation, head.translation, tiles, light, bg)


def relit_error(recon: Rendering, truth: Rendering, lpips=None) -> dict:
    """The reconstruction and the truth drawn under the same new light (relit_render), compared inside
    the truth's face-skin coverage: PSNR (dB), SSIM, ST-LPIPS (evaluate.masked_image_measures). The
    reconstruction is drawn with the albedo error's per-channel gains: the scale that albedo and light
    trade is not in the photo, so no measure should reward guessing it; what is left is light baked into
    the map (or light taken out where it was albedo) and the fit's geometry."""
    m = masked_image_measures(truth.image, recon.image, truth.face_skin, lpips)
    out = {f"relit_{k}": v for k, v in m.items()}
    out["relit_pixels"] = int(truth.face_skin.sum())
    return out


def oracle_relit_error(recon: Head, truth: Head, light: Light, truth_relit: Rendering, side: int) -> dict:
    """The relit PSNR of the truth albedo on the reconstruction's mesh, camera and pose: what a perfect
    albedo would score with this fit's geometry (the ceiling of the relit row for this fit; the gap
    between it and the row is the map's fault, the gap to infinity the geometry's)."""
    oracle = Head(recon.mesh, recon.k, recon.rotation, recon.translation, truth.tiles)
    m = masked_image_measures(truth_relit.image, relit_render(oracle, light, side).image, truth_relit.face_skin)
    return {"relit_oracle_psnr_db": m.get("psnr_db")}


def true_shading_leakage(recon: Head, truth: Head, light: Light, tile: int = TILE, side: int = UV_SIDE) -> dict:
    """|r| between the luminance of the bundle's diffuse map and of the *true* shading (the capture
    light on the true mesh, cast shadows included) over the bundle's visible face texels. A diffuse map
    that kept the light (v0) follows the shading; a de-lit one should not. The same |r| of the truth
    albedo over the same texels is the floor (`truth_albedo_r`): real albedo is not independent of the
    shape (brows, lips and eye sockets are darker and shaped), and maps made from photos keep a little
    of their own studio light."""
    r_layout = texel_layout(recon.mesh, tile, side)
    t_layout = texel_layout(truth.mesh, tile, side)
    p, n = texel_geometry(truth, t_layout)
    shade = t_layout.image(luminance(shading_of(light, p, n, truth)), np.nan).reshape(-1)
    sel = r_layout.face & (texel_visibility(recon, r_layout) > SEEN)
    s = shade[r_layout.texel[sel]]
    ok = np.isfinite(s)
    out = {}
    for key, head in (("leakage_true_r", recon), ("truth_albedo_r", truth)):
        albedo = luminance(on_grid(head.tiles[tile], side).reshape(-1, 3)[r_layout.texel[sel]][ok])
        r = correlation(albedo, s[ok])
        out[key] = None if r is None else abs(r)
    return out


# ---------------------------------------------------------------------------------------------
# Real photos


def photo_masks(photo, result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(skin, hair) (H, W) 0..1 masks of a photo (backend/segmentation.py), from the landmarks and face
    box the bundle recorded (no second detection). Raises LikenessError when the nets are not prepared."""
    from ..segmentation import get_segmenter, skin_mask
    seg = get_segmenter()
    det = result["detection"]
    box = tuple(det["face_box"])
    hair = seg.hair(photo, box)
    person = seg.person(photo, box)
    return skin_mask(np.asarray(det["landmarks_px"], np.float32), hair, person), hair


def photo_measures(head: Head, photo_rgb: np.ndarray, skin: np.ndarray, hair: np.ndarray,
                   lpips=None, tile: int = TILE, side: int = UV_SIDE) -> tuple[dict, Rendering]:
    """Shading leakage, photo re-render and hair leakage of one bundle (module docstring), given the
    photo's skin and hair masks ((H, W) 0..1, backend/segmentation.py). Each seen texel (visibility >
    SEEN) is projected into the photo with the bundle's camera: the pixel it was textured from."""
    h, w = photo_rgb.shape[:2]
    layout = texel_layout(head.mesh, tile, side)
    p, n = texel_geometry(head, layout)
    k = head.k if (head.k.width, head.k.height) == (w, h) else head.k.scaled(w / head.k.width)
    depth = np.maximum(-p[:, 2], 1e-6)
    u = k.cx + k.focal_px * p[:, 0] / depth
    v = k.cy - k.focal_px * p[:, 1] / depth
    inside = (p[:, 2] < 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    seen = (texel_visibility(head, layout) > SEEN) & inside
    x, y = (u[seen] - 0.5).astype(np.float32), (v[seen] - 0.5).astype(np.float32)   # pixel-centre coordinates
    hair_t = bilinear(np.asarray(hair, np.float32)[..., None], x, y)[:, 0]
    skin_t = bilinear(np.asarray(skin, np.float32)[..., None], x, y)[:, 0]
    out = {"seen_texels": int(seen.sum()),
           "hair_leakage": float(np.mean(hair_t > HAIR)) if seen.any() else None}
    on_skin = skin_t > SKIN
    out["skin_texels"] = int(on_skin.sum())
    albedo = texel_values(head.tiles[tile], layout)[seen][on_skin]
    photo_lin = bilinear(decode_srgb8(photo_rgb), x[on_skin], y[on_skin]).astype(np.float64)
    out["lighting"] = head.lighting is not None
    if head.lighting is not None:
        shading = render.sh_shading(torch.from_numpy(n[seen][on_skin]), torch.from_numpy(head.lighting)).numpy()
        r = correlation(luminance(albedo), luminance(shading))
        out["shading_leakage"] = None if r is None else abs(r)
        light = Light(head.lighting)
    else:
        # No fitted lighting: the shading is undefined, so is its correlation. The re-render uses a
        # uniform shading: the photo's mean skin luminance over the map's (about 1 for a projected map).
        ratio = float(luminance(photo_lin).mean() / max(luminance(albedo).mean(), 1e-9)) if len(albedo) else 1.0
        out["shading_leakage"] = None
        out["uniform_shading"] = ratio
        light = Light.uniform(ratio)
    rend = render_bundle(head, photo_rgb, light)
    mask = rend.face_skin & (np.asarray(skin) > SKIN)
    out["rerender_pixels"] = int(mask.sum())
    out.update({f"rerender_{k_}": val for k_, val in masked_image_measures(photo_rgb, rend.image, mask, lpips).items()})
    return out, rend

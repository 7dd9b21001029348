"""Measured skin maps: detail normals, specular level and roughness from the de-lit photo (docs/maps.md).

The de-lit strategy's diffuse map (the photo divided by the fitted SH shading) still holds two things the
shading model does not: the mesoscale relief below the mesh's resolution (pores, wrinkles, creases: they
shade the photo at scales of a few texels) and the specular reflection (highlights above the diffuse
fit). This module turns them into the bundle's `normal`, `specular` and `roughness` maps, all per UDIM
tile, all data (Non-Color), and then has backend/highlights.py take the highlights out of the diffuse:

- Texel frames (`texel_frames`): per texel of each tile its triangle's surface Jacobian, position, normal,
  tangent T and bitangent B. The tangent frame is the one Blender's Normal Map node uses for this UV map
  (MikkTSpace: T along dP/du orthogonalised against the normal, B = sign * N x T with the sign of dP/dv):
  tests/blender/test_maps_blender.py bakes a known bump with Cycles and compares it with
  `height_to_normal` of the same height.
- Normal map convention: tangent space, OpenGL (+X = +u, +Y = +v = green up), n = normalize(-dh/dt,
  -dh/db, 1) for a height h (cm) over the surface; written as 16-bit PNG (`encode_normal16`), so the flat
  normal decodes to (1.5e-5, 1.5e-5, 1) instead of 8-bit's (0.004, 0.004, 1) (a 0.3 degree tilt).
- Detail normals (`detail_normals`): the de-lit log-luminance's high-frequency wavelet sub-bands
  (PyWavelets, stationary transform, the bands finer than DETAIL_MAX_MM), read two ways, with gains
  calibrated on synthetic heads of known relief (backend/bench/maps_truth.py): cavities are darker
  (ambient occlusion: height = kappa_cavity * r), and a slope towards the fitted light brightens the
  shading (linearised shading: r = -(grad h . g), g = the shading's change per unit tilt along T and B).
- Specular level and roughness (`specular_maps`): a prior per face region (REGIONS: the values and their
  sources), modulated (MapSettings.spec_evidence, on by default: on the synthetic truth it beats the
  priors on seeds it was not tuned on, docs/maps.md) by the photo's own specular evidence: the residual above the diffuse fit
  (photo - albedo model x shading) split by the dichromatic model into a part of the light's colour
  (specular, low saturation) and a part of the skin's colour; compared with the highlight a GGX lobe of
  the prior would show under the fitted light's directional part, per region and locally (weighted least
  squares, shrunk towards the prior where the light shows no highlight), smoothed.

Principled BSDF terms (docs/bundle.md, "Material"): Specular IOR Level at IOR 1.4 (level 0.5 = F0 0.0278),
Roughness = sqrt(GGX alpha) (Blender squares it). Everything runs on numpy on the CPU, deterministic.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from .cache import BoundedCache
from .facemodel import NARROW_FACE_LAST_VERTEX, PART_NAMES, VERTEX_RANGES, FaceModel
from .raster import rasterize
from .scene import _nothing
from .threads import concurrently

TILES = (1001, 1002)
# Tiles that get detail normals: the face. The head/neck tile is mostly hidden or filled in a photo, and its
# wavelet transform cost 0.75 s of a reconstruct that has to stay under 10 s; it is flat.
DETAIL_TILES = (1001,)
SKIN_IOR = 1.4
F0_AT_IOR = ((SKIN_IOR - 1.0) / (SKIN_IOR + 1.0)) ** 2       # 0.0278: Specular IOR Level 0.5
LUMA = np.array([0.2126, 0.7152, 0.0722])                   # Rec. 709 luminance of linear RGB
SH_C = (0.282095, 0.488603, 1.092548, 0.315392, 0.546274)   # render.py's SH constants
BAND1_DIRECTIONAL = (2.0 / 3.0) * SH_C[1]                    # shading band-1 coefficient per unit irradiance
FRAMES_CACHE_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------------
# Principled BSDF terms


def level_from_f0(f0):
    """Principled "Specular IOR Level" at IOR 1.4 for a normal-incidence reflectance F0."""
    return np.asarray(f0) / (2.0 * F0_AT_IOR)


def f0_from_level(level):
    return 2.0 * F0_AT_IOR * np.asarray(level)


def roughness_from_alpha(alpha):
    """Principled Roughness for a GGX alpha (Blender uses alpha = roughness^2)."""
    return np.sqrt(np.asarray(alpha))


# ---------------------------------------------------------------------------------------------
# Regions and their priors


@dataclass(frozen=True)
class RegionPrior:
    level: float          # Principled Specular IOR Level (0.5 = F0 0.0278)
    roughness: float      # Principled Roughness
    evidence: bool = True  # whether the photo's highlights may move it (brows: hair, not skin)


# One cited value for every region: F0 = 0.0278 (skin's refractive index 1.4; the F0 d'Eon and Luebke,
# GPU Gems 3 ch. 14, use for skin and derive from Weyrich et al. 2006) and the roughness the importer
# has always used (0.5). Weyrich et al. (SIGGRAPH 2006) measured Torrance-Sparrow rho_s and m on ten face
# regions of 149 subjects (lips and nose the shiniest), but their per-region numbers are printed in a
# figure we could not read here; no number below is taken from it (docs/maps.md). The regions are kept
# apart so that each gets its own value from the photo's evidence, and so that measured priors can be
# entered per region.
REGIONS: dict[str, RegionPrior] = {
    "forehead": RegionPrior(0.5, 0.5),
    "nose": RegionPrior(0.5, 0.5),
    "cheeks": RegionPrior(0.5, 0.5),
    "upper_lip": RegionPrior(0.5, 0.5),
    "chin": RegionPrior(0.5, 0.5),
    "lips": RegionPrior(0.5, 0.5),
    "eyelids": RegionPrior(0.5, 0.5),
    "brows": RegionPrior(0.5, 0.5, evidence=False),
    "other": RegionPrior(0.5, 0.5),        # ears, scalp, neck, temples
}
REGION_NAMES = tuple(REGIONS)
REGION_SMOOTHING = 6                     # mesh-neighbour averaging passes: soft region borders


def _polygon_contains(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(N,) bool: points (N, 2) inside the closed polygon (K, 2) (even-odd rule)."""
    x, y = pts[:, 0], pts[:, 1]
    inside = np.zeros(len(pts), bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def _segment_distance(poly: np.ndarray, pts: np.ndarray, closed: bool = True) -> np.ndarray:
    """(N,) distance of points (N, 2) to a polyline (K, 2)."""
    best = np.full(len(pts), np.inf)
    ends = np.roll(poly, -1, axis=0) if closed else poly[1:]
    for a, b in zip(poly if closed else poly[:-1], ends):
        ab = b - a
        t = np.clip(((pts - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
    return best


def vertex_regions(model: FaceModel) -> np.ndarray:
    """(V, R) soft region weights per vertex (rows sum to 1), R = len(REGION_NAMES), from the neutral
    head's frontal view and the ICT 68 landmark vertices (iBUG order): lips inside the outer lip contour,
    eyelids within 0.8 cm above / 0.5 cm below the eye opening (and the eye sockets' skin), brows within
    0.45 cm of the brow line, the nose inside a polygon from its root to the alae, the upper lip between
    mouth and nose, the chin below the lower lip, the forehead above the brows, cheeks for the rest of the
    face, `other` for ears, scalp and neck."""
    from .texture import _smooth_vertex_field  # the same soft transition the texture's skin check uses
    v = model.neutral.detach().cpu().numpy().astype(np.float64)
    lm = v[model.landmarks68]
    xy = v[:, :2]
    V = len(v)
    face = np.arange(V) <= VERTEX_RANGES["face"][1]
    narrow = np.arange(V) <= NARROW_FACE_LAST_VERTEX
    label = np.full(V, REGION_NAMES.index("other"))
    brow_top = lm[17:27, 1].max()
    label[face & (v[:, 1] > brow_top + 0.2) & (np.abs(v[:, 0]) < 6.0)] = REGION_NAMES.index("forehead")
    label[narrow & (v[:, 1] <= brow_top + 0.2)] = REGION_NAMES.index("cheeks")
    chin = narrow & (v[:, 1] < lm[57, 1] - 0.2) & (np.abs(v[:, 0]) < 3.2)
    label[chin] = REGION_NAMES.index("chin")
    x31, x35, y33, y27 = lm[31, 0], lm[35, 0], lm[33, 1], lm[27, 1]
    upper = narrow & (v[:, 1] < y33) & (v[:, 1] > lm[51, 1] - 0.1) & (v[:, 0] > lm[48, 0]) & (v[:, 0] < lm[54, 0])
    label[upper] = REGION_NAMES.index("upper_lip")
    nose_poly = np.array([[lm[27, 0] - 0.6, y27 + 0.2], [lm[27, 0] + 0.6, y27 + 0.2], [x35 + 0.45, lm[35, 1] + 0.4],
                          [x35 + 0.25, y33 - 0.15], [x31 - 0.25, y33 - 0.15], [x31 - 0.45, lm[31, 1] + 0.4]])
    label[narrow & (v[:, 2] > 9.0) & _polygon_contains(nose_poly, xy)] = REGION_NAMES.index("nose")
    lips = narrow & (_polygon_contains(lm[48:60, :2], xy) | (_segment_distance(lm[48:60, :2], xy) < 0.08))
    label[lips & (v[:, 2] > 9.0)] = REGION_NAMES.index("lips")
    for eye in (lm[36:42, :2], lm[42:48, :2]):
        d = _segment_distance(eye, xy)
        top, bottom = eye[:, 1].max(), eye[:, 1].min()
        lid = face & ~_polygon_contains(eye, xy) & (((v[:, 1] >= bottom) & (d < 0.8)) | ((v[:, 1] < bottom) & (d < 0.5)))
        lid &= v[:, 1] < top + 0.9
        label[lid] = REGION_NAMES.index("eyelids")
    for brow in (lm[17:22, :2], lm[22:27, :2]):
        label[face & (_segment_distance(brow, xy, closed=False) < 0.45)] = REGION_NAMES.index("brows")
    for name in ("eye_socket_left", "eye_socket_right"):
        lo, hi = VERTEX_RANGES[name]
        label[lo:hi + 1] = REGION_NAMES.index("eyelids")
    onehot = np.zeros((V, len(REGION_NAMES)))
    onehot[np.arange(V), label] = 1.0
    soft = _smooth_vertex_field(model, onehot, REGION_SMOOTHING)
    return soft / np.maximum(soft.sum(1, keepdims=True), 1e-9)


# ---------------------------------------------------------------------------------------------
# Texel frames: what Blender's Normal Map node sees at each texel


@dataclass
class TileRaster:
    """The skin triangles of one tile rasterized in UV space (depends on the topology only)."""
    tile: int
    size: int
    texel: np.ndarray       # (N,) flat index row * S + col (row 0 = v = 1)
    triangle: np.ndarray    # (N,) index into topology.triangles
    bary: np.ndarray        # (N, 3) float32
    interpolation: "scipy.sparse.csr_matrix"   # (N, V): a vertex field (V, C) -> its texel values (N, C)


@dataclass
class TileFrames:
    """Per covered texel of a tile, for one set of vertex positions (component-last arrays)."""
    raster: TileRaster
    position: np.ndarray    # (N, 3) float32 (the vertices' space)
    normal: np.ndarray      # (N, 3) interpolated vertex normal, unit
    tangent: np.ndarray     # (N, 3) unit, along dP/du, orthogonal to the normal
    bitangent: np.ndarray   # (N, 3) unit, sign * normal x tangent (sign of dP/dv)
    jacobian: np.ndarray    # (N, 2, 2): [[T.Pu, T.Pv], [B.Pu, B.Pv]], length per UV unit
    regions: np.ndarray     # (N, R) soft region weights

    @property
    def texel(self) -> np.ndarray:
        return self.raster.texel

    def image(self, values: np.ndarray, fill=0.0) -> np.ndarray:
        """Per-texel values (N, ...) -> (S, S, ...) image, `fill` where no texel."""
        S = self.raster.size
        values = np.asarray(values)
        out = np.full((S * S,) + values.shape[1:], fill, dtype=values.dtype if values.dtype != bool else bool)
        out[self.texel] = values
        return out.reshape((S, S) + values.shape[1:])

    def at(self, image: np.ndarray) -> np.ndarray:
        """(S, S, ...) image -> its values at the texels (N, ...)."""
        S = self.raster.size
        return np.asarray(image).reshape((S * S,) + np.asarray(image).shape[2:])[self.texel]


_RASTERS = BoundedCache(FRAMES_CACHE_BYTES)


def skin_triangles(model: FaceModel, tile: int) -> np.ndarray:
    """Indices of the skin triangles lying wholly in UDIM tile `tile`."""
    topo = model.topology
    uv = topo.triangle_uvs
    t0 = np.floor(uv[:, :, 0].min(1)).astype(np.int64) + 1001
    t1 = np.floor(uv[:, :, 0].max(1) - 1e-6).astype(np.int64) + 1001
    part = topo.polygon_part[topo.triangle_polygon]
    return np.flatnonzero((t0 == tile) & (t1 == tile) & (part == PART_NAMES.index("skin")))


def tile_raster(model: FaceModel, tile: int, size: int) -> TileRaster:
    """The skin texels of a tile: the texture stage's UV layout (texture._uv_layout, cached there), its
    mouth-socket texels left out, each texel's triangle found from its three vertices."""
    def compute() -> TileRaster:
        import scipy.sparse

        from .texture import TILES as LAYOUT_TILES, _uv_layout
        lay = _uv_layout(model, size, "cpu")[0][LAYOUT_TILES.index(tile)]
        keep = ~lay.mouth.cpu().numpy()
        verts = lay.vertex.cpu().numpy()[:, keep].T.astype(np.int64)
        tris = model.topology.triangles.astype(np.int64)
        V = np.int64(model.num_vertices)
        keys = (tris[:, 0] * V + tris[:, 1]) * V + tris[:, 2]
        order = np.argsort(keys, kind="stable")
        want = (verts[:, 0] * V + verts[:, 1]) * V + verts[:, 2]
        pos = np.clip(np.searchsorted(keys[order], want), 0, len(keys) - 1)
        tri = order[pos]
        if not np.array_equal(keys[tri], want):
            raise RuntimeError("texel triangles not found in the topology")
        bary = lay.bary.cpu().numpy()[:, keep].T.astype(np.float32)
        # The barycentric interpolation as a sparse matrix (3 weights per row): 10x faster than gathering
        # each corner's values for a million texels, and the same sums in the same order.
        interpolation = scipy.sparse.csr_matrix((bary.reshape(-1), tris[tri].reshape(-1), np.arange(0, 3 * len(tri) + 1, 3)),
                                                shape=(len(tri), model.num_vertices))
        return TileRaster(tile, size, lay.texel.cpu().numpy()[keep], tri, bary, interpolation)
    return _RASTERS.get((model.hash, tile, size), compute)


def _region_texels(model: FaceModel, ras: TileRaster) -> np.ndarray:
    def compute() -> np.ndarray:
        vr = _RASTERS.get((model.hash, "vertex_regions"), lambda: vertex_regions(model).astype(np.float32))
        return ras.interpolation @ vr
    return _RASTERS.get((model.hash, ras.tile, ras.size, "regions"), compute)


def warm_caches(model: FaceModel, size: int) -> None:
    """Compute what the maps of a first request at this texture size would: each tile's skin raster (and
    the UV layout under it) and its texels' region weights (about 1.5 s on a 2-core CPU, then cached)."""
    for tile in TILES:
        _region_texels(model, tile_raster(model, tile, size))


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (as render.vertex_normals)."""
    p = vertices[triangles]
    fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, triangles[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def triangle_jacobians(vertices: np.ndarray, corner_uvs: np.ndarray, triangles: np.ndarray,
                       triangle_corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle dP/du and dP/dv (T, 3) each (length per UV unit), from positions and corner UVs."""
    p = vertices[triangles].astype(np.float64)
    uv = corner_uvs[triangle_corners].astype(np.float64)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    det = np.where(np.abs(det) < 1e-14, 1e-14, det)[:, None]
    pu = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det
    pv = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / det
    return pu, pv


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.sqrt(_dot(a, a)), 1e-12)[:, None]


def texel_frames(model: FaceModel, vertices, size: int, tiles=TILES,
                 check: Callable[[], None] = _nothing) -> dict[int, TileFrames]:
    """The tangent frames of every skin texel for the given vertex positions (V, 3), any units.
    `check()` is called between tiles and steps (it raises to cancel)."""
    verts = (vertices.detach().cpu().numpy() if isinstance(vertices, torch.Tensor) else np.asarray(vertices))
    verts = verts.astype(np.float64)
    topo = model.topology
    vn = _vertex_normals(verts, topo.triangles).astype(np.float32)
    pu_all, pv_all = triangle_jacobians(verts, topo.corner_uvs, topo.triangles, topo.triangle_corners)
    pu_all, pv_all = pu_all.astype(np.float32), pv_all.astype(np.float32)
    v32 = verts.astype(np.float32)
    out = {}
    both = np.concatenate([v32, vn], 1)
    for tile in tiles:
        check()
        ras = tile_raster(model, tile, size)
        at_texels = ras.interpolation @ both
        pos, nrm = np.ascontiguousarray(at_texels[:, :3]), _unit(at_texels[:, 3:])
        pu, pv = pu_all[ras.triangle], pv_all[ras.triangle]
        check()
        t = _unit(pu - nrm * _dot(nrm, pu)[:, None])
        bt = np.cross(nrm, t)
        bt *= np.where(_dot(bt, pv) < 0, -1.0, 1.0).astype(np.float32)[:, None]
        jac = np.empty((len(t), 2, 2), np.float32)
        jac[:, 0, 0], jac[:, 0, 1] = _dot(t, pu), _dot(t, pv)
        jac[:, 1, 0], jac[:, 1, 1] = _dot(bt, pu), _dot(bt, pv)
        out[tile] = TileFrames(ras, pos, nrm, t, bt, jac, _region_texels(model, ras))
    check()
    return out


def uv_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/du and d/dv (per UV unit) of an (S, S) tile image by central differences (row 0 = v = 1)."""
    img = np.asarray(image, dtype=np.float64)
    S = img.shape[0]
    pad = np.pad(img, 1, mode="edge")
    du = (pad[1:-1, 2:] - pad[1:-1, :-2]) * (0.5 * S)
    dv = -(pad[2:, 1:-1] - pad[:-2, 1:-1]) * (0.5 * S)
    return du, dv


def surface_gradient(frames: TileFrames, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """(N, 2) gradient along (T, B) per unit length of a field with UV derivatives du, dv (S, S):
    grad_tb = J^-T (d/du, d/dv)."""
    j = frames.jacobian.astype(np.float64)
    a, b, c, d = j[:, 0, 0], j[:, 0, 1], j[:, 1, 0], j[:, 1, 1]
    det = a * d - b * c
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    hu, hv = frames.at(du), frames.at(dv)
    return np.stack([(d * hu - c * hv) / det, (-b * hu + a * hv) / det], 1)


def normals_from_slopes(slopes: np.ndarray, max_slope: float = 1.5) -> np.ndarray:
    """(N, 2) surface gradient of the height (dh/dt, dh/db) -> (N, 3) unit tangent-space normals."""
    s = np.asarray(slopes, dtype=np.float64)
    mag = np.linalg.norm(s, axis=1, keepdims=True)
    s = s * np.minimum(1.0, max_slope / np.maximum(mag, 1e-12))
    n = np.concatenate([-s, np.ones((len(s), 1))], 1)
    return (n / np.linalg.norm(n, axis=1, keepdims=True)).astype(np.float32)


def height_to_normal(height: np.ndarray, frames: TileFrames, check: Callable[[], None] = _nothing) -> np.ndarray:
    """(S, S, 3) tangent-space normal map (OpenGL, +Y = +v) of a height field (S, S) over one tile, in
    the units of the frames' positions; flat (0, 0, 1) where no skin texel. `check()` is called between
    steps (it raises to cancel)."""
    du, dv = uv_gradient(height)
    slopes = surface_gradient(frames, du, dv)
    check()
    normals = normals_from_slopes(slopes)
    check()
    return frames.image(normals, fill=0.0) + _flat_outside(frames)


def flat_normals(size: int) -> np.ndarray:
    """(S, S, 3) the flat tangent-space normal (0, 0, 1) everywhere."""
    out = np.zeros((size, size, 3), np.float32)
    out[..., 2] = 1.0
    return out


def _flat_outside(frames: TileFrames) -> np.ndarray:
    S = frames.raster.size
    out = np.zeros((S * S, 3), np.float32)
    out[:, 2] = 1.0
    out[frames.texel] = 0.0
    return out.reshape(S, S, 3)


def encode_normal16(normals: np.ndarray) -> np.ndarray:
    """(S, S, 3) unit normals -> uint16 RGB, c = n * 0.5 + 0.5 (Blender decodes n = 2c - 1)."""
    n = np.clip(np.asarray(normals, dtype=np.float64), -1.0, 1.0)
    return np.round((n * 0.5 + 0.5) * 65535.0).astype(np.uint16)


def decode_normal(image: np.ndarray) -> np.ndarray:
    """uint8 or uint16 RGB normal map -> (S, S, 3) float vectors n = 2c - 1 (what Blender's node reads)."""
    img = np.asarray(image)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float64) / scale * 2.0 - 1.0


# ---------------------------------------------------------------------------------------------
# Settings. The gains and strengths are calibrated on synthetic heads of known maps, seed 1
# (`python -m backend.bench.maps_truth --tune --seed 1`, docs/maps.md); seed 2 is the reported one.


@dataclass(frozen=True)
class MapSettings:
    # Detail normals: slope = cavity_cm * grad(r) - shading_gain * r * g / (|g|^2 + shading_eps^2), r the
    # high-pass of the de-lit log-luminance (clipped at +-detail_clip), g the shading's log-change per
    # unit tilt along T and B.
    cavity_cm: float = 0.002
    shading_gain: float = 2.0
    shading_eps: float = 0.6
    detail_max_mm: float = 4.0          # wavelet bands up to this scale (2^j texels) are relief
    detail_clip: float = 0.25
    detail_visibility: tuple[float, float] = (0.3, 0.7)  # the photo's weight from which detail is trusted
    # Specular: region and local estimates shrunk towards the prior with these strengths (units of the
    # summed squared predicted highlight, per 1024^2 texels), local pooling radius, roughness candidates.
    spec_evidence: bool = True          # the photo's highlights move the region priors (off: the maps are the
    #                                     priors). On the synthetic truth (docs/maps.md) it beats them on two
    #                                     seeds it was not tuned on, measured 2026-12-03 (on 2026-12-01's
    #                                     pipeline it did not, and was off)
    spec_region_strength: float = 4.0
    spec_chroma_cm: float = 0.5         # window of the skin's local colour for the dichromatic split
    spec_moments: bool = True           # a region's level from its summed evidence / summed prediction
    spec_contaminated_reference: bool = True  # predictions as the evidence sees them (module docstring)
    spec_ratio_range: tuple[float, float] = (0.25, 2.0)   # the photo may scale a region's level by this much
    roughness_grid: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    roughness_prior_weight: float = 0.05
    smooth_cm: float = 0.15             # final smoothing of the specular and roughness maps
    light_search: bool = True           # find the key light's direction from the highlights themselves
    light_search_min_corr: float = 0.2  # ... used when its highlight correlates with the evidence this well
    spec_size: int = 256                # the specular estimate runs on tiles of this size (its maps are smooth)
    remove_highlights: bool = True      # the photo's highlights out of the diffuse map (backend/highlights.py)


DEFAULT_SETTINGS = MapSettings()


# ---------------------------------------------------------------------------------------------
# The fitted light: SH shading, its gradient, its directional part


def sh_basis_np(n: np.ndarray) -> np.ndarray:
    """(N, 3) unit normals -> (N, 9) render.py's SH basis."""
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    c0, c1, c2, c3, c4 = SH_C
    return np.stack([np.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                     c3 * (3 * z * z - 1), c2 * x * z, c4 * (x * x - y * y)], 1)


def sh_gradient_np(n: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """(N, 3) gradient w.r.t. the normal of S(n) = sh_basis(n) @ coeffs (coeffs (9,), one channel)."""
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    c0, c1, c2, c3, c4 = SH_C
    k = coeffs
    gx = c1 * k[3] + c2 * y * k[4] + c2 * z * k[7] + 2 * c4 * x * k[8]
    gy = c1 * k[1] + c2 * x * k[4] + c2 * z * k[5] - 2 * c4 * y * k[8]
    gz = c1 * k[2] + c2 * y * k[5] + 6 * c3 * z * k[6] + c2 * x * k[7]
    return np.stack([gx, gy, gz], 1)


def key_light(sh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The directional part of SH shading (9, 3): unit direction (camera space, towards the light) and
    irradiance per channel of a distant light with the same first band (a light of irradiance E from d
    has shading band-1 coefficients (2/3) 0.488603 E d)."""
    sh = np.asarray(sh, dtype=np.float64)
    band1 = np.stack([sh[3], sh[1], sh[2]])            # (xyz, rgb)
    lum = band1 @ LUMA
    mag = float(np.linalg.norm(lum))
    if mag < 1e-9:
        return np.array([0.0, 0.0, 1.0]), np.zeros(3)
    d = lum / mag
    return d, np.maximum(d @ band1, 0.0) / BAND1_DIRECTIONAL


def direction_grid(step_deg: float = 10.0, az=(-80.0, 80.0), el=(-30.0, 75.0)) -> np.ndarray:
    """(K, 3) unit directions on an azimuth x elevation grid, camera space (+Z towards the camera)."""
    out = []
    for e in np.arange(el[0], el[1] + 1e-6, step_deg):
        for a in np.arange(az[0], az[1] + 1e-6, step_deg):
            ar, er = math.radians(a), math.radians(e)
            out.append([math.sin(ar) * math.cos(er), math.sin(er), math.cos(ar) * math.cos(er)])
    return np.asarray(out)


def search_light_direction(n: np.ndarray, v: np.ndarray, s: np.ndarray, w: np.ndarray, roughness, f0,
                           start: np.ndarray, max_samples: int = 6000) -> tuple[np.ndarray, float, float]:
    """The distant light direction whose GGX highlight (prior roughness and F0) correlates best with the
    specular evidence s (weights w): a 10-degree grid, then a 2.5-degree one around the best. Returns the
    direction, its weighted correlation and the correlation of `start` (the SH fit's direction)."""
    idx = np.flatnonzero(w > 0.3)
    if len(idx) > max_samples:
        idx = idx[:: int(math.ceil(len(idx) / max_samples))]
    if len(idx) < 100:
        return start, 0.0, 0.0
    rough = np.asarray(roughness, dtype=np.float64)[idx] if np.ndim(roughness) else roughness
    f0 = np.asarray(f0, dtype=np.float64)[idx] if np.ndim(f0) else f0
    n, v, s, w = n[idx], v[idx], s[idx], w[idx]
    ss = float(np.sum(w * s * s))

    def corr(directions: np.ndarray) -> list[float]:
        """The correlation for each of (K, 3) directions, DIRECTION_BATCH at a time (a batch's lobes in one
        numpy call per step instead of one per direction)."""
        out = []
        for a in range(0, len(directions), DIRECTION_BATCH):
            p = ggx_specular(n, v, directions[a:a + DIRECTION_BATCH, None, :], rough, f0)     # (B, N)
            pp, ps = np.sum(w * p * p, axis=-1), np.sum(w * s * p, axis=-1)
            out += [float(c) / math.sqrt(max(float(q) * ss, 1e-30)) if q > 0 else 0.0 for c, q in zip(ps, pp)]
        return out
    c_start = corr(np.asarray(start, dtype=np.float64)[None])[0]
    grid = direction_grid(10.0)
    best = grid[int(np.argmax(corr(grid)))]
    az0, el0 = math.degrees(math.atan2(best[0], best[2])), math.degrees(math.asin(np.clip(best[1], -1, 1)))
    fine = direction_grid(2.5, (az0 - 7.5, az0 + 7.5), (el0 - 7.5, el0 + 7.5))
    fscores = corr(fine)
    j = int(np.argmax(fscores))
    return fine[j], float(fscores[j]), c_start


DIRECTION_BATCH = 32   # light directions per batched GGX evaluation: (32, 6000, 3) float64 arrays, 4.6 MB each


def ggx_specular(n: np.ndarray, v: np.ndarray, l: np.ndarray, roughness, f0) -> np.ndarray:
    """(N,) GGX microfacet BRDF x cos(theta_l) (Smith G, Schlick F) for unit normals/view (N, 3) and a
    light direction (3,) or (N, 3), or (B, N) for a batch of directions (B, 1, 3); roughness and f0
    scalars or (N,). Principled's lobe: alpha = r^2."""
    # On x, y, z components, not (..., 3) arrays: numpy's reductions over an axis of 3 cost more than the
    # arithmetic, and ((x + y) + z) is their order of summation too, so the numbers are the same.
    # (a light (3,) as (1, 3): its components 1-element arrays, not scalars, which numpy would cast to the
    # normals' float32 where the (N, 3) broadcast it stands for would not)
    n, v, l = ([np.asarray(a)[..., i] for i in range(3)] for a in (n, v, np.atleast_2d(l)))

    def dot(a, b):
        return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    h = [vi + li for vi, li in zip(v, l)]
    norm = np.maximum(np.sqrt(dot(h, h)), 1e-12)
    h = [hi / norm for hi in h]
    nl, nv = dot(n, l), dot(n, v)
    nh, vh = np.clip(dot(n, h), 0.0, 1.0), np.clip(dot(v, h), 0.0, 1.0)
    a2 = np.asarray(roughness, dtype=np.float64) ** 4
    d = a2 / (np.pi * (nh * nh * (a2 - 1.0) + 1.0) ** 2)

    def g1(c):
        c = np.clip(c, 1e-4, 1.0)
        return 2.0 * c / (c + np.sqrt(a2 + (1.0 - a2) * c * c))
    f = f0 + (1.0 - f0) * (1.0 - vh) ** 5
    spec = d * g1(nl) * g1(nv) * f / (4.0 * np.clip(nl, 1e-4, None) * np.clip(nv, 1e-4, None))
    return np.where((nl > 0) & (nv > 0), spec * nl, 0.0)


# ---------------------------------------------------------------------------------------------
# Detail normals


def texel_size_cm(frames: TileFrames) -> float:
    """Median surface length of one texel (the frames' units per texel)."""
    j = frames.jacobian.astype(np.float64)
    return float(np.median(np.sqrt(np.abs(j[:, 0, 0] * j[:, 1, 1] - j[:, 0, 1] * j[:, 1, 0])))) / frames.raster.size


def detail_levels(texel_cm: float, max_mm: float, size: int) -> int:
    """Wavelet levels j = 1..J whose scale 2^j texels is at most `max_mm` (and that the size allows)."""
    j = int(math.floor(math.log2(max(max_mm / max(texel_cm * 10.0, 1e-6), 1.0))))
    limit = int(math.log2(size & -size)) if size else 0
    return max(1, min(j, limit, 6))


def highpass(image: np.ndarray, levels: int, wavelet: str = "sym4", check: Callable[[], None] = _nothing) -> np.ndarray:
    """The image's detail sub-bands 1..levels (stationary wavelet transform, the approximation dropped).

    One level at a time, with `check()` between levels (a 2048-px tile takes 2-3 s in all, too long
    for a cancel to wait): forward, each level from the last one's approximation (pywt's own
    recursion); inverse, level j's a-trous filters (dilated 2^(j-1)) on a periodic image act on each
    of its 2^(j-1) x 2^(j-1) interleaved sub-grids independently, undilated: one batched level-1
    inverse over those sub-grids. The same numbers as pywt.iswt2 over all levels at once, bit for bit."""
    import pywt
    approx, details = np.asarray(image, dtype=np.float32), []
    for j in range(levels):
        approx, d = pywt.swt2(approx, wavelet, level=1, start_level=j, trim_approx=True, norm=True)
        details.append(d)
        check()
    out = np.zeros_like(approx)
    for j in range(levels, 0, -1):
        step = 2 ** (j - 1)
        split = lambda a: a.reshape(a.shape[0] // step, step, a.shape[1] // step, step).transpose(1, 3, 0, 2)  # noqa: E731
        sub = pywt.iswt2([split(out), tuple(split(d) for d in details[j - 1])], wavelet, norm=True, axes=(-2, -1))
        out = sub.transpose(2, 0, 3, 1).reshape(out.shape)
        check()
    return out


def log_luminance(diffuse: np.ndarray) -> np.ndarray:
    lum = np.asarray(diffuse, dtype=np.float64) @ LUMA
    return np.log(np.maximum(lum, 1e-3))


def relief_residual(diffuse: np.ndarray, visibility: np.ndarray, frames: TileFrames,
                    settings: MapSettings = DEFAULT_SETTINGS, check: Callable[[], None] = _nothing) -> np.ndarray:
    """(S, S) r: the de-lit log-luminance's high-frequency part, clipped, faded out where the photo did
    not see the texel well and on the brows (hair, not relief)."""
    levels = detail_levels(texel_size_cm(frames), settings.detail_max_mm, frames.raster.size)
    r = np.clip(highpass(log_luminance(diffuse), levels, check=check), -settings.detail_clip, settings.detail_clip)
    check()
    lo, hi = settings.detail_visibility
    t = np.clip((np.asarray(visibility, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    trust = t * t * (3 - 2 * t)
    brows = frames.image(frames.regions[:, REGION_NAMES.index("brows")].astype(np.float64), fill=0.0)
    return r * trust * (1.0 - brows)


def shading_tilt_gradient(frames: TileFrames, rotation: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """(N, 2) g: d log S / d(tilt) along T and B, S the fitted luminance shading on camera-space normals.
    Tilting the normal by slope (a, b) (n' ~ n - a T - b B) changes log S by about -(a g_t + b g_b)."""
    rot = np.asarray(rotation, dtype=np.float32)
    n = frames.normal @ rot.T
    t = frames.tangent @ rot.T
    b = frames.bitangent @ rot.T
    k = (np.asarray(sh, dtype=np.float64) @ LUMA).astype(np.float32)
    s = np.maximum(sh_basis_np(n) @ k, 1e-3)
    grad = sh_gradient_np(n, k)
    return np.stack([_dot(grad, t), _dot(grad, b)], 1) / s[:, None]


def detail_slopes(r: np.ndarray, frames: TileFrames, g: np.ndarray, settings: MapSettings) -> np.ndarray:
    """(N, 2) estimated surface gradient of the relief from the residual r (S, S) (module docstring)."""
    slopes = np.zeros((len(frames.texel), 2))
    if settings.cavity_cm:
        du, dv = uv_gradient(r)
        slopes += settings.cavity_cm * surface_gradient(frames, du, dv)
    if settings.shading_gain:
        rt = frames.at(r)
        denom = np.sum(g * g, 1) + settings.shading_eps ** 2
        slopes -= settings.shading_gain * (rt / denom)[:, None] * g
    return slopes


def integrate_slopes(slopes: np.ndarray, frames: TileFrames, damping: float = 1e-3) -> np.ndarray:
    """(S, S) height (the frames' units) whose gradient is closest to the slopes (N, 2) (d/dt, d/db):
    a Poisson solve on the tile (FFT, central differences; `damping` keeps wavelengths beyond ~2 pi /
    sqrt(damping) texels out). The estimate's non-integrable part (noise, and the relief's component
    across the light that one photo cannot see) is dropped on the way."""
    S = frames.raster.size
    j = frames.jacobian.astype(np.float64)
    hu = j[:, 0, 0] * slopes[:, 0] + j[:, 1, 0] * slopes[:, 1]          # (d/du, d/dv) = J^T grad_tb
    hv = j[:, 0, 1] * slopes[:, 0] + j[:, 1, 1] * slopes[:, 1]
    gx = frames.image(hu / S, fill=0.0)                                   # per texel, along columns
    gy = frames.image(-hv / S, fill=0.0)                                  # per texel, along rows (v down)
    f = np.fft.fftfreq(S)
    dx = 1j * np.sin(2 * np.pi * f)[None, :]
    dy = 1j * np.sin(2 * np.pi * f)[:, None]
    spec = (np.conj(dx) * np.fft.fft2(gx) + np.conj(dy) * np.fft.fft2(gy)) / (np.abs(dx) ** 2 + np.abs(dy) ** 2 + damping)
    spec[0, 0] = 0.0
    return np.real(np.fft.ifft2(spec))


def detail_height(diffuse: np.ndarray, visibility: np.ndarray, frames: TileFrames, rotation: np.ndarray,
                  sh: np.ndarray | None, settings: MapSettings = DEFAULT_SETTINGS,
                  check: Callable[[], None] = _nothing) -> np.ndarray:
    """(S, S) relief height (cm) of one tile from the de-lit photo (module docstring). `check()` is
    called between steps (it raises to cancel)."""
    r = relief_residual(diffuse, visibility, frames, settings, check)
    if sh is None:
        settings = replace(settings, shading_gain=0.0)
    check()
    g = shading_tilt_gradient(frames, rotation, sh) if settings.shading_gain else None
    check()
    if not (settings.cavity_cm or settings.shading_gain):
        return np.zeros((frames.raster.size,) * 2)
    slopes = detail_slopes(r, frames, g, settings)
    check()
    return integrate_slopes(slopes, frames)


def detail_normals(diffuse: np.ndarray, visibility: np.ndarray, frames: TileFrames, rotation: np.ndarray,
                   sh: np.ndarray | None, settings: MapSettings = DEFAULT_SETTINGS,
                   check: Callable[[], None] = _nothing) -> np.ndarray:
    """(S, S, 3) tangent-space detail normals of one tile (flat where there is no skin or no evidence)."""
    height = detail_height(diffuse, visibility, frames, rotation, sh, settings, check)
    check()
    return height_to_normal(height, frames, check)


# ---------------------------------------------------------------------------------------------
# Specular level and roughness


def prior_maps(frames: TileFrames) -> tuple[np.ndarray, np.ndarray]:
    """(N,) prior level and roughness per texel: the regions' priors blended by their soft weights."""
    lv = np.array([REGIONS[r].level for r in REGION_NAMES])
    ro = np.array([REGIONS[r].roughness for r in REGION_NAMES])
    w = frames.regions.astype(np.float64)
    return w @ lv, w @ ro


def specular_evidence(photo: np.ndarray, base: np.ndarray, shading: np.ndarray,
                      light_colour: np.ndarray) -> np.ndarray:
    """(N,) specular luminance per texel by the dichromatic model: the residual above the diffuse fit,
    photo - base * shading (N, 3), as s * light_colour (unit luminance) + d * base * shading (a skin-colour
    brightness change); least squares per texel, s returned (negative values kept: noise is unbiased)."""
    res = photo - base * shading
    a = np.broadcast_to(light_colour, res.shape)
    b = base * shading

    def dot(x, y):    # per-row dot product of (N, 3) arrays (einsum: a third of np.sum(x * y, 1)'s time)
        return np.einsum("ij,ij->i", x, y)
    aa, ab, bb = dot(a, a), dot(a, b), dot(b, b)
    ar, br = dot(a, res), dot(b, res)
    det = aa * bb - ab * ab
    ok = det > 1e-6 * np.maximum(aa * bb, 1e-12)
    s = np.where(ok, (bb * ar - ab * br) / np.where(ok, det, 1.0), 0.0)
    return s


def wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of (H, W) float32 by `sigma` px (texels), done on a copy shrunk so that the kernel
    is about 4 px wide there (area down, bilinear up): wide windows in milliseconds."""
    h, w = image.shape[:2]
    f = int(max(1, min(min(h, w) // 16, 2 ** int(math.log2(max(sigma / 4.0, 1.0))))))
    small = cv2.resize(image, (w // f, h // f), interpolation=cv2.INTER_AREA) if f > 1 else image
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if f > 1 else small


@dataclass
class SpecularFit:
    level: dict[int, np.ndarray] = field(default_factory=dict)       # (S, S) per tile
    roughness: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def masked_blur(image: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """(S, S, C) weighted local mean of an image (weights (S, S)), Gaussian window of `sigma` texels."""
    w = np.ascontiguousarray(weight, np.float32)
    den = np.maximum(wide_blur(w, sigma), 1e-6)
    img = np.asarray(image, np.float32)
    return np.stack([wide_blur(np.ascontiguousarray(img[..., c] * w), sigma) / den for c in range(img.shape[-1])], -1)


def region_maps(frames: dict[int, TileFrames], ratio: np.ndarray, rough: np.ndarray,
                settings: MapSettings = DEFAULT_SETTINGS) -> tuple[dict, dict]:
    """Per tile (S, S) level and roughness: each region's prior level times its ratio, and its roughness,
    blended by the soft region weights and smoothed over settings.smooth_cm."""
    level_out, rough_out = {}, {}
    for tile, fr in frames.items():
        lv_prior, _ = prior_maps(fr)
        rho = fr.regions.astype(np.float64)
        level = np.clip(lv_prior * (rho @ ratio), 0.0, 1.0)
        r_map = rho @ rough
        smooth = max(0.5, settings.smooth_cm / max(texel_size_cm(fr), 1e-6))
        lvl_img = cv2.GaussianBlur(fr.image(level.astype(np.float32), fill=float(np.median(level))), (0, 0), smooth)
        rgh_img = cv2.GaussianBlur(fr.image(r_map.astype(np.float32), fill=float(np.median(r_map))), (0, 0), smooth)
        level_out[tile] = np.clip(lvl_img, 0.0, 1.0).astype(np.float32)
        rough_out[tile] = np.clip(rgh_img, 0.05, 1.0).astype(np.float32)
    return level_out, rough_out


def specular_maps(diffuse: dict[int, np.ndarray], visibility: dict[int, np.ndarray],
                  frames: dict[int, TileFrames], rotation: np.ndarray, translation: np.ndarray,
                  sh: np.ndarray | None, settings: MapSettings = DEFAULT_SETTINGS,
                  light: tuple[np.ndarray, np.ndarray] | None = None,
                  check: Callable[[], None] = _nothing) -> SpecularFit:
    """Specular level and roughness per tile from the de-lit maps (diffuse = photo / fitted shading).
    `light`: (direction, irradiance rgb) of the key light when known (tests, the synthetic truth);
    `check()` is called between steps (it raises to cancel).

    1. Evidence: the photo at each seen texel (diffuse x shading) split by the dichromatic model into the
       light's colour (the specular radiance s) and the skin's colour (`specular_evidence`). The skin's
       colour there is the local mean of the de-lit colour (`spec_chroma_cm` window) over the texels
       where no highlight is expected, so the highlight itself does not set it.
    2. The key light: the SH fit's first band gives a direction and irradiance (`key_light`); the
       direction is refined on the highlights (`search_light_direction`).
    3. Per region i and roughness candidate r_j, weighted least squares of s = k * E * GGX(n, v, l; r_j,
       F0 prior) over the region's seen texels, k shrunk towards 1 with `spec_region_strength` (in units
       of the summed squared prediction per 1024^2 texels: a region the light shows no highlight on keeps
       its prior); the roughness is the candidate of least residual (a weak pull to the prior).
    4. The maps blend the regions' values by their soft weights, smoothed (`smooth_cm`).
    (A broad sheen is mostly absorbed by the SH fit as light: what is left to see is the highlight's
    colour and its peak; the synthetic truth, backend/bench/maps_truth.py, measures how much that gives.)"""
    R = len(REGION_NAMES)
    prior_r = np.array([REGIONS[r].roughness for r in REGION_NAMES])
    if not settings.spec_evidence:
        level, rough_maps = region_maps(frames, np.ones(R), prior_r, settings)
        return SpecularFit(level, rough_maps, {"evidence": False})
    rot = np.asarray(rotation, dtype=np.float64)
    trans = np.asarray(translation, dtype=np.float64)
    grid = np.asarray(settings.roughness_grid, dtype=np.float64)
    out = SpecularFit()
    priors = {t: prior_maps(f) for t, f in frames.items()}
    sh = None if sh is None else np.asarray(sh, dtype=np.float64)
    d, e_rgb = key_light(sh) if sh is not None else (np.array([0.0, 0.0, 1.0]), np.zeros(3))
    if light is not None:
        d, e_rgb = np.asarray(light[0], dtype=np.float64), np.asarray(light[1], dtype=np.float64)
        settings = replace(settings, light_search=False)
    e_lum = float(e_rgb @ LUMA)
    light_colour = e_rgb / e_lum if e_lum > 1e-6 else np.ones(3)
    evidence_ok = np.array([1.0 if REGIONS[r].evidence else 0.0 for r in REGION_NAMES])
    geo = {}
    for tile, fr in frames.items():
        check()
        vis = fr.at(visibility[tile]).astype(np.float64)
        idx = np.flatnonzero(vis > 0.05)
        if e_lum <= 1e-6 or len(idx) == 0:
            continue
        n = fr.normal[idx].astype(np.float64) @ rot.T
        p = fr.position[idx].astype(np.float64) @ rot.T + trans
        v = -p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
        shading = np.maximum(sh_basis_np(n) @ sh, 1e-3)
        w = vis[idx] * np.clip((_dot(n, v) - 0.2) / 0.3, 0.0, 1.0)
        rho = fr.regions[idx].astype(np.float64) * evidence_ok[None, :]
        geo[tile] = (idx, n, v, shading, w, rho)

    def evidence(mask_of: dict | None, preds: dict | None = None):
        """s per tile at the seen texels, the skin's colour from the texels outside the expected highlight;
        with `preds` (tile -> (M, G) predicted highlights), also those predictions as the evidence sees
        them: the reference colour's window holds some of the highlight too, so s ~ k (p - S ref(p / S))."""
        out_s, out_p = {}, {}
        for tile, (idx, n, v, shading, w, rho) in geo.items():
            check()
            fr = frames[tile]
            S = fr.raster.size
            weight = np.zeros(S * S, np.float32)
            weight[fr.texel[idx]] = w * (mask_of[tile] if mask_of is not None else 1.0)
            sigma = max(1.0, settings.spec_chroma_cm / max(texel_size_cm(fr), 1e-6))
            lum = shading @ LUMA
            fields = [diffuse[tile]]
            if preds is not None:
                q = np.zeros((S * S, preds[tile].shape[1]), np.float32)
                q[fr.texel[idx]] = preds[tile] / lum[:, None]
                fields.append(q.reshape(S, S, -1))
            stack = np.concatenate([np.asarray(f, np.float32).reshape(S, S, -1) for f in fields], -1)
            # per region (lips are not the skin around them), blended by the soft region weights
            ref = np.zeros((len(idx), stack.shape[-1]))
            for i in range(R):
                ri = fr.regions[:, i]
                if ri[idx].max() <= 0.01:
                    continue
                wi = weight.copy()
                wi[fr.texel] *= ri >= 0.75                 # the region's own core sets its colour
                ref += ri[idx, None] * fr.at(masked_blur(stack, wi.reshape(S, S), sigma))[idx]
            dif = fr.at(diffuse[tile])[idx].astype(np.float64)
            out_s[tile] = specular_evidence(dif * shading, ref[:, :3], shading, light_colour)
            if preds is not None:
                out_p[tile] = preds[tile] - lum[:, None] * ref[:, 3:]
        return (out_s, out_p) if preds is not None else out_s

    def highlight_mask(direction) -> dict[int, np.ndarray]:
        pred = {t: ggx_specular(g[1], g[2], direction, priors[t][1][g[0]], f0_from_level(priors[t][0][g[0]]))
                for t, g in geo.items()}
        allp = np.concatenate(list(pred.values())) if pred else np.zeros(1)
        top = max(float(np.percentile(allp, 90)), 1e-9)
        return {t: 1.0 - np.clip(p / top, 0.0, 1.0) for t, p in pred.items()}

    search = {"sh_direction": [round(float(x), 4) for x in d]}
    s_tex = evidence(highlight_mask(d)) if geo else {}
    if settings.light_search and geo:
        # Twice: the evidence depends (through the skin colour's mask) on where the highlight is expected.
        cat = {k: np.concatenate([g[k] for g in geo.values()]) for k in (1, 2, 4, 5)}
        lv_all = np.concatenate([priors[t][0][g[0]] for t, g in geo.items()])
        ro_all = np.concatenate([priors[t][1][g[0]] for t, g in geo.items()])
        sh_dir = d
        for it in range(2):
            s_all = np.concatenate([s_tex[t] for t in geo])
            check()
            found, c_found, c_sh = search_light_direction(cat[1], cat[2], s_all, cat[4] * cat[5].sum(1), ro_all,
                                                          f0_from_level(lv_all), sh_dir)
            search.update({"found_direction": [round(float(x), 4) for x in found], "found_corr": round(c_found, 3),
                           "sh_corr": round(c_sh, 3)})
            if not (c_found >= settings.light_search_min_corr and c_found > c_sh):
                break
            d = found
            s_tex = evidence(highlight_mask(d))
        if d is not sh_dir:
            band1 = np.stack([sh[3], sh[1], sh[2]])
            e_rgb = np.maximum(d @ band1, 0.1 * np.linalg.norm(band1, axis=0)) / BAND1_DIRECTIONAL
            e_lum = float(e_rgb @ LUMA)
    # Per region and roughness candidate: sums of w s p, w p^2, w s^2 (p per unit irradiance).
    sums_n = np.zeros((R, len(grid)))
    sums_d = np.zeros((R, len(grid)))
    sums_q = np.zeros(R)
    sums_s1 = np.zeros(R)
    sums_p1 = np.zeros((R, len(grid)))
    preds = {t: np.stack([ggx_specular(g[1], g[2], d, r, f0_from_level(priors[t][0][g[0]])) for r in grid], 1)
             for t, g in geo.items()}
    check()
    if geo:
        s_tex, seen_preds = evidence(highlight_mask(d), preds)
    for tile, (idx, n, v, shading, w, rho) in geo.items():
        scale = (1024.0 / frames[tile].raster.size) ** 2
        sn = s_tex[tile] / max(e_lum, 1e-9)
        pred = seen_preds[tile] if settings.spec_contaminated_reference else preds[tile]
        wr = scale * rho * w[:, None]
        sums_n += wr.T @ (sn[:, None] * pred)
        sums_d += wr.T @ (pred * pred)
        sums_q += wr.T @ (sn * sn)
        sums_s1 += wr.T @ sn
        sums_p1 += wr.T @ pred
    tau = settings.spec_region_strength
    lo, hi = settings.spec_ratio_range
    ratio, rough, conf = np.ones(R), prior_r.copy(), np.zeros(R)
    for i in range(R):
        dd = sums_d[i]
        if sums_q[i] <= 0 or dd.max() <= 0:
            continue
        k = np.clip(sums_n[i] / np.maximum(dd, 1e-12), 0.0, None)
        err = (sums_q[i] - 2 * k * sums_n[i] + k * k * dd) / sums_q[i]
        err = err + settings.roughness_prior_weight * ((grid - prior_r[i]) / 0.2) ** 2
        j = int(np.argmin(err))
        c = dd[j] / (dd[j] + tau)
        if settings.spec_moments:
            t1 = tau * sums_p1[i, j] / max(dd[j], 1e-12)   # the same shrinkage, in first-moment units
            ratio[i] = float(np.clip((sums_s1[i] + t1) / (sums_p1[i, j] + t1), lo, hi))
        else:
            ratio[i] = float(np.clip((sums_n[i, j] + tau) / (dd[j] + tau), lo, hi))
        rough[i] = prior_r[i] + c * (grid[j] - prior_r[i])
        conf[i] = c
    check()
    out.level, out.roughness = region_maps(frames, ratio, rough, settings)
    out.info = {"key_light_dir": [round(float(x), 4) for x in d], "key_light_irradiance": round(e_lum, 5),
                "light_search": search,
                "regions": {name: {"level_ratio": round(float(ratio[i]), 3), "roughness": round(float(rough[i]), 3),
                                   "confidence": round(float(conf[i]), 3)} for i, name in enumerate(REGION_NAMES)}}
    return out


# ---------------------------------------------------------------------------------------------
# The texture stage's hook


def specular_from_tiles(diffuse: dict[int, np.ndarray], visibility: dict[int, np.ndarray], model: FaceModel,
                        vertices, rotation, translation, sh, settings: MapSettings = DEFAULT_SETTINGS,
                        light=None, check: Callable[[], None] = _nothing) -> SpecularFit:
    """specular_maps on the tiles shrunk to settings.spec_size (area average), its maps brought back to the
    tiles' size (bilinear): the estimate pools regions and smooths over 1.5 mm, which 256 texels per
    tile resolve (0.6 mm per texel on the face), at a sixteenth of the work of 1024."""
    S = next(iter(diffuse.values())).shape[0]
    s = min(settings.spec_size, S)
    shrink = (lambda img: img) if s == S else (
        lambda img: cv2.resize(np.asarray(img, np.float32), (s, s), interpolation=cv2.INTER_AREA))
    grow = (lambda img: img) if s == S else (
        lambda img: np.ascontiguousarray(cv2.resize(img, (S, S), interpolation=cv2.INTER_LINEAR)))
    tiles = tuple(diffuse)
    frames = texel_frames(model, vertices, s, tiles, check)
    fit = specular_maps({t: shrink(diffuse[t]) for t in tiles}, {t: shrink(visibility[t]) for t in tiles}, frames,
                        rotation, translation, sh, settings, light, check)
    return SpecularFit({t: grow(v) for t, v in fit.level.items()}, {t: grow(v) for t, v in fit.roughness.items()},
                       {**fit.info, "size": s})


def measured_maps(tex, fit, model: FaceModel, settings: MapSettings = DEFAULT_SETTINGS,
                  frames: dict[int, TileFrames] | None = None,
                  check: Callable[[], None] = _nothing) -> tuple[dict, dict]:
    """{role: {tile: map}} for normal, specular and roughness from a de-lit TextureResult and its fit,
    and what was found (for result.json texture.info.maps). The texture's diffuse is the de-lit photo with
    its highlights still in: the specular evidence looks for them, and the detail normals' gains were
    calibrated on it (on the synthetic truth they are 0.03-0.2 degrees worse from the cleaned map).
    `check()` is called between steps (it raises to cancel)."""
    S = tex.size
    tiles = tuple(t for t in TILES if t in tex.maps["diffuse"])
    frames = frames or texel_frames(model, fit.vertices, S, tiles, check)
    rot = fit.rotation.detach().cpu().numpy().astype(np.float64)
    trans = fit.translation.detach().cpu().numpy().astype(np.float64)
    sh = fit.lighting.detach().cpu().numpy().astype(np.float64) if fit.lighting is not None else None
    diffuse, vis = tex.maps["diffuse"], tex.maps["visibility"]

    def normals_job(chk):
        return {t: detail_normals(diffuse[t], vis[t], frames[t], rot, sh, settings, chk) if t in DETAIL_TILES
                else flat_normals(S) for t in tiles}

    def specular_job(chk):
        if settings.spec_evidence:
            return specular_from_tiles({t: diffuse[t] for t in tiles}, {t: vis[t] for t in tiles}, model,
                                       fit.vertices, rot, trans, sh, settings, check=chk)
        return specular_maps(diffuse, vis, frames, rot, trans, sh, settings, check=chk)   # the priors alone

    # independent numpy work (0.85 s and 0.5 s at 1024 px, measured): side by side on two cores
    normals, spec = concurrently([normals_job, specular_job], check)
    tilt = {t: float(np.degrees(np.arccos(np.clip(frames[t].at(normals[t])[:, 2], -1, 1))).mean()) for t in tiles}
    info = {"detail_mean_tilt_deg": {str(t): round(v, 3) for t, v in tilt.items()}, "specular": spec.info,
            "settings": {"cavity_cm": settings.cavity_cm, "shading_gain": settings.shading_gain,
                         "shading_eps": settings.shading_eps, "detail_max_mm": settings.detail_max_mm}}
    return {"normal": normals, "specular": spec.level, "roughness": spec.roughness}, info


def with_measured_maps(tex, obs, fit, model: FaceModel, hooks=None, settings: MapSettings = DEFAULT_SETTINGS):
    """The de-lit strategy's TextureResult with measured normal, specular and roughness maps, its diffuse
    map without the photo's specular highlights (backend/highlights.py; MapSettings.remove_highlights)
    and, when the photo has landmarks, the eyes' image from the photo (backend/eyes.py)."""
    from dataclasses import replace as _replace

    from .eyes import eyes_from_photo
    from .highlights import remove_highlights
    check = hooks.cancel_check if hooks is not None else _nothing
    tiles = tuple(t for t in TILES if t in tex.maps["diffuse"])
    frames = texel_frames(model, fit.vertices, tex.size, tiles, check)
    colour = None      # the albedo model's colour per tile, the highlights' reference (torch: made here)
    if settings.remove_highlights and fit.lighting is not None and getattr(fit, "albedo_model", None) is not None \
            and fit.albedo is not None and len(fit.albedo) == fit.albedo_model.num_components:
        coeffs = fit.albedo.detach().float().cpu()
        colour = {}
        for t in tiles:
            if t in fit.albedo_model.tiles:
                check()
                colour[t] = fit.albedo_model.image(t, coeffs, tex.size).clamp(0.0, 1.0).permute(1, 2, 0).numpy()

    def maps_job(chk):   # from the photo, highlights and all
        return measured_maps(tex, fit, model, settings, frames, chk)

    def highlights_job(chk):
        if not (settings.remove_highlights and fit.lighting is not None):
            return None
        # the diffuse map without the photo's shine, so that relighting does not keep it
        return remove_highlights(tex.maps["diffuse"], tex.maps["visibility"], frames,
                                 fit.rotation.detach().cpu().numpy(), fit.lighting.detach().cpu().numpy(),
                                 colour, check=chk)

    def eyes_job(chk):
        det = getattr(obs, "detection", None)
        if det is None or len(det.points) < 478:
            return None
        chk()
        return eyes_from_photo(np.asarray(obs.photo.rgb), det.points, model, fit.vertices.detach().cpu().numpy(),
                               fit.rotation.detach().cpu().numpy(), fit.translation.detach().cpu().numpy(),
                               fit.intrinsics.focal_px,
                               fit.lighting.detach().cpu().numpy() if fit.lighting is not None else None)

    # The three read the same de-lit texture and write nothing shared: they run side by side
    # (threads.concurrently), the maps' own two halves among them (1.45 s of the 2.1 s here, measured).
    (maps, info), cleaned, eyes = concurrently([maps_job, highlights_job, eyes_job], check)
    info["highlights"] = {"removed": False}
    if cleaned is not None:
        cleaned, found = cleaned
        tex = _replace(tex, maps={**tex.maps, "diffuse": {**tex.maps["diffuse"], **cleaned}})
        info["highlights"] = {"removed": True, **found}
    check()
    images = dict(getattr(tex, "images", {}) or {})
    if eyes is not None:
        images["eyes"] = eyes.image
        info["eyes"] = eyes.info
    return _replace(tex, maps={**tex.maps, **maps}, images=images, info={**tex.info, "maps": info})

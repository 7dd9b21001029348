"""The render module: what the fitter, the texture stage and the bench all draw with.

- Projection: `camera.to_camera` and `camera.project` (re-exported here), perspective, Blender's axes.
- Vertex normals: area-weighted, differentiable.
- Rasterization without gradients (`raster.rasterize`: the visible triangle per pixel), then
  differentiable interpolation: barycentrics recomputed in torch from the projected vertices for the
  fixed triangle of each covered pixel, so gradients reach vertex positions and attributes. This is
  the split nvdiffrast makes (rasterize, then interpolate); silhouette gradients (its antialias pass)
  are not modelled: pixels do not change triangles within one step.
- The photo-view z-buffer and per-point visibility factors (depth test, viewing angle, silhouette and
  occlusion-edge fades, image border).
- Second-order spherical-harmonics shading, 27 coefficients (9 per colour channel).

Spherical harmonics convention. `sh_basis(n)` evaluates the 9 real SH functions of band 0-2 on unit
normals n = (x, y, z) in *camera space* (+X right, +Y up, +Z towards the camera), with the orthonormal
constants (Ramamoorthi & Hanrahan 2001), in the order
    Y00 = 0.282095,
    Y1-1 = 0.488603 y,  Y10 = 0.488603 z,  Y11 = 0.488603 x,
    Y2-2 = 1.092548 xy, Y2-1 = 1.092548 yz, Y20 = 0.315392 (3z^2 - 1), Y21 = 1.092548 xz,
    Y22 = 0.546274 (x^2 - y^2).
The 27 lighting coefficients `sh` (9, 3) are those of the *shading* S(n) = E(n) / pi (irradiance over
pi), so that a Lambertian surface of linear albedo a has outgoing radiance a * S(n) and
    S(n) = sh_basis(n) @ sh.
A white, uniform environment of radiance 1 gives S = 1, i.e. sh[0] = 1 / 0.282095 (`uniform_sh`).
From radiance coefficients L_lm of an environment: sh_lm = A_l L_lm / pi with A = (pi, 2 pi / 3, pi / 4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .camera import Intrinsics, project, to_camera  # noqa: F401  (re-exported: one place to draw from)
from .raster import Raster, rasterize, uv_screen  # noqa: F401

# ---------------------------------------------------------------------------------------------
# Geometry


def gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows[index] for a long `index` of any shape: the same values, but its backward is an index_add
    rather than advanced indexing's accumulating index_put, 2.3x faster on the CPU for the fit's gathers
    (30,000 pixels x 3 corners of 6,706 vertices: 1.2 against 2.8 ms per forward and backward)."""
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, *rows.shape[1:])


def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (V, 3), outward for counter-clockwise triangles (T, 3).
    Differentiable; deterministic (index_add over a fixed order)."""
    v = gather(vertices, triangles)
    fn = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    n = torch.zeros_like(vertices).index_add(0, triangles.reshape(-1), fn.repeat_interleave(3, dim=0))
    return F.normalize(n, dim=1, eps=1e-12)


# ---------------------------------------------------------------------------------------------
# Differentiable interpolation


@dataclass
class Fragments:
    """The covered pixels of a raster, each with its triangle and barycentrics."""
    pixel: torch.Tensor     # (N,) long flat pixel index, row * width + column
    triangle: torch.Tensor  # (N,) long index into the rasterized triangle array
    vertex: torch.Tensor    # (N, 3) long the triangle's vertex ids
    bary: torch.Tensor      # (N, 3) barycentrics; differentiable w.r.t. `screen` when it was given
    height: int
    width: int


def fragments(raster: Raster, screen: torch.Tensor | None = None, perspective_correct: bool = True) -> Fragments:
    """The covered pixels of `raster`. With `screen` (V, 3) = (x px, y px, depth), the same array that
    was rasterized, the barycentrics are recomputed from it in torch (so gradients flow to it);
    without, they are the rasterizer's (no gradient w.r.t. geometry)."""
    flat = raster.triangle.reshape(-1)
    pixel = torch.nonzero(flat >= 0).squeeze(1)
    tri = flat.index_select(0, pixel)
    vertex = raster.triangles.index_select(0, tri)
    if screen is None:
        bary = raster.bary.reshape(-1, 3).index_select(0, pixel)
    else:
        bary = barycentrics(screen, vertex, pixel, raster.width, perspective_correct)
    return Fragments(pixel, tri, vertex, bary, raster.height, raster.width)


def barycentrics(screen: torch.Tensor, vertex: torch.Tensor, pixel: torch.Tensor, width: int,
                 perspective_correct: bool = True) -> torch.Tensor:
    """Barycentrics (N, 3) of the pixel centres `pixel` (flat indices) in the triangles `vertex` (N, 3)
    of `screen` (V, 3): 2D edge functions, then (perspective) divided by the corner depths."""
    px = (pixel % width).to(screen.dtype) + 0.5
    py = torch.div(pixel, width, rounding_mode="floor").to(screen.dtype) + 0.5
    c = gather(screen, vertex)                            # (N, 3 corners, 3)
    x, y = c[..., 0], c[..., 1]
    # Edge function of the edge opposite corner k (from corner k+1 to k+2), at the pixel: twice the
    # signed sub-triangle area. Rolls, not index lists: their backward is a roll, not an index_put.
    xi, yi, xj, yj = x.roll(-1, 1), y.roll(-1, 1), x.roll(1, 1), y.roll(1, 1)
    e = (xj - xi) * (py[:, None] - yi) - (yj - yi) * (px[:, None] - xi)
    lam = e / e.sum(1, keepdim=True)
    if perspective_correct:
        lam = lam / c[..., 2]
        lam = lam / lam.sum(1, keepdim=True)
    return lam


def interpolate(frags: Fragments, attributes: torch.Tensor) -> torch.Tensor:
    """Per-vertex (V, C) or per-corner (T, 3, C) attributes (T: the rasterized triangles) at the
    fragments -> (N, C), differentiable in both the attributes and the barycentrics."""
    vals = gather(attributes, frags.triangle if attributes.dim() == 3 else frags.vertex)
    return (vals * frags.bary[..., None].to(vals.dtype)).sum(1)


def to_image(frags: Fragments, values: torch.Tensor, background: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Fragment values (N, C) -> (H, W, C) image over `background` (a scalar, (C,) or (H, W, C))."""
    C = values.shape[-1]
    bg = torch.as_tensor(background, dtype=values.dtype, device=values.device)
    img = bg.expand(frags.height, frags.width, C).reshape(-1, C)
    return img.index_copy(0, frags.pixel, values).view(frags.height, frags.width, C)


# ---------------------------------------------------------------------------------------------
# Spherical-harmonics shading (see the module docstring for the convention)

SH_CONSTANTS = (0.282095, 0.488603, 1.092548, 0.315392, 0.546274)
SH_BAND_CONVOLUTION = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)  # Lambertian A_l of bands 0, 1, 2


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals -> (..., 9) real SH basis values (order and constants: module docstring)."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    c0, c1, c2, c3, c4 = SH_CONSTANTS
    return torch.stack([torch.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                        c3 * (3.0 * z * z - 1.0), c2 * x * z, c4 * (x * x - y * y)], dim=-1)


def sh_shading(normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Shading (irradiance / pi) (..., 3) of unit normals (..., 3) under lighting `sh` (9, 3)."""
    return sh_basis(normals) @ sh


def uniform_sh(level=1.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """(9, 3) lighting of constant shading `level` (a scalar or 3 channel values)."""
    sh = torch.zeros(9, 3, dtype=dtype, device=device)
    sh[0] = torch.as_tensor(level, dtype=dtype, device=device) / SH_CONSTANTS[0]
    return sh


# ---------------------------------------------------------------------------------------------
# The photo view: z-buffer, edges, and how well a surface point is seen

DEPTH_TOLERANCE_CM = 0.5       # a point is visible if it is at most this far behind the z-buffer
EDGE_JUMP_CM = 1.0             # a depth step larger than this between neighbour pixels is an occlusion edge
EDGE_FADE = 0.02               # fade width near silhouettes / occlusion edges, as a fraction of the head's size
GRAZING_COS = (0.15, 0.55)     # viewing-angle factor: 0 below the first cosine, 1 above the second
BORDER_FADE_PX = 4.0           # fade towards the photo's border (photo px)
NEAR_EDGE_FADES = 4.0          # `near_edge` is 1 within this many fade widths of the silhouette


def sum_rows(x: torch.Tensor) -> torch.Tensor:
    """x[0] + x[1] + ... for a (k, N) tensor, added in that order: torch's reductions may split the
    work (and round) differently for different thread counts; this never does."""
    out = x[0]
    for row in x[1:]:
        out = out + row
    return out


def smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class PhotoView:
    """The head's z-buffer in the photo's camera (at a capped resolution) and distance fields of its edges."""
    scale: float              # z-buffer pixels per photo pixel
    raster: Raster            # the z-buffer raster (triangle ids into the triangles drawn)
    sil_fade: torch.Tensor    # (h, w) 0 at the silhouette, rising to 1 at fade_px inside
    sil_near: torch.Tensor    # (h, w) 1 near the silhouette (within NEAR_EDGE_FADES fade widths), 0 well inside
    occ_dist: torch.Tensor    # (h, w) distance (px) to the nearest occluding edge pixel
    occ_depth: torch.Tensor   # (h, w) depth of that occluding edge pixel
    fade_px: float

    @property
    def depth(self) -> torch.Tensor:
        return self.raster.depth


def photo_view(cam_vertices: torch.Tensor, triangles: torch.Tensor, k: Intrinsics, max_side: int) -> PhotoView:
    """Z-buffer of `triangles` (front faces only) seen by camera `k`, at most `max_side` px, and the
    distances to its edges. Silhouette edges (covered next to empty) fade every point near them: a fitted
    outline never matches the photo exactly, and beyond it lies background. Occlusion edges (a depth step
    between neighbours) only fade points *behind* the occluder near its outline (the cheek next to the
    nose), not the occluder itself (the lips next to the mouth opening)."""
    s = min(1.0, max_side / max(k.width, k.height))
    ks = k.scaled(s)
    r = rasterize(project(cam_vertices.detach(), ks), triangles, ks.height, ks.width, cull_backfaces=True)
    depth = r.depth.cpu().numpy()
    covered = np.isfinite(depth)
    sil = np.zeros_like(covered)
    near = np.zeros_like(covered)
    d = np.where(covered, depth, np.inf)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        a, b = tuple(a), tuple(b)
        diff_cov = covered[a] != covered[b]
        sil[a] |= diff_cov & covered[a]
        sil[b] |= diff_cov & covered[b]
        with np.errstate(invalid="ignore"):
            near[a] |= covered[b] & (d[b] - d[a] > EDGE_JUMP_CM)   # a is the occluder
            near[b] |= covered[a] & (d[a] - d[b] > EDGE_JUMP_CM)
    fade_px = max(1.5, EDGE_FADE * math.sqrt(max(int(covered.sum()), 1)))
    sil_dist = cv2.distanceTransform((~sil).astype(np.uint8), cv2.DIST_L2, 5)
    sil_fade = np.clip((sil_dist - 0.5) / fade_px, 0.0, 1.0)
    if near.any():
        occ_dist, labels = cv2.distanceTransformWithLabels((~near).astype(np.uint8), cv2.DIST_L2, 5,
                                                           labelType=cv2.DIST_LABEL_PIXEL)
        occ_depth = depth.ravel()[np.flatnonzero(near.ravel())][labels - 1]
    else:
        occ_dist = np.full(depth.shape, np.inf, dtype=np.float32)
        occ_depth = np.full(depth.shape, np.inf, dtype=np.float32)
    dev = cam_vertices.device
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)  # noqa: E731
    near_sil = 1.0 - np.clip((sil_dist - fade_px) / ((NEAR_EDGE_FADES - 1.0) * fade_px), 0.0, 1.0)
    return PhotoView(s, r, t(sil_fade * sil_fade * (3 - 2 * sil_fade)), t(near_sil), t(occ_dist),
                     t(occ_depth), fade_px)


def bilinear_taps(x: torch.Tensor, y: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 pixels around (x, y) in pixel coordinates (centres at +0.5): flat indices (4, N), weights (4, N)."""
    fx, fy = x - 0.5, y - 0.5
    x0, y0 = torch.floor(fx), torch.floor(fy)
    ax, ay = fx - x0, fy - y0
    x0, y0 = x0.long(), y0.long()
    idx, wts = [], []
    for dy, wy in ((0, 1.0 - ay), (1, ay)):
        for dx, wx in ((0, 1.0 - ax), (1, ax)):
            idx.append((y0 + dy).clamp(0, h - 1) * w + (x0 + dx).clamp(0, w - 1))
            wts.append(wx * wy)
    return torch.stack(idx), torch.stack(wts)


def _taps(img: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Values of an (h, w) map at the flat tap indices (4, N) of bilinear_taps -> (4, N)."""
    return img.reshape(-1).index_select(0, idx.reshape(-1)).view(4, -1)


def view_factors(p: torch.Tensor, n: torch.Tensor, view: PhotoView,
                 k: Intrinsics) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Photo position (u px, v px, depth) (3, N) of camera-space points p (3, N) with unit normals n (3, N),
    and the factors (N,) of how well each is seen: `visible` (percentage-closer depth test), `angle`
    (viewing angle), `sil_fade`, `occ_fade` (near edges), `border` (inside the photo), and `near_edge`
    (1 within a few fade widths of the silhouette, where the fit's outline may be off)."""
    depth = (-p[2]).clamp_min(1e-6)  # camera.project, component-major
    u = k.cx + k.focal_px * p[0] / depth
    v = k.cy - k.focal_px * p[1] / depth
    cos = -sum_rows(n * p) / sum_rows(p.square()).sqrt().clamp_min(1e-9)
    angle = smoothstep(GRAZING_COS[0], GRAZING_COS[1], cos)
    h, w = view.depth.shape
    idx, wts = bilinear_taps(u * view.scale, v * view.scale, h, w)
    # Percentage-closer test: the share of the 4 nearest z-buffer pixels that do not hide the point.
    zb = _taps(view.depth, idx)
    visible = sum_rows(wts * (depth <= zb + DEPTH_TOLERANCE_CM)) * (p[2] < 0)  # inf (empty) never hides
    sil_fade = sum_rows(wts * _taps(view.sil_fade, idx))
    behind = depth > _taps(view.occ_depth, idx) + 0.5 * EDGE_JUMP_CM
    occ = torch.where(behind, smoothstep(0.5, 0.5 + view.fade_px, _taps(view.occ_dist, idx)), 1.0)
    occ_fade = sum_rows(wts * occ)
    border = torch.minimum(torch.minimum(u, k.width - u), torch.minimum(v, k.height - v))
    border = smoothstep(0.0, BORDER_FADE_PX, border)
    near_edge = sum_rows(wts * _taps(view.sil_near, idx))
    return torch.stack([u, v, depth]), {"angle": angle, "visible": visible, "sil_fade": sil_fade,
                                        "occ_fade": occ_fade, "border": border, "near_edge": near_edge}


def upsample2x(image: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (C, 2h, 2w) bilinear (align_corners=False, edges clamped), the same numbers as
    F.interpolate but computed with plain elementwise ops, so the result never depends on the thread count."""
    def axis(x: torch.Tensor, dim: int) -> torch.Tensor:
        n = x.shape[dim]
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)
    return axis(axis(image, 1), 2)


def upsample(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, s, s) -> (C, size, size) by repeated exact 2x steps (size / s a power of two), bilinear at the end
    otherwise; thread-count independent like upsample2x."""
    while image.shape[-1] * 2 <= size:
        image = upsample2x(image)
    if image.shape[-1] != size:
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return image


def sample_image(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of a (C, H, W) image at (N, 2) grid_sample coordinates in [-1, 1] -> (C, N)."""
    out = F.grid_sample(image[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0]


def pixel_grid(u: torch.Tensor, v: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel positions (N,) u, v (origin top-left, centres at +0.5) -> (N, 2) grid_sample coordinates."""
    return torch.stack([u / width * 2.0 - 1.0, v / height * 2.0 - 1.0], dim=1)


# ---------------------------------------------------------------------------------------------
# Shadows of a directional light (the bench's hard-light renders)

SHADOW_MAP_SIDE = 512        # texels across the head's extent seen from the light (~0.06 cm each)
SHADOW_BIAS_CM = 0.05
SHADOW_SLOPE_TEXELS = 1.5
SHADOW_MAX_SLOPE = 8.0


def light_frame(direction: torch.Tensor) -> torch.Tensor:
    """(3, 3) rows e1, e2, d: an orthonormal frame whose third axis points towards the light."""
    d = torch.nn.functional.normalize(direction.double(), dim=0)
    helper = torch.tensor([0.0, 1.0, 0.0] if abs(float(d[1])) < 0.9 else [1.0, 0.0, 0.0], dtype=torch.float64)
    e1 = torch.nn.functional.normalize(torch.linalg.cross(helper, d), dim=0)
    return torch.stack([e1, torch.linalg.cross(d, e1), d])


def shadow_factor(points: torch.Tensor, cam_vertices: torch.Tensor, triangles: torch.Tensor, direction: torch.Tensor,
                  cos_to_light: torch.Tensor | None = None, side: int = SHADOW_MAP_SIDE,
                  bias_cm: float = SHADOW_BIAS_CM) -> torch.Tensor:
    """(N,) 0..1: how much of a directional light reaches camera-space `points` (N, 3), with the mesh
    (`cam_vertices` (V, 3), `triangles` (T, 3)) as the occluder. A shadow map: the mesh rasterized in an
    orthographic view along the light (linear depth = distance away from the light), then each point's
    depth tested against the 4 nearest map texels (percentage-closer: a one-texel soft edge instead of
    stair steps). `cos_to_light` (N,) (n . direction) adds a slope part to the constant bias `bias_cm`."""
    frame = light_frame(direction)
    q = cam_vertices.double() @ frame.T
    used_ids = torch.zeros(len(q), dtype=torch.bool)
    used_ids[triangles.reshape(-1)] = True      # (torch.unique is slow on the CPU)
    used = q[used_ids]
    lo = used[:, :2].amin(0)
    scale = (side - 4) / float((used[:, :2].amax(0) - lo).max().clamp_min(1e-6))

    def to_map(x: torch.Tensor) -> torch.Tensor:  # light frame -> map px x, y and depth (smaller = nearer the light)
        return torch.stack([(x[:, 0] - lo[0]) * scale + 2.0, (x[:, 1] - lo[1]) * scale + 2.0, -x[:, 2]], dim=1)

    zmap = rasterize(to_map(q).float(), triangles, side, side, perspective_correct=False).depth.double()
    p = to_map(points.double() @ frame.T)
    slope = torch.zeros(len(p), dtype=torch.float64)
    if cos_to_light is not None:
        c = cos_to_light.double().clamp(1e-3, 1.0)
        slope = ((1.0 - c * c).sqrt() / c).clamp(max=SHADOW_MAX_SLOPE)
    bias = bias_cm + SHADOW_SLOPE_TEXELS * slope / scale
    idx, wts = bilinear_taps(p[:, 0], p[:, 1], side, side)
    z = zmap.reshape(-1)[idx]                                    # (4, N), inf where the map is empty
    return (wts * (p[:, 2][None] <= z + bias[None])).sum(0)

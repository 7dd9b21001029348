"""Draw a result bundle back into its photo, and draw synthetic heads (SH lighting, UV textures).

Both use the project's rasterizer (backend/raster.py) and the bundle's own data: the camera and
pose of result.json, the vertices, polygons and corner UVs of mesh.npz, the diffuse UDIM tiles.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..camera import Intrinsics, project, to_camera
from ..facemodel import NARROW_FACE_LAST_VERTEX, PART_NAMES
from ..raster import interpolate, rasterize

# Thin transparent shells: never drawn (they would hide the eyes behind flat colour).
HIDDEN_PARTS = ("lashes", "eye_wet")


@dataclass
class Mesh:
    """A bundle's mesh, triangulated the way facemodel.py does it (quads split along a-c)."""
    vertices: np.ndarray          # (V, 3) float32 cm, model space
    basis_vertices: np.ndarray    # (V, 3) identity only
    triangles: np.ndarray         # (T, 3) int64 vertex ids
    triangle_uvs: np.ndarray      # (T, 3, 2) float32 UDIM uv
    triangle_part: np.ndarray     # (T,) int index into part_names
    part_names: list
    triangle_face: np.ndarray     # (T,) bool: every corner in the narrow face region (vertices 0-6705)


def triangulate(face_sizes: np.ndarray, fvi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3) corner indices and (T,) polygon index of each triangle."""
    starts = np.concatenate([[0], np.cumsum(face_sizes)[:-1]]).astype(np.int64)
    tri_a = np.stack([starts, starts + 1, starts + 2], axis=1)
    quads = np.flatnonzero(face_sizes == 4)
    tri_b = np.stack([starts[quads], starts[quads] + 2, starts[quads] + 3], axis=1)
    corners = np.concatenate([tri_a, tri_b])
    polygon = np.concatenate([np.arange(len(face_sizes)), quads])
    return corners, polygon


def mesh_from_arrays(d, vertices: np.ndarray | None = None) -> Mesh:
    corners, polygon = triangulate(np.asarray(d["face_sizes"]), np.asarray(d["face_vertex_indices"]))
    fvi = np.asarray(d["face_vertex_indices"]).astype(np.int64)
    tris = fvi[corners]
    verts = np.asarray(d["vertices"] if vertices is None else vertices, np.float32)
    return Mesh(verts, np.asarray(d.get("basis_vertices", verts), np.float32), tris, np.asarray(d["corner_uvs"], np.float32)[corners],
                np.asarray(d["face_part"]).astype(np.int64)[polygon], [str(p) for p in d["part_names"]],
                (tris <= NARROW_FACE_LAST_VERTEX).all(axis=1))


def load_mesh(path: Path) -> Mesh:
    with np.load(path) as d:
        return mesh_from_arrays({k: d[k] for k in d.files})


def mesh_from_model(model, vertices: np.ndarray) -> Mesh:
    """The same Mesh for any vertex positions of the ICT model (synthetic heads)."""
    topo = model.topology
    tris = topo.triangles.astype(np.int64)
    v = np.asarray(vertices, np.float32)
    return Mesh(v, v, tris, topo.triangle_uvs.astype(np.float32),
                topo.polygon_part[topo.triangle_polygon].astype(np.int64), list(PART_NAMES),
                (tris <= NARROW_FACE_LAST_VERTEX).all(axis=1))


def camera_of(result: dict) -> tuple[Intrinsics, np.ndarray, np.ndarray]:
    c, p = result["camera"], result["pose"]
    k = Intrinsics(float(c["focal_px"]), float(c["cx"]), float(c["cy"]), int(c["width"]), int(c["height"]))
    return k, np.asarray(p["rotation"], np.float64), np.asarray(p["translation_cm"], np.float64)


def screen_points(vertices: np.ndarray, k: Intrinsics, rot: np.ndarray, trans: np.ndarray) -> torch.Tensor:
    """(V, 3) pixel x, y and view depth."""
    cam = to_camera(torch.from_numpy(np.asarray(vertices, np.float64)),
                    torch.from_numpy(np.asarray(rot, np.float64)), torch.from_numpy(np.asarray(trans, np.float64)))
    return project(cam, k).float()


def load_tiles(bundle: Path, role: str = "diffuse") -> dict[int, np.ndarray]:
    result = json.loads((bundle / "result.json").read_text())
    tiles = {}
    for f in result["files"]:
        if f.get("role") == role and "tile" in f:
            tiles[int(f["tile"])] = cv2.cvtColor(cv2.imread(str(bundle / f["path"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return tiles


def sample_tiles(uv: np.ndarray, tile_of: np.ndarray, tiles: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear colour (N, 3) float32 at UDIM uv (N, 2) from the tile each pixel's triangle uses;
    and a (N,) bool of the pixels whose tile exists."""
    out = np.zeros((len(uv), 3), np.float32)
    ok = np.zeros(len(uv), bool)
    for tile, img in tiles.items():
        sel = np.flatnonzero(tile_of == tile)
        if len(sel) == 0:
            continue
        size_y, size_x = img.shape[:2]
        mx = ((uv[sel, 0] - (tile - 1001)) * size_x - 0.5).astype(np.float32)
        my = ((1.0 - uv[sel, 1]) * size_y - 0.5).astype(np.float32)
        out[sel] = bilinear(img, mx, my)
        ok[sel] = True
    return out, ok


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, C) float32 bilinear samples of img (H, W, C) at pixel-centre coordinates x, y (edges clamped)."""
    h, w = img.shape[:2]
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    im = img.astype(np.float32)
    top = im[y0, x0] * (1 - fx) + im[y0, x1] * fx
    bot = im[y1, x0] * (1 - fx) + im[y1, x1] * fx
    return top * (1 - fy) + bot * fy


@dataclass
class Rendering:
    image: np.ndarray        # (H, W, 3) uint8: the textured head over the photo / background
    drawn: np.ndarray        # (H, W) bool: pixels coloured by the render (skin from the texture)
    face_skin: np.ndarray    # (H, W) bool: visible skin polygons of the narrow face region
    covered: np.ndarray      # (H, W) bool: any visible (non-hidden) polygon


def _raster(mesh: Mesh, k: Intrinsics, rot, trans, height: int, width: int):
    keep = ~np.isin(mesh.triangle_part, [mesh.part_names.index(p) for p in HIDDEN_PARTS if p in mesh.part_names])
    tri_ids = np.flatnonzero(keep)
    scr = screen_points(mesh.vertices, k, rot, trans)
    r = rasterize(scr, torch.from_numpy(mesh.triangles[tri_ids]), height, width, cull_backfaces=True)
    tri = r.triangle.numpy()
    covered = tri >= 0
    full_tri = np.full(tri.shape, -1, np.int64)
    full_tri[covered] = tri_ids[tri[covered]]
    return r, full_tri, covered


def render_bundle(bundle: Path, photo_rgb: np.ndarray) -> Rendering:
    """The fitted, textured head drawn into the photo with the bundle's camera: skin polygons get
    the diffuse tiles (bilinear), every other pixel keeps the photo (v0 has no eye or mouth texture,
    but eyes and mouth still hide the skin behind them)."""
    bundle = Path(bundle)
    result = json.loads((bundle / "result.json").read_text())
    mesh = load_mesh(bundle / "mesh.npz")
    tiles = load_tiles(bundle, "diffuse")
    k, rot, trans = camera_of(result)
    h, w = photo_rgb.shape[:2]
    if (k.width, k.height) != (w, h):
        k = k.scaled(w / k.width)
    r, tri, covered = _raster(mesh, k, rot, trans, h, w)
    skin = covered & (mesh.triangle_part[np.maximum(tri, 0)] == mesh.part_names.index("skin"))
    face = skin & mesh.triangle_face[np.maximum(tri, 0)]
    # Per-pixel UV from the corner UVs of the visible triangle and its barycentrics.
    pix = np.flatnonzero(skin.ravel())
    bary = r.bary.numpy().reshape(-1, 3)[pix]
    t = tri.ravel()[pix]
    uv = (mesh.triangle_uvs[t] * bary[..., None]).sum(1)
    tile_of = np.floor(mesh.triangle_uvs[t, :, 0].min(1)).astype(np.int64) + 1001
    colour, ok = sample_tiles(uv, tile_of, tiles)
    image = photo_rgb.copy().reshape(-1, 3)
    image[pix[ok]] = np.clip(np.rint(colour[ok]), 0, 255).astype(np.uint8)
    drawn = np.zeros(h * w, bool)
    drawn[pix[ok]] = True
    return Rendering(image.reshape(h, w, 3), drawn.reshape(h, w), face & drawn.reshape(h, w), covered)


# ---------------------------------------------------------------------------------------------
# Synthetic heads

SH_CONST = np.array([0.282095, 0.488603, 0.488603, 0.488603, 1.092548, 1.092548, 0.315392, 1.092548, 0.546274])


def sh_basis(n: np.ndarray) -> np.ndarray:
    """(N, 9) real spherical harmonics up to band 2 of unit normals (N, 3) (x, y, z)."""
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    one = np.ones_like(x)
    return np.stack([one, y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y], axis=1) * SH_CONST


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals, outward for counter-clockwise triangles."""
    v = np.asarray(vertices, np.float64)
    fn = np.cross(v[triangles[:, 1]] - v[triangles[:, 0]], v[triangles[:, 2]] - v[triangles[:, 0]])
    n = np.zeros_like(v)
    for c in range(3):
        np.add.at(n, triangles[:, c], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def eye_colours(rest_vertices: np.ndarray, eyeball_ranges, iris_rgb) -> np.ndarray:
    """(V, 3) per-vertex albedo (sRGB 0..1) for the eyeballs from their rest shape: pupil, iris,
    sclera by the angle from the eyeball's forward (+Z) axis; other vertices get the sclera colour."""
    out = np.tile(np.asarray(PART_ALBEDO["eyes"], np.float64), (len(rest_vertices), 1))
    for lo, hi in eyeball_ranges:
        ids = np.arange(lo, hi + 1)
        p = rest_vertices[ids]
        centre = p.mean(0)
        d = p - centre
        cosang = d[:, 2] / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
        ang = np.degrees(np.arccos(np.clip(cosang, -1, 1)))
        col = np.where(ang[:, None] < 9, [0.02, 0.02, 0.02],
                       np.where(ang[:, None] < 24, iris_rgb, [0.78, 0.74, 0.70]))
        out[ids] = col
    return out


PART_ALBEDO = {"teeth": (0.85, 0.82, 0.72), "mouth": (0.35, 0.10, 0.10), "eyes": (0.78, 0.74, 0.70)}


def render_head(mesh: Mesh, k: Intrinsics, rot: np.ndarray, trans: np.ndarray, tiles: dict[int, np.ndarray],
                sh: np.ndarray, background: np.ndarray, eye_albedo: np.ndarray | None = None,
                supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A textured head lit by 2nd-order spherical harmonics (sh (9, 3), on camera-space normals,
    linear light) over `background` (H, W, 3) uint8. Returns the image (uint8) and its coverage mask.
    Skin albedo comes from the UDIM tiles (sRGB), other parts get plain colours (eyes per vertex)."""
    h, w = background.shape[:2]
    kk = k.scaled(supersample)
    H, W = h * supersample, w * supersample
    r, tri, covered = _raster(mesh, kk, rot, trans, H, W)
    pix = np.flatnonzero(covered.ravel())
    t = tri.ravel()[pix]
    bary = r.bary.numpy().reshape(-1, 3)[pix]
    part = mesh.triangle_part[t]

    # Albedo, linear.
    albedo = np.zeros((len(pix), 3), np.float32)
    skin = part == mesh.part_names.index("skin")
    if skin.any():
        uv = (mesh.triangle_uvs[t[skin]] * bary[skin, :, None]).sum(1)
        tile_of = np.floor(mesh.triangle_uvs[t[skin], :, 0].min(1)).astype(np.int64) + 1001
        col, ok = sample_tiles(uv, tile_of, tiles)
        col[~ok] = (180, 140, 120)
        albedo[skin] = (col / 255.0) ** 2.2
    for name, rgb in PART_ALBEDO.items():
        sel = part == mesh.part_names.index(name)
        albedo[sel] = np.asarray(rgb, np.float32) ** 2.2
    eyes = part == mesh.part_names.index("eyes")
    if eye_albedo is not None and eyes.any():
        cols = np.asarray(eye_albedo)[mesh.triangles[t[eyes]]]          # (N, 3 corners, 3)
        albedo[eyes] = ((cols * bary[eyes, :, None]).sum(1)) ** 2.2

    # Shading: SH irradiance on the interpolated camera-space normals.
    nrm = vertex_normals(mesh.vertices, mesh.triangles) @ np.asarray(rot, np.float64).T
    n_pix = (nrm[mesh.triangles[t]] * bary[..., None]).sum(1)
    n_pix /= np.maximum(np.linalg.norm(n_pix, axis=1, keepdims=True), 1e-9)
    shading = np.clip(sh_basis(n_pix) @ np.asarray(sh, np.float64), 0.0, None)
    lin = np.clip(albedo * shading, 0.0, 1.0)
    colour = (lin ** (1 / 2.2)) * 255.0

    big_bg = cv2.resize(background, (W, H), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    img = big_bg.reshape(-1, 3)
    img[pix] = colour
    img = img.reshape(H, W, 3)
    if supersample > 1:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        covered = cv2.resize(covered.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), covered


def render_vertex_colours(mesh: Mesh, colours: np.ndarray, size: int = 256, yaw_deg: float = 0.0,
                          only_face: bool = True, background=(255, 255, 255)) -> np.ndarray:
    """A frontal orthographic view of the mesh with per-vertex colours (N, 3) uint8 (error maps)."""
    v = mesh.vertices.astype(np.float64)
    keep = mesh.triangle_face if only_face else np.ones(len(mesh.triangles), bool)
    keep = keep & (mesh.triangle_part == mesh.part_names.index("skin"))
    tris = mesh.triangles[keep]
    used = np.unique(tris)
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    p = v @ rot.T
    lo, hi = p[used].min(0), p[used].max(0)
    scale = 0.9 * size / max(hi[0] - lo[0], hi[1] - lo[1])
    centre = (lo + hi) / 2
    scr = np.stack([(p[:, 0] - centre[0]) * scale + size / 2, size / 2 - (p[:, 1] - centre[1]) * scale,
                    -(p[:, 2] - hi[2]) + 1.0], axis=1)
    r = rasterize(torch.from_numpy(scr).float(), torch.from_numpy(tris), size, size,
                  perspective_correct=False, cull_backfaces=True)
    img = interpolate(r, torch.from_numpy(np.asarray(colours, np.float32))).numpy()
    # Simple head-light shading so the shape reads.
    nrm = vertex_normals(v, mesh.triangles) @ rot.T
    shade = interpolate(r, torch.from_numpy(np.clip(0.35 + 0.65 * nrm[:, 2:3], 0, 1).astype(np.float32))).numpy()
    out = np.empty((size, size, 3), np.float32)
    out[:] = background
    m = r.mask.numpy()
    out[m] = img[m] * shade[m]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

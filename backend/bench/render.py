"""Draw a result bundle back into its photo, and draw synthetic heads (UV textures, SH lighting and
hard directional lights with cast shadows).

Both draw with the project's render module (backend/render.py) in linear light, and read bundles with
the backend's bundle reader (backend/bundle.py): the camera and pose of result.json, the fitted
vertices, the model's polygons and corner UVs, the diffuse UDIM tiles.

Lighting (`Light`) is in shading units on camera-space normals, as render.py defines them: a
Lambertian surface of linear albedo a shows a * S, with
    S(n, x) = sh_basis(n) @ sh  +  intensity * max(0, n . direction) * lit(x),
the second term only for a directional light; lit(x) in 0..1 is its shadow map test (`shadow_factor`).
Every surface is shaded with its own mesh's area-weighted vertex normals (render.vertex_normals).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .. import render
from ..render import shadow_factor  # noqa: F401  (one shadow map; relight.py and the tests import it from here)
from ..bundle import BundleData, load_bundle
from ..camera import Intrinsics
from ..colour import decode_srgb8, encode_srgb8, srgb_to_linear
from ..facemodel import NARROW_FACE_LAST_VERTEX, PART_NAMES

# Thin transparent shells: never drawn (they would hide the eyes behind flat colour).
HIDDEN_PARTS = ("lashes", "eye_wet")
DEFAULT_SKIN_SRGB8 = (180, 140, 120)   # skin where a head has no diffuse tile

# Shadow maps: an orthographic z-buffer of the head seen from the light. The bias keeps a lit surface
# from shadowing itself (its own depth, sampled a texel away, is a little nearer the light where the
# surface slopes away from it): a constant plus a slope term, in shadow-map texels.


@dataclass
class Light:
    """Lighting in shading units on camera-space normals (module docstring): SH (9, 3) and, for a hard
    light, a directional term of `intensity` (3,) from the unit `direction` (3,, towards the light)."""
    sh: np.ndarray
    direction: np.ndarray | None = None
    intensity: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return "sh" if self.direction is None else "directional"

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "sh": np.asarray(self.sh, np.float64).round(6).tolist()}
        if self.direction is not None:
            out["direction"] = np.asarray(self.direction, np.float64).round(6).tolist()
            out["intensity"] = np.asarray(self.intensity, np.float64).round(6).tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Light":
        if d.get("direction") is None:
            return cls(np.asarray(d["sh"], np.float64))
        return cls(np.asarray(d["sh"], np.float64), np.asarray(d["direction"], np.float64),
                   np.asarray(d["intensity"], np.float64))

    @classmethod
    def uniform(cls, level) -> "Light":
        return cls(render.uniform_sh(level, dtype=torch.float64).numpy())


@dataclass
class Mesh:
    """A mesh of the ICT topology, triangulated the way facemodel.py does it (quads split along a-c)."""
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


def mesh_of(bundle: BundleData, vertices: np.ndarray | None = None) -> Mesh:
    """The bundle's fitted mesh (or other `vertices` of the same topology)."""
    t = bundle.topology
    corners, polygon = triangulate(np.asarray(t["face_sizes"]), np.asarray(t["face_vertex_indices"]))
    tris = np.asarray(t["face_vertex_indices"]).astype(np.int64)[corners]
    verts = np.asarray(bundle.vertices if vertices is None else vertices, np.float32)
    return Mesh(verts, np.asarray(bundle.basis_vertices, np.float32), tris,
                np.asarray(t["corner_uvs"], np.float32)[corners], np.asarray(t["face_part"]).astype(np.int64)[polygon],
                [str(p) for p in t["part_names"]], (tris <= NARROW_FACE_LAST_VERTEX).all(axis=1))


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
    cam = render.to_camera(torch.from_numpy(np.asarray(vertices, np.float64)),
                           torch.from_numpy(np.asarray(rot, np.float64)), torch.from_numpy(np.asarray(trans, np.float64)))
    return render.project(cam, k).float()


def linear_tiles(bundle: BundleData, role: str = "diffuse") -> dict[int, np.ndarray]:
    """The role's sRGB tiles decoded to linear float32 (H, W, 3)."""
    return {t: decode_srgb8(img) for t, img in bundle.tiles(role).items()}


def sample_tiles(uv: np.ndarray, tile_of: np.ndarray, tiles: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear values (N, 3) float32 at UDIM uv (N, 2) from the tile each pixel's triangle uses;
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


def drawn_triangles(mesh: Mesh) -> np.ndarray:
    """Ids of the triangles that are drawn (and cast shadows): all but the thin transparent shells."""
    return np.flatnonzero(~np.isin(mesh.triangle_part, [mesh.part_names.index(p) for p in HIDDEN_PARTS
                                                        if p in mesh.part_names]))


def _raster(mesh: Mesh, k: Intrinsics, rot, trans, height: int, width: int):
    """Rasterize the visible parts; returns the fragments (triangle = index into mesh.triangles) and coverage."""
    tri_ids = torch.from_numpy(drawn_triangles(mesh))
    scr = screen_points(mesh.vertices, k, rot, trans)
    r = render.rasterize(scr, torch.from_numpy(mesh.triangles)[tri_ids], height, width, cull_backfaces=True)
    frags = render.fragments(r)
    frags.triangle = tri_ids[frags.triangle]
    return frags, r.mask.numpy()


def _skin_uv(mesh: Mesh, frags: render.Fragments, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = frags.triangle.numpy()[sel]
    bary = frags.bary.numpy()[sel]
    uv = (mesh.triangle_uvs[t] * bary[..., None]).sum(1)
    return uv, np.floor(mesh.triangle_uvs[t, :, 0].min(1)).astype(np.int64) + 1001


@dataclass
class Head:
    """A textured head in a camera: a bundle's reconstruction, or a synthetic head's truth."""
    mesh: Mesh
    k: Intrinsics
    rotation: np.ndarray                       # (3, 3) model -> camera
    translation: np.ndarray                    # (3,) cm
    tiles: dict[int, np.ndarray]               # linear diffuse (S, S, 3) float32 by UDIM tile
    visibility: dict[int, np.ndarray] = field(default_factory=dict)   # (S, S) 0..1 by tile
    lighting: np.ndarray | None = None         # (9, 3) fitted SH shading (result.json "lighting"), if any
    strategy: str = ""                         # the texture strategy that made the tiles

    def camera_vertices(self) -> np.ndarray:
        """(V, 3) float64 camera-space vertices."""
        return np.asarray(self.mesh.vertices, np.float64) @ np.asarray(self.rotation).T + np.asarray(self.translation)


def bundle_lighting(result: dict) -> np.ndarray | None:
    """The (9, 3) SH shading coefficients of result.json["lighting"] (render.py convention), or None."""
    light = result.get("lighting")
    if not light or light.get("model") != "sh2-shading":
        return None
    return np.asarray(light["coefficients"], np.float64).reshape(9, 3)


def head_of_bundle(bundle_dir: Path) -> Head:
    bundle = load_bundle(Path(bundle_dir))
    k, rot, trans = camera_of(bundle.result)
    vis = {t: img.astype(np.float32) / 255.0 for t, img in bundle.tiles("visibility").items()}
    return Head(mesh_of(bundle), k, rot, trans, linear_tiles(bundle), vis, bundle_lighting(bundle.result),
                bundle.result.get("texture", {}).get("strategy", ""))


def render_bundle(bundle: Path | Head, photo_rgb: np.ndarray, light: Light | None = None) -> Rendering:
    """The fitted, textured head drawn into the photo with the bundle's camera: skin polygons get
    the diffuse tiles (bilinear, in linear light), times the shading of `light` when one is given (None:
    the tiles as they are, i.e. a texture that holds the photo's light); every other pixel keeps the
    photo (eyes and mouth have no texture, but they still hide the skin behind them)."""
    head = bundle if isinstance(bundle, Head) else head_of_bundle(Path(bundle))
    mesh, tiles, k, rot, trans = head.mesh, head.tiles, head.k, head.rotation, head.translation
    h, w = photo_rgb.shape[:2]
    if (k.width, k.height) != (w, h):
        k = k.scaled(w / k.width)
    frags, covered = _raster(mesh, k, rot, trans, h, w)
    part = mesh.triangle_part[frags.triangle.numpy()]
    skin = np.flatnonzero(part == mesh.part_names.index("skin"))
    uv, tile_of = _skin_uv(mesh, frags, skin)
    colour, ok = sample_tiles(uv, tile_of, tiles)
    if light is not None:
        colour = colour * shading_at(mesh, frags, rot, trans, light)[skin]
    pix = frags.pixel.numpy()[skin[ok]]
    image = photo_rgb.copy().reshape(-1, 3)
    image[pix] = encode_srgb8(colour[ok])
    drawn = np.zeros(h * w, bool)
    drawn[pix] = True
    face = np.zeros(h * w, bool)
    face[pix[mesh.triangle_face[frags.triangle.numpy()[skin[ok]]]]] = True
    return Rendering(image.reshape(h, w, 3), drawn.reshape(h, w), face.reshape(h, w), covered)


# ---------------------------------------------------------------------------------------------
# Shading and shadows


def shading_at(mesh: Mesh, frags: render.Fragments, rot, trans, light: Light, shadows: bool = True) -> np.ndarray:
    """(N, 3) float32 shading of the fragments under `light` (module docstring), on the mesh's own
    interpolated camera-space vertex normals; a directional light's term is shadowed by the mesh itself."""
    v_cam = render.to_camera(torch.from_numpy(np.asarray(mesh.vertices, np.float64)),
                             torch.from_numpy(np.asarray(rot, np.float64)), torch.from_numpy(np.asarray(trans, np.float64)))
    tris = torch.from_numpy(mesh.triangles)
    n = torch.nn.functional.normalize(render.interpolate(frags, render.vertex_normals(v_cam, tris)), dim=1)
    s = render.sh_shading(n, torch.from_numpy(np.asarray(light.sh, np.float64)))
    if light.direction is not None:
        d = torch.nn.functional.normalize(torch.from_numpy(np.asarray(light.direction, np.float64)), dim=0)
        cos = n @ d
        lit = shadow_factor(render.interpolate(frags, v_cam), v_cam, tris[torch.from_numpy(drawn_triangles(mesh))],
                            d, cos) if shadows else torch.ones_like(cos)
        s = s + (cos.clamp_min(0.0) * lit)[:, None] * torch.from_numpy(np.asarray(light.intensity, np.float64))[None]
    return s.clamp_min(0.0).float().numpy()


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Synthetic heads


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


PART_ALBEDO = {"teeth": (0.85, 0.82, 0.72), "mouth": (0.35, 0.10, 0.10), "eyes": (0.78, 0.74, 0.70)}  # sRGB


def render_head(mesh: Mesh, k: Intrinsics, rot: np.ndarray, trans: np.ndarray, tiles: dict[int, np.ndarray],
                light: "Light | np.ndarray", background: np.ndarray, eye_albedo: np.ndarray | None = None,
                supersample: int = 2, shadows: bool = True) -> Rendering:
    """A textured head under `light` (a Light, or SH coefficients (9, 3): render.sh_shading on
    camera-space normals) over `background` (H, W, 3) uint8, all in linear light; a directional light
    casts shadows (shadow_factor). Returns the image (uint8 sRGB) and its masks (`drawn`: textured skin,
    `face_skin`: skin of the narrow face region, `covered`: any drawn polygon), at the background's size.
    Skin albedo comes from the UDIM tiles (linear float, `linear_tiles`), other parts get plain colours
    (eyes per vertex, sRGB values)."""
    light = light if isinstance(light, Light) else Light(np.asarray(light, np.float64))
    h, w = background.shape[:2]
    kk = k.scaled(supersample)
    H, W = h * supersample, w * supersample
    frags, covered = _raster(mesh, kk, rot, trans, H, W)
    t = frags.triangle.numpy()
    bary = frags.bary.numpy()
    part = mesh.triangle_part[t]

    albedo = np.zeros((len(t), 3), np.float32)
    skin = np.flatnonzero(part == mesh.part_names.index("skin"))
    if len(skin):
        uv, tile_of = _skin_uv(mesh, frags, skin)
        col, ok = sample_tiles(uv, tile_of, tiles)
        col[~ok] = srgb_to_linear(np.asarray(DEFAULT_SKIN_SRGB8) / 255.0)
        albedo[skin] = col
    for name, rgb in PART_ALBEDO.items():
        albedo[part == mesh.part_names.index(name)] = srgb_to_linear(np.asarray(rgb))
    eyes = part == mesh.part_names.index("eyes")
    if eye_albedo is not None and eyes.any():
        cols = np.asarray(eye_albedo)[mesh.triangles[t[eyes]]]          # (N, 3 corners, 3)
        albedo[eyes] = srgb_to_linear((cols * bary[eyes, :, None]).sum(1))

    shading = shading_at(mesh, frags, rot, trans, light, shadows)
    img = decode_srgb8(cv2.resize(background, (W, H), interpolation=cv2.INTER_LINEAR)).reshape(-1, 3)
    pix = frags.pixel.numpy()
    img[pix] = np.clip(albedo * shading, 0.0, 1.0)
    img = img.reshape(H, W, 3)
    drawn = np.zeros(H * W, bool)
    drawn[pix[skin]] = True
    face = np.zeros(H * W, bool)
    face[pix[skin[mesh.triangle_face[t[skin]]]]] = True
    drawn, face = drawn.reshape(H, W), face.reshape(H, W)
    if supersample > 1:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        covered, drawn, face = (cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
                                for m in (covered, drawn, face))
    return Rendering(encode_srgb8(img), drawn, face, covered)


def render_vertex_colours(mesh: Mesh, colours: np.ndarray, size: int = 256, yaw_deg: float = 0.0,
                          only_face: bool = True, background=(255, 255, 255)) -> np.ndarray:
    """A frontal orthographic view of the mesh with per-vertex colours (N, 3) uint8 (error maps)."""
    v = mesh.vertices.astype(np.float64)
    keep = mesh.triangle_face if only_face else np.ones(len(mesh.triangles), bool)
    keep = keep & (mesh.triangle_part == mesh.part_names.index("skin"))
    tris = torch.from_numpy(mesh.triangles[keep])
    used = np.unique(mesh.triangles[keep])
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    p = v @ rot.T
    lo, hi = p[used].min(0), p[used].max(0)
    scale = 0.9 * size / max(hi[0] - lo[0], hi[1] - lo[1])
    centre = (lo + hi) / 2
    scr = np.stack([(p[:, 0] - centre[0]) * scale + size / 2, size / 2 - (p[:, 1] - centre[1]) * scale,
                    -(p[:, 2] - hi[2]) + 1.0], axis=1)
    r = render.rasterize(torch.from_numpy(scr).float(), tris, size, size, perspective_correct=False, cull_backfaces=True)
    frags = render.fragments(r)
    # Simple head-light shading so the shape reads.
    nrm = render.vertex_normals(torch.from_numpy(p), torch.from_numpy(mesh.triangles))
    shade = (0.35 + 0.65 * nrm[:, 2:3]).clamp(0, 1).float()
    vals = render.interpolate(frags, torch.from_numpy(np.asarray(colours, np.float32))) * render.interpolate(frags, shade)
    out = render.to_image(frags, vals, torch.tensor(background, dtype=torch.float32)).numpy()
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

"""Texture strategy "projection": the photo projected onto the fitted head's UV tiles, in linear light.

Stage interface (every texture strategy, see STRATEGIES): `(obs, fit, model, size, hooks) -> TextureResult`
with float maps per UDIM tile (scene.TextureResult). Later strategies (de-lighting, a generator for the
unseen parts) return the same type.

Method:
1. UV-rasterize the skin triangles of tiles 1001 (face) and 1002 (head, neck, eye sockets; the mouth
   socket in its corner gets a flat dark-red mouth colour). This depends only on the topology and is
   cached per (model, size, device) in a cache bounded in bytes, and on disk in the per-user cache
   (a fresh process reads it instead of drawing it again). Every texel gets a triangle and
   barycentrics -> a point and a normal on the fitted mesh.
2. The photo view (render.photo_view): a z-buffer of the whole head (skin, eyes, teeth, mouth; back
   faces culled) at most 1024 px on the longest side, and the distances to its silhouette and
   occlusion edges.
3. Direct view: project each texel into the photo and sample it (bilinear, in linear light; area-
   filtered first, in linear light, when a texel spans several photo pixels). Its weight = visible
   (percentage-closer z-buffer test) * viewing angle * fade near the silhouette (all texels) and near
   occlusion edges (only texels behind the occluder) * inside the photo (render.view_factors) * a skin
   check where something else often covers the skin (scalp, neck, ears, hairline, eyelid rims, under the
   chin, near the silhouette, and for the de-lit strategies wherever the hair mask says hair is near):
   chromaticity and brightness against the well-seen inner face, so hair, clothes, background and
   eyeballs stay out; faded out SKIN_EDGE_PX photo pixels from its edges
   (the mixed, shadowed rim where skin meets a collar would pass and the fill spread it as a dark
   line). That weight is the visibility map.
4. Mirror: a texel on triangle t with barycentrics b has a mirror point with the same b on the mirrored
   vertices (FaceModel.vertex_symmetry, within the same part); its UV comes from the corners of the
   polygon holding them. Weakly seen texels take the mirror's direct colour as far as that was seen;
   well seen texels keep their own (the face is not symmetrised).
5. Fill: push-pull (a weighted pyramid) from the confidently seen texels fills everything else, tending
   to the median skin colour far from any data, and blends into the seen colour by weight. Tile 1002
   is done after 1001 and takes 1001's colours along their shared UV seams, so there is no step there.

A de-lighting strategy (Recipe.shading) also rebuilds the channels the photo clipped at its 8-bit
ceiling (`unclipped`, colour.SRGB8_CLIPPED): a clipped value is a lower bound, so it takes the reference
albedo's chromaticity scaled to the texel's unclipped channels, and a texel clipped in every channel
loses its weight to the mirror and the fill.

Every colour operation runs on linear values; only the skin check looks at sRGB-encoded colours (its
thresholds are perceptual). The output is the same byte for byte whatever the thread count: no op
whose result depends on how work is split between threads (F.interpolate does; push-pull upsamples
with its own exact 2x filter).
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from . import raster, render, skin_maps
from .cache import BoundedCache, code_fingerprint, read_npz, write_npz_atomic
from .colour import SRGB8_CLIPPED, SRGB8_TO_LINEAR, linear_to_srgb, srgb_to_linear
from .facemodel import NARROW_FACE_LAST_VERTEX, PART_NAMES, VERTEX_RANGES, FaceModel
from .paths import USER_CACHE
from .raster import rasterize, uv_screen
from .scene import Hooks, Observation, SceneFit, TextureResult
from .threads import idle_cpu_threads, torch_threads

TILES = (1001, 1002)
# The skin material's convention (docs/bundle.md, "Material"): the specular map holds Principled BSDF's
# "Specular IOR Level" at IOR 1.4, skin's refractive index; level 0.5 gives that IOR's own reflectance,
# F0 = ((1.4 - 1) / (1.4 + 1))^2 = 0.028, the value measured for skin (Weyrich et al. 2006 report
# per-region F0 around it). F0 = 2 * level * 0.0278.
SKIN_IOR = 1.4
SKIN_SPECULAR_LEVEL = 0.5
FLAT_NORMAL = (0.0, 0.0, 1.0)  # tangent space +Z: no perturbation

PHOTO_VIEW_MAX_SIDE = 1024     # px, longest side of the photo-view z-buffer
BLEND_WEIGHT = (0.05, 0.5)     # (direct + mirror) weight: below, the fill only; above, the texel's own colour
FILL_TRUST = (0.25, 0.5)       # (direct + mirror) weight from which a texel feeds the fill of the holes
# Skin likelihood, checked on the scalp, neck, ears, forehead top (see _outer_field) and near the silhouette,
# measured on the photo blurred by SKIN_BLUR_FRACTION of its size (and the sharp brightness).
SKIN_BLUR_FRACTION = 1.0 / 150.0
SKIN_CHROMA_SPREAD = (0.008, 0.02)  # chromaticity spread of the reference skin (robust std), clamped to this
SKIN_CHROMA_TOL = (1.5, 3.5)   # chromaticity distance (in spreads): weight 1 below, 0 above
SKIN_DARKER_TOL = (0.5, 1.0)   # log(skin brightness / brightness): shadows keep weight, dark hair loses it
SKIN_BRIGHTER_TOL = (0.3, 0.6)  # log(brightness / skin brightness): white clothes and walls lose it
SKIN_EDGE_PX = 1.5             # photo px: the skin check's weight fades out this close to where it fails
SKIN_EDGE_FADE = (0.1, 0.5)    # blurred failure (_edge_faded): weight kept below, none above (0.5: the edge)
FOREHEAD_MARGIN_CM = (1.0, 2.5)  # skin check ramps in from this far above the brows (neutral head)
CHIN_MARGIN_CM = (0.3, 1.2)    # ... from this far below the chin (neutral head)
EYELID_CHECK_CM = (0.25, 0.5)  # ... and out from the eyelid rims over this distance
DEFAULT_SKIN_SRGB = (0.75, 0.6, 0.52)
FILL_PRIOR_WEIGHT = 1e-4       # the median skin colour, everywhere: the fill far (> ~100 texels) from data
MOUTH_TINT_SRGB = (0.45, 0.22, 0.22)  # mouth socket colour = median skin colour * this, on sRGB values (dark red)
LAYOUT_CACHE_BYTES = 512 << 20  # UV layouts kept per process (a 1024 layout is about 60 MB)
MIN_SHADING = 0.02             # de-lighting never divides by less (linear shading; 1 = the studio's mean)
SHADOW_CONFIDENCE = (0.25, 0.6)  # de-lit texels lose weight where the shading is below this x a camera-facing one
HAIR_PROBABILITY = (0.25, 0.75)  # hair (person) net probability: not / certainly hair (person)
HAIR_NEAR_SIGMA = 0.04          # x face-box height: the hair mask blurred by this marks where hair may reach...
HAIR_NEAR = (0.02, 0.16)        # ... from this blurred probability (2 sigma away) to certainly (1 sigma)
LUMA = torch.tensor([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance of linear RGB

_OCCLUDER_PARTS = ("skin", "eyes", "teeth", "mouth")  # not lashes or the thin transparent eye shells


@dataclass
class _TileLayout:
    """The covered texels of one tile (N of them); per-texel arrays are component-major (k, N)."""
    tile: int
    texel: torch.Tensor          # (N,) long flat index (row * S + col)
    vertex: torch.Tensor         # (3, N) long the vertices of the texel's triangle
    bary: torch.Tensor           # (3, N) float barycentrics
    outer: torch.Tensor          # (N,) float 0..1: where the skin check applies (see _outer_field)
    mouth: torch.Tensor          # (N,) bool: mouth socket texels (flat mouth colour where not seen)
    right: torch.Tensor          # (N,) long position of the texel's right neighbour in this list, -1 if none
    mirror: dict[int, tuple[torch.Tensor, torch.Tensor]]  # tile -> (positions (M,), grid (M, 2) there)


def _mirror_corners(model: FaceModel, tri_ids: np.ndarray) -> np.ndarray:
    """(n, 3) corner indices of the mirror images of the vertices of triangles `tri_ids`, -1 where none.

    The mirrored vertices are looked up in a polygon that holds all three (a mirrored quad may be split
    along the other diagonal, so the mirrored triangle itself need not exist).
    """
    topo = model.topology
    sizes = topo.face_sizes.astype(np.int64)
    fvi = topo.face_vertex_indices.astype(np.int64)
    P, C, V = len(sizes), len(fvi), model.num_vertices
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    corner_poly = np.repeat(np.arange(P), sizes)
    poly_verts = np.full((P, 4), -1, dtype=np.int64)
    poly_verts[corner_poly, np.arange(C) - starts[corner_poly]] = fvi
    order = np.argsort(fvi, kind="stable")
    vcount = np.bincount(fvi, minlength=V)
    vstart = np.concatenate([[0], np.cumsum(vcount)[:-1]])
    vert_polys = np.full((V, max(1, vcount.max())), -1, dtype=np.int64)
    vert_polys[fvi[order], np.arange(C) - vstart[fvi[order]]] = corner_poly[order]

    m = model.vertex_symmetry[topo.triangles[tri_ids]]              # (n, 3)
    cand = vert_polys[m[:, 0]]                                       # (n, K)
    pv = poly_verts[np.maximum(cand, 0)]                             # (n, K, 4)
    good = (cand >= 0) & (pv == m[:, 1, None, None]).any(-1) & (pv == m[:, 2, None, None]).any(-1)
    found = good.any(1)
    poly = cand[np.arange(len(m)), good.argmax(1)]
    out = np.full(m.shape, -1, dtype=np.int64)
    for k in range(3):
        slot = (poly_verts[poly] == m[:, k, None]).argmax(1)
        out[:, k] = starts[poly] + slot
    out[~found] = -1
    return out


def _smooth_vertex_field(model: FaceModel, values: np.ndarray, iterations: int) -> np.ndarray:
    """Average a per-vertex field over mesh neighbours `iterations` times (a soft transition)."""
    import scipy.sparse as sp

    tri = model.topology.triangles
    i = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2], tri[:, 1], tri[:, 2], tri[:, 0]])
    j = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0], tri[:, 0], tri[:, 1], tri[:, 2]])
    V = model.num_vertices
    adj = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(V, V)).tocsr()
    adj.data[:] = 1.0
    adj = adj + sp.identity(V, format="csr")
    adj = sp.diags(1.0 / np.asarray(adj.sum(1)).ravel()) @ adj
    for _ in range(iterations):
        values = adj @ values
    return values


def _outer_field(model: FaceModel) -> np.ndarray:
    """Per vertex 0..1: where hair, clothes, background or the eyeballs may show in the photo instead
    of the skin (so colours there are checked for being skin-like): outside the narrow face (ears,
    temples, under the jaw, scalp, neck), the forehead above the brows (the hairline) and the eyelid
    rims (a fit whose eyes open a little less than the photo's would paint the eyeball on the lids;
    the lashes are geometry of their own) and under the chin (collars, scarves, background when the
    fitted chin is a little low). 0 on the rest of the inner face, with its brows, lips and
    beard, which keep the photo's colours as they are."""
    verts = model.neutral.cpu().numpy().astype(np.float64)
    y = verts[:, 1]
    brow_top = float(y[model.landmarks68[17:27]].max())
    forehead = np.clip((y - brow_top - FOREHEAD_MARGIN_CM[0]) / (FOREHEAD_MARGIN_CM[1] - FOREHEAD_MARGIN_CM[0]), 0, 1)
    chin = float(y[model.landmarks68[8]])
    under_chin = np.clip((chin - y - CHIN_MARGIN_CM[0]) / (CHIN_MARGIN_CM[1] - CHIN_MARGIN_CM[0]), 0, 1)
    outer = np.maximum((np.arange(model.num_vertices) > NARROW_FACE_LAST_VERTEX).astype(np.float64),
                       np.maximum(forehead, under_chin))
    outer = _smooth_vertex_field(model, outer, 8)
    # Eyelid rims: the face vertices that the eye sockets attach to, and what lies close to them.
    topo = model.topology
    socket = np.zeros(model.num_vertices, dtype=bool)
    for name in ("eye_socket_left", "eye_socket_right"):
        lo, hi = VERTEX_RANGES[name]
        socket[lo:hi + 1] = True
    tri_socket = socket[topo.triangles].any(1)
    rim = np.unique(topo.triangles[tri_socket])
    rim = rim[rim <= VERTEX_RANGES["face"][1]]
    if len(rim):
        dist, _ = cKDTree(verts[rim]).query(verts)
        lid = 1.0 - np.clip((dist - EYELID_CHECK_CM[0]) / (EYELID_CHECK_CM[1] - EYELID_CHECK_CM[0]), 0, 1)
        lid[VERTEX_RANGES["face"][1] + 1:] = 0.0
        outer = np.maximum(outer, lid)
    return outer


@dataclass
class _Seams:
    """Texels of tile `tile` on a UV seam with tile `source`, and where the same 3D points lie there."""
    tile: int
    source: int
    texel: torch.Tensor   # (M,) long flat texel index in `tile`
    grid: torch.Tensor    # (M, 2) grid_sample coordinates in `source`


def _seam_samples(model: FaceModel, drawn: np.ndarray, tile: int, source: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points along the mesh edges that tile `tile` shares with tile `source` (cut by the UV layout).

    Returns the texel index in `tile` and the UV (UDIM) of the same 3D point in `source`.
    """
    topo = model.topology
    sizes = topo.face_sizes.astype(np.int64)
    fvi = topo.face_vertex_indices.astype(np.int64)
    uv = topo.corner_uvs.astype(np.float64)
    P = len(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cp = np.repeat(np.arange(P), sizes)
    nxt = starts[cp] + (np.arange(len(fvi)) - starts[cp] + 1) % sizes[cp]
    poly_drawn = np.zeros(P, dtype=bool)
    poly_drawn[topo.triangle_polygon[drawn]] = True
    sel = np.flatnonzero(poly_drawn[cp])
    a, b = fvi[sel], fvi[nxt[sel]]
    swap = a > b  # orient every edge from its lower to its higher vertex index
    uv_lo = np.where(swap[:, None], uv[nxt[sel]], uv[sel])
    uv_hi = np.where(swap[:, None], uv[sel], uv[nxt[sel]])
    e_tile = np.floor(np.minimum(uv_lo[:, 0], uv_hi[:, 0]) + 1e-6).astype(np.int64) + 1001
    key = np.minimum(a, b) * (model.num_vertices + 1) + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    pair = np.flatnonzero(key[order][1:] == key[order][:-1])
    i1, i2 = order[pair], order[pair + 1]
    # Put the receiving side (in `tile`) first.
    flip = e_tile[i2] == tile
    i1, i2 = np.where(flip, i2, i1), np.where(flip, i1, i2)
    keep = (e_tile[i1] == tile) & (e_tile[i2] == source)
    i1, i2 = i1[keep], i2[keep]
    if len(i1) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    length = np.maximum(np.linalg.norm(uv_hi[i1] - uv_lo[i1], axis=1), np.linalg.norm(uv_hi[i2] - uv_lo[i2], axis=1))
    n = np.maximum(2, np.ceil(length * size * 2).astype(np.int64) + 1)
    edge = np.repeat(np.arange(len(i1)), n)
    t = (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n - 1, n)
    p_dst = uv_lo[i1][edge] + t[:, None] * (uv_hi[i1] - uv_lo[i1])[edge]
    p_src = uv_lo[i2][edge] + t[:, None] * (uv_hi[i2] - uv_lo[i2])[edge]
    x = np.clip(np.floor((p_dst[:, 0] - (tile - 1001)) * size), 0, size - 1).astype(np.int64)
    y = np.clip(np.floor((1.0 - p_dst[:, 1]) * size), 0, size - 1).astype(np.int64)
    return y * size + x, p_src


_LAYOUTS = BoundedCache(LAYOUT_CACHE_BYTES)


def _uv_layout(model: FaceModel, size: int, device: str,
               check: Callable[[], None] = lambda: None) -> tuple[tuple[_TileLayout, ...], _Seams]:
    """Per tile: the covered texels, their triangles, barycentrics and mirror UVs; and the seam texels of
    tile 1002 with their places in tile 1001. Depends on the topology only, so it is cached per process
    (bounded in bytes). The first computation for a size takes seconds: `check` lets a cancel stop it."""
    return _LAYOUTS.get((model.hash, size, device), lambda: _stored_uv_layout(model, size, device, check))


# Drawing a layout takes 2-3 s at 1024 px and 8-10 s at 2048 on a 2-core CPU, in every new process (each
# `python -m backend reconstruct`, each new worker); reading it back takes a tenth of a second. The file
# is about 80 MB at 1024 px (indices stored as int32), 330 MB at 2048.
LAYOUT_DISK_DIR = USER_CACHE / "uv-layouts"


def _layout_path(model: FaceModel, size: int, device: str) -> Path:
    """Named by everything the layout depends on: the topology, the size, the device type that drew it
    and the code that draws it (this module and the rasterizer)."""
    code = code_fingerprint(raster, sys.modules[__name__])
    return LAYOUT_DISK_DIR / f"{model.hash[:16]}-{size}-{torch.device(device).type}-{code}.npz"


def _stored_uv_layout(model: FaceModel, size: int, device: str,
                      check: Callable[[], None]) -> tuple[tuple[_TileLayout, ...], _Seams]:
    """The layout from the disk cache when an earlier process drew it with this code, else drawn and
    saved there (best effort: a read-only cache only costs the time), replacing the files that older
    code drew for the same model, size and device."""
    path = _layout_path(model, size, device)
    arrays = read_npz(path, check)
    if arrays is not None:
        with contextlib.suppress(KeyError, ValueError):
            return _layout_from_arrays(arrays, size, device, check)
    layout = _compute_uv_layout(model, size, device, check)
    with contextlib.suppress(OSError):
        write_npz_atomic(path, _layout_arrays(*layout), compressed=False)
        for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.npz"):
            if old != path:
                old.unlink()
    return layout


def _layout_arrays(layouts: tuple[_TileLayout, ...], seams: _Seams) -> dict[str, np.ndarray]:
    def idx(t: torch.Tensor) -> np.ndarray:  # texel and vertex indices all fit in int32: half the file
        return t.cpu().numpy().astype(np.int32)

    arrays = {"tiles": np.array([lay.tile for lay in layouts]), "seam_tiles": np.array([seams.tile, seams.source]),
              "seam_texel": idx(seams.texel), "seam_grid": seams.grid.cpu().numpy()}
    for lay in layouts:
        p = f"t{lay.tile}_"
        arrays.update({p + "texel": idx(lay.texel), p + "vertex": idx(lay.vertex), p + "right": idx(lay.right),
                       p + "bary": lay.bary.cpu().numpy(), p + "outer": lay.outer.cpu().numpy(),
                       p + "mouth": lay.mouth.cpu().numpy(), p + "mirror_tiles": np.array(sorted(lay.mirror))})
        for mt, (sel, grid) in lay.mirror.items():
            arrays.update({f"{p}mirror{mt}_sel": idx(sel), f"{p}mirror{mt}_grid": grid.cpu().numpy()})
    return arrays


def _layout_from_arrays(arrays: dict[str, np.ndarray], size: int, device: str,
                        check: Callable[[], None] = lambda: None) -> tuple[tuple[_TileLayout, ...], _Seams]:
    """The inverse of _layout_arrays; ValueError or KeyError for a file that is not a whole layout.
    `check()` is called between the index arrays' conversions (it raises to cancel)."""
    dev = torch.device(device)

    def idx(a: np.ndarray) -> torch.Tensor:
        check()
        return torch.from_numpy(a.astype(np.int64)).to(dev)

    def arr(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dev)

    if [int(t) for t in arrays["tiles"]] != list(TILES):
        raise ValueError("another set of tiles")
    layouts = []
    for tile in TILES:
        p = f"t{tile}_"
        texel = arrays[p + "texel"]
        n = len(texel)
        if n == 0 or texel.max() >= size * size or arrays[p + "vertex"].shape != (3, n) \
                or arrays[p + "bary"].shape != (3, n):
            raise ValueError("not a layout of this size")
        mirror = {int(mt): (idx(arrays[f"{p}mirror{mt}_sel"]), arr(arrays[f"{p}mirror{mt}_grid"]))
                  for mt in arrays[p + "mirror_tiles"]}
        layouts.append(_TileLayout(tile, idx(texel), idx(arrays[p + "vertex"]), arr(arrays[p + "bary"]),
                                   arr(arrays[p + "outer"]), arr(arrays[p + "mouth"]), idx(arrays[p + "right"]),
                                   mirror))
    tile, source = (int(t) for t in arrays["seam_tiles"])
    return tuple(layouts), _Seams(tile, source, idx(arrays["seam_texel"]), arr(arrays["seam_grid"]))


def _compute_uv_layout(model: FaceModel, size: int, device: str,
                       check: Callable[[], None]) -> tuple[tuple[_TileLayout, ...], _Seams]:
    topo = model.topology
    dev = torch.device(device)
    tri_part = topo.polygon_part[topo.triangle_polygon]
    tri_uv = topo.triangle_uvs
    tri_tile = np.floor(tri_uv[:, :, 0].min(1)).astype(np.int64) + 1001
    same_tile = np.floor(tri_uv[:, :, 0].max(1) - 1e-6).astype(np.int64) + 1001 == tri_tile
    mouth_lo, mouth_hi = VERTEX_RANGES["mouth_socket"]
    is_mouth_socket = (topo.triangles[:, 0] >= mouth_lo) & (topo.triangles[:, 0] <= mouth_hi)
    skin = same_tile & (tri_part == PART_NAMES.index("skin"))
    drawn = skin | (same_tile & (tri_tile == 1002) & is_mouth_socket)

    outer_v = torch.from_numpy(_outer_field(model).astype(np.float32)).to(dev)
    uvs = torch.from_numpy(topo.corner_uvs).to(dev)
    corners_all = torch.from_numpy(topo.triangle_corners).to(dev)
    tris_all = torch.from_numpy(topo.triangles).to(dev)
    mouth_t = torch.from_numpy(is_mouth_socket).to(dev)
    layouts = []
    for tile in TILES:
        ids = np.flatnonzero(drawn & (tri_tile == tile))
        ids_t = torch.from_numpy(ids).to(dev)
        check()
        r = rasterize(uv_screen(uvs, tile, size), corners_all[ids_t], size, size, perspective_correct=False,
                      cancel_check=check)
        check()
        texel = torch.nonzero(r.triangle.reshape(-1) >= 0).squeeze(1)
        local = r.triangle.reshape(-1).index_select(0, texel)
        tri = ids_t.index_select(0, local)
        bary = r.bary.reshape(-1, 3).index_select(0, texel).T.contiguous()        # (3, N)
        vertex = tris_all.index_select(0, tri).T.contiguous()                    # (3, N)
        outer = render.sum_rows(outer_v.index_select(0, vertex.reshape(-1)).view(3, -1) * bary)
        mouth = mouth_t.index_select(0, tri)
        pos = torch.full((size * size,), -1, dtype=torch.long, device=dev)
        pos[texel] = torch.arange(len(texel), device=dev)
        right = torch.where(texel % size < size - 1, pos.index_select(0, (texel + 1).clamp(max=size * size - 1)), -1)
        check()
        # Mirror UV: the same barycentrics on the corners that hold the mirrored vertices.
        mc = torch.from_numpy(_mirror_corners(model, ids)).to(dev).index_select(0, local).T.contiguous()  # (3, N)
        has = (mc >= 0).all(0) & ~mouth
        mu = mv = None
        for k in range(3):
            uv_k = uvs.index_select(0, mc[k].clamp_min(0))
            mu = uv_k[:, 0] * bary[k] if mu is None else mu + uv_k[:, 0] * bary[k]
            mv = uv_k[:, 1] * bary[k] if mv is None else mv + uv_k[:, 1] * bary[k]
        mtile = torch.floor(mu).long() + 1001
        check()
        mirror = {}
        for mt in TILES:
            sel = torch.nonzero(has & (mtile == mt)).squeeze(1)
            if len(sel):
                grid = torch.stack([(mu[sel] - (mt - 1001)) * 2.0 - 1.0, 1.0 - 2.0 * mv[sel]], dim=1)
                mirror[mt] = (sel, grid)
        layouts.append(_TileLayout(tile, texel, vertex, bary, outer, mouth, right, mirror))
    check()
    texel, src = _seam_samples(model, skin, 1002, 1001, size)
    src_grid = np.stack([src[:, 0] * 2.0 - 1.0, 1.0 - 2.0 * src[:, 1]], axis=1)
    seams = _Seams(1002, 1001, torch.from_numpy(texel).to(dev), torch.from_numpy(src_grid).float().to(dev))
    return tuple(layouts), seams


def _chroma_lum(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, N) colours -> chromaticity (2, N) (r, g) / (r + g + b) and brightness (N,)."""
    total = render.sum_rows(c)[None].clamp_min(1e-4)
    return c[:2] / total, total[0] / 3.0


def _skin_weight(blurred: torch.Tensor, ref: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """How skin-like texels are -> (N,) 0..1, from their colours in the blurred photo (3, N) and
    the sharp one (3, N), given reference skin colours from the blurred photo (3, M).

    Chromaticity (r, g) / (r + g + b) barely changes with shading, so it separates skin from white
    or coloured clothes and background (measured blurred: JPEG's chroma is blocky); brightness
    separates it from dark hair, with room for shadows (the darker of blurred and sharp: single hairs).
    """
    ref_ch, ref_lum = _chroma_lum(ref)
    med_ch = ref_ch.median(1, keepdim=True).values
    spread = ((ref_ch - med_ch).abs().median(1, keepdim=True).values * 1.4826).clamp(*SKIN_CHROMA_SPREAD)
    med_lum = ref_lum.median().clamp_min(1e-3)
    ch, lum = _chroma_lum(blurred)
    _, lum_sharp = _chroma_lum(sharp)
    d_ch = render.sum_rows(((ch - med_ch) / spread).square()).sqrt()
    # log in float64, rounded back: float32 log may differ in the last bit between thread counts (colour.py).
    log_lum = torch.log((torch.minimum(lum, lum_sharp).clamp_min(1e-3) / med_lum).double()).float()
    log_lum_hi = torch.log((torch.maximum(lum, lum_sharp).clamp_min(1e-3) / med_lum).double()).float()
    return ((1.0 - render.smoothstep(SKIN_CHROMA_TOL[0], SKIN_CHROMA_TOL[1], d_ch))
            * (1.0 - render.smoothstep(SKIN_DARKER_TOL[0], SKIN_DARKER_TOL[1], -log_lum))
            * (1.0 - render.smoothstep(SKIN_BRIGHTER_TOL[0], SKIN_BRIGHTER_TOL[1], log_lum_hi)))


def push_pull(colour: torch.Tensor, weight: torch.Tensor, prior: torch.Tensor | None = None,
              prior_weight: float = 0.0, check: Callable[[], None] = lambda: None) -> torch.Tensor:
    """Fill an image where its weight is low: (C, H, W) colour, (H, W) weight in 0..1 -> (C, H, W).

    Pull: a pyramid of weighted averages (a coarse cell is fully trusted once its children hold one
    full weight). Push: from the coarsest level down, each level keeps its own data by weight and takes
    the bilinearly upsampled coarser result elsewhere, so holes get smooth colour from their surroundings.
    A `prior` colour (C,) with a tiny `prior_weight` everywhere only matters far from any data: there
    the fill tends to it instead of to whatever data happens to be nearest. `check()` is called before
    the push (it raises to cancel).
    """
    w = weight.clamp(0.0, 1.0)[None]
    p = colour * w
    if prior is not None and prior_weight > 0:
        p = p + prior_weight * prior.view(-1, 1, 1)
        w = w + prior_weight
    levels = []
    while min(p.shape[-2:]) > 1:
        levels.append((p, w))
        h, wd = p.shape[-2:]
        if h % 2 or wd % 2:
            p = F.pad(p, (0, wd % 2, 0, h % 2))
            w = F.pad(w, (0, wd % 2, 0, h % 2))
        p = F.avg_pool2d(p[None], 2)[0]
        w = F.avg_pool2d(w[None], 2)[0]
        gain = torch.where(w > 0, (4.0 * w).clamp(max=1.0) / w.clamp_min(1e-12), torch.zeros_like(w))
        p, w = p * gain, w * gain
    filled = p / w.clamp_min(1e-12)
    if float(w.max()) <= 0:
        filled = torch.full_like(p, 0.5)
    check()
    for p_l, w_l in reversed(levels):
        h, wd = p_l.shape[-2:]
        up = render.upsample2x(filled)[:, :h, :wd]
        a = w_l.clamp(max=1.0)
        filled = p_l / w_l.clamp_min(1e-12) * a + (1.0 - a) * up
    return filled




def _photo_px_per_texel(lay: _TileLayout, uvd: torch.Tensor, w: torch.Tensor) -> float:
    """Median distance in photo pixels between horizontally adjacent, well-seen texels."""
    ok = (lay.right >= 0) & (w > 0.5)
    ok &= w[lay.right.clamp_min(0)] > 0.5
    a = torch.nonzero(ok).squeeze(1)
    if len(a) < 100:
        return 1.0
    b = lay.right[a]
    step = ((uvd[0, b] - uvd[0, a]).square() + (uvd[1, b] - uvd[1, a]).square()).sqrt()
    return float(step.median())


def linear_resampled(photo_rgb: np.ndarray, factor: float, box: tuple[int, int, int, int],
                     lut: np.ndarray = SRGB8_TO_LINEAR) -> tuple[np.ndarray, float]:
    """The crop `box` (x0, y0, x1, y1, photo px) of an 8-bit sRGB photo in linear light, area-filtered
    down by `factor` when that is above 1.5: (h, w, 3) float32 and the scale (output px per photo px).
    Decoded in row strips so a large photo never exists as a whole float copy. `lut` maps the 8-bit
    values (default: to linear light; colour.SRGB8_CLIPPED: to how clipped they are, so a resampled
    pixel holds the share of its photo pixels that were clipped)."""
    x0, y0, x1, y1 = box
    crop = photo_rgb[y0:y1, x0:x1]
    if factor <= 1.5:
        return lut[crop], 1.0
    h, w = crop.shape[:2]
    out_w, out_h = max(1, round(w / factor)), max(1, round(h / factor))
    step = max(1, int(math.ceil(factor)) * 64)  # strips of whole output rows (approximately)
    rows_out = []
    scale_y = out_h / h
    r0 = 0
    while r0 < h:
        r1 = min(h, r0 + step)
        o0, o1 = round(r0 * scale_y), round(r1 * scale_y)
        if o1 > o0:
            strip = lut[crop[r0:r1]]
            rows_out.append(cv2.resize(strip, (out_w, o1 - o0), interpolation=cv2.INTER_AREA))
        r0 = r1
    return np.concatenate(rows_out, axis=0), out_w / w


def _head_box(uvds: list[torch.Tensor], weights: list[torch.Tensor], width: int, height: int,
              margin: int) -> tuple[int, int, int, int]:
    """Photo-pixel box (x0, y0, x1, y1) around every texel that is seen at all, plus a margin."""
    pts = [uvd[:2, w > 0] for uvd, w in zip(uvds, weights)]
    pts = torch.cat(pts, dim=1) if pts else torch.zeros(2, 0)
    if pts.shape[1] == 0:
        return 0, 0, width, height
    lo, hi = pts.amin(1), pts.amax(1)
    return (max(0, int(lo[0]) - margin), max(0, int(lo[1]) - margin),
            min(width, int(hi[0]) + margin + 1), min(height, int(hi[1]) + margin + 1))


def _edge_faded(lay: _TileLayout, weight: torch.Tensor, S: int, sigma: float) -> torch.Tensor:
    """Per-texel weights (N,) faded towards 0 within about `sigma` texels of where they fail: the failure
    (1 - weight) blurred by a Gaussian of `sigma` reaches 0.5 at the edge of a large failed region, so
    texels there lose their weight, while an isolated failed texel or a small cluster (a few hairs, JPEG
    noise) blurs to almost nothing and takes nothing with it. Texels outside the layout do not fail,
    so the UV islands' own borders do not fade. (cv2's blur: the same bytes at any thread count.)"""
    if sigma < 0.5:
        return weight
    fail = np.zeros(S * S, np.float32)
    fail[lay.texel.cpu().numpy()] = (1.0 - weight).clamp(0.0, 1.0).cpu().numpy()
    spread = cv2.GaussianBlur(fail.reshape(S, S), (0, 0), sigma, borderType=cv2.BORDER_CONSTANT).reshape(-1)
    near_fail = torch.from_numpy(spread).to(weight.device)[lay.texel]
    return weight * (1.0 - render.smoothstep(*SKIN_EDGE_FADE, near_fail))


def _texel_image(lay: _TileLayout, values: torch.Tensor, S: int) -> torch.Tensor:
    """Per-texel values (C, N) or (N,) -> (C, S, S) or (S, S) image, 0 where no texel."""
    flat = values.reshape(-1, values.shape[-1]).float()
    img = torch.zeros((flat.shape[0], S * S), device=values.device)
    img.index_copy_(1, lay.texel, flat)
    return img.view(values.shape[:-1] + (S, S))


def _interp(attr_t: torch.Tensor, lay: _TileLayout) -> torch.Tensor:
    """Component-major per-vertex attributes (C, V) at the texels -> (C, N)."""
    out = None
    for k in range(3):
        term = attr_t.index_select(1, lay.vertex[k]) * lay.bary[k]
        out = term if out is None else out + term
    return out


def constant_maps(size: int, tiles=TILES) -> dict[str, dict[int, np.ndarray]]:
    """Specular and normal maps of one value (read-only views: no memory per texel)."""
    spec = np.broadcast_to(np.float32(SKIN_SPECULAR_LEVEL), (size, size))
    normal = np.broadcast_to(np.asarray(FLAT_NORMAL, np.float32), (size, size, 3))
    return {"specular": {t: spec for t in tiles}, "normal": {t: normal for t in tiles}}


@dataclass
class Recipe:
    """What a texture strategy changes in the shared projection machinery (see `make_texture`).
    - `shading(normals (3, N) camera space) -> (3, N)`: the photo's colours are divided by it (de-lighting);
    - `weight(tile, uvd (3, N), shading (3, N) | None) -> (N,)`: an extra confidence factor per texel;
    - `base(tile, S) -> (3, S, S)`: what the fill tends to far from the seen texels, in linear light
      (None: the median colour of the well-seen skin, as the projection does);
    - `reference(tile, S) -> (3, S, S)`: the albedo expected at each texel (a fitted albedo model), whose
      chromaticity rebuilds the channels the photo clipped (`unclipped`; None: the median colour of the
      face tile's seen, unclipped texels); only a de-lighting strategy (`shading`) rebuilds them;
    - `check(tile, uvd (3, N)) -> (N,)`: where else the skin check applies, 0..1 (besides the regions where
      something often covers the skin: a fringe of hair that the hair mask's edge misses);
    - `prepare(first)`: called once before the fill with the direct view of every tile, {tile: (4, S, S)}
      premultiplied linear colour and weight (before mirror and fill): a generator of the unseen parts
      computes its `base` from it (backend/generator);
    - `mirror`: whether weakly seen texels take their mirror image's colour (step 4);
    - `mirror_from`: ... only texels whose own weight reaches this (0: every texel; a ramp from half of it):
      where a texel was not seen at all, a generator that saw the whole face may know better than the
      mirror, which carries the other side's light and occluders over."""
    name: str
    shading: Callable[[torch.Tensor], torch.Tensor] | None = None
    weight: Callable[[int, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    base: Callable[[int, int], torch.Tensor] | None = None
    reference: Callable[[int, int], torch.Tensor] | None = None
    check: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    prepare: Callable[[dict[int, torch.Tensor]], None] | None = None
    mirror: bool = True
    mirror_from: float = 0.0


def project_texture(obs: Observation, fit: SceneFit, model: FaceModel, size: int = 1024,
                    hooks: Hooks | None = None, *, _debug: dict | None = None) -> TextureResult:
    """Strategy "projection" (v0): the photo as it is, lighting included, projected onto the UV tiles."""
    return make_texture(obs, fit, model, size, Recipe("projection"), hooks, _debug=_debug)


def make_texture(obs: Observation, fit: SceneFit, model: FaceModel, size: int, recipe: Recipe,
                 hooks: Hooks | None = None, *, _debug: dict | None = None) -> TextureResult:
    """Project the photo onto the fitted head's UV tiles 1001 and 1002 (see the module docstring), with a
    strategy's changes (`recipe`).

    Runs on the device of `fit.vertices`. `hooks.cancel_check()` is called between sub-steps (it raises
    to cancel), `hooks.progress(fraction)` after each. `_debug`, if given, receives (S, S) float images
    of the weight's factors per tile (for scripts/).
    """
    hooks = hooks or Hooks()
    check = hooks.cancel_check
    dev = fit.vertices.device
    S = int(size)
    k = obs.intrinsics
    H, W = k.height, k.width
    photo_rgb = np.asarray(obs.photo.rgb)[..., :3]

    def debug(name: str, lay: _TileLayout, values: torch.Tensor) -> None:
        if _debug is not None:
            img = _texel_image(lay, values, S)
            _debug[f"{name}.{lay.tile}"] = (img.permute(1, 2, 0) if img.dim() == 3 else img).cpu().numpy()

    # Vectorised ops of ~1-10 ms: on busy cores, fewer threads are faster (threads.idle_cpu_threads).
    with torch.no_grad(), torch_threads(idle_cpu_threads() if dev.type == "cpu" else torch.get_num_threads()):
        cam_v = render.to_camera(fit.vertices.detach().float(), fit.rotation.detach().float().to(dev),
                                 fit.translation.detach().float().to(dev))
        layouts, seams = _uv_layout(model, S, str(dev), check)
        check()
        hooks.progress(0.2)
        topo = model.topology
        occ = np.isin(topo.polygon_part[topo.triangle_polygon], [PART_NAMES.index(p) for p in _OCCLUDER_PARTS])
        view = render.photo_view(cam_v, torch.from_numpy(topo.triangles[occ]).to(dev), k, PHOTO_VIEW_MAX_SIDE)
        check()

        # Direct view: per texel its point and normal, its place in the photo and how well it is seen.
        normals_t = render.vertex_normals(cam_v, torch.from_numpy(topo.triangles).to(dev)).T.contiguous()
        cam_t = cam_v.T.contiguous()
        direct = []  # per tile: (u, v, depth) (3, N), weight (N,), where to check for skin (N,), normal (3, N)
        for lay in layouts:
            check()
            p = _interp(cam_t, lay)
            check()
            n = _interp(normals_t, lay)
            n = n / render.sum_rows(n.square()).sqrt().clamp_min(1e-12)
            parts = [render.view_factors(p[:, c], n[:, c], view, k) for c in _texel_chunks(p.shape[1], check)]
            uvd = torch.cat([q[0] for q in parts], 1)
            f = {name: torch.cat([q[1][name] for q in parts]) for name in parts[0][1]}
            w = f["angle"] * f["visible"] * f["sil_fade"] * f["occ_fade"] * f["border"]
            check_here = torch.maximum(lay.outer, f["near_edge"])
            if recipe.check is not None:
                check_here = torch.maximum(check_here, recipe.check(lay.tile, uvd))
            direct.append((uvd, w, check_here, n))
            for name, val in f.items():
                debug(name, lay, val)
            debug("check_skin", lay, direct[-1][2])
        check()
        hooks.progress(0.4)

        # Photo, in linear light: area-filtered first if a texel spans several photo pixels, and a blurred
        # copy for the skin check (smooth, and blind to JPEG blocks and single hairs). Only the head's box
        # is decoded. A de-lighting strategy divides both by the fitted shading at each texel.
        px_per_texel = _photo_px_per_texel(layouts[0], direct[0][0], direct[0][1])
        blur_factor = max(2.0, SKIN_BLUR_FRACTION * max(H, W))
        box = _head_box([d[0] for d in direct], [d[1] for d in direct], W, H, margin=int(4 * blur_factor) + 2)
        sharp_np, _ = linear_resampled(photo_rgb, px_per_texel, box)
        check()
        blurred_np, _ = linear_resampled(photo_rgb, blur_factor, box)
        check()
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev).permute(2, 0, 1)  # noqa: E731
        sharp, blurred = to_t(sharp_np), to_t(blurred_np)
        bw, bh = box[2] - box[0], box[3] - box[1]
        grids = [render.pixel_grid(d[0][0] - box[0], d[0][1] - box[1], bw, bh) for d in direct]
        shadings, colours = [], []
        for d, g in zip(direct, grids):
            check()
            shadings.append(recipe.shading(d[3]) if recipe.shading else None)
            colours.append(_unlit(render.sample_image(sharp, g), shadings[-1]))  # (3, N)
        if recipe.shading is not None:
            # Clipped channels hold a lower bound only: rebuilt from the texel's unclipped channels, and
            # a texel clipped in every channel gives way to the mirror and the fill.
            check()
            clip = to_t(linear_resampled(photo_rgb, px_per_texel, box, SRGB8_CLIPPED)[0])
            clipped = [render.sample_image(clip, g) for g in grids]
            if recipe.reference is not None:
                refs = []
                for lay in layouts:
                    check()
                    refs.append(recipe.reference(lay.tile, S).reshape(3, S * S)[:, lay.texel])
            else:
                c0, k0 = colours[0], (clipped[0].amax(0) < 0.05) & (direct[0][1] > 0.5)   # seen, unclipped
                med = c0[:, k0].median(1).values if int(k0.sum()) >= 10 else c0.median(1).values
                refs = [med[:, None].expand_as(c) for c in colours]
            check()
            colours = [unclipped(c, q, r) for c, q, r in zip(colours, clipped, refs)]
            for lay, d, q in zip(layouts, direct, clipped):
                debug("clipped", lay, q.amax(0))
            direct = [(d[0], d[1] * (1.0 - q.amin(0)), d[2], d[3]) for d, q in zip(direct, clipped)]
        check()
        hooks.progress(0.55)
        for lay, c in zip(layouts, colours):
            debug("colour", lay, c)

        # Skin check on the scalp, neck, ears, forehead top and near the silhouette: keeps hair, clothes
        # and background out. Reference: the well-seen inner face. On sRGB-encoded colours: the
        # thresholds are perceptual.
        w_face, check_face = direct[0][1], direct[0][2]
        ref_sel = torch.nonzero((w_face > 0.8) & (check_face < 0.05)).squeeze(1)
        if len(ref_sel) < 100:
            ref_sel = torch.nonzero(w_face > 0.3).squeeze(1)
        has_ref = len(ref_sel) >= 10
        default_skin = torch.as_tensor(srgb_to_linear(np.asarray(DEFAULT_SKIN_SRGB)), device=dev)
        skin_colour = colours[0][:, ref_sel].median(1).values if has_ref else default_skin
        check()
        blurred_at = [_unlit(render.sample_image(blurred, g), sh) for g, sh in zip(grids, shadings)]
        skin_ref = linear_to_srgb(blurred_at[0][:, ref_sel]) if has_ref else None
        weights = []
        for lay, d, c, bl, sh in zip(layouts, direct, colours, blurred_at, shadings):
            check()
            w, check_skin = d[1], d[2]
            if skin_ref is not None:
                # in chunks: in double precision, a 2048-px tile's sRGB conversion takes a second at once
                srgb = [torch.cat([linear_to_srgb(x[:, i]) for i in _texel_chunks(x.shape[1], check)], 1)
                        for x in (bl, c)]
                wskin = _skin_weight(srgb[0], skin_ref, srgb[1])
                check()
                # Where skin meets a collar, hair or the background, the pixels between are neither: a
                # mixed, shadowed rim (clothes touching the neck) that passes the check and that the fill
                # would then spread as a dark line along it.
                wskin = _edge_faded(lay, wskin, S, min(S / 64.0, SKIN_EDGE_PX / max(px_per_texel, 1e-3)))
                w = w * (1.0 - (2.0 * check_skin).clamp(max=1.0) * (1.0 - wskin))
                debug("skin", lay, wskin)
                check()
            if recipe.weight is not None:
                extra = recipe.weight(lay.tile, d[0], sh)
                w = w * extra
                debug("recipe_weight", lay, extra)
            weights.append(w)
        check()
        hooks.progress(0.65)

        # First-pass textures (premultiplied colour, weight) for the mirror lookup.
        first = {lay.tile: _texel_image(lay, torch.cat([c * w, w[None]]), S)
                 for lay, w, c in zip(layouts, weights, colours)}
        if recipe.prepare is not None:
            recipe.prepare(first)
            check()

        diffuse, visibility, final = {}, {}, {}
        tint = torch.as_tensor(MOUTH_TINT_SRGB, device=dev)
        mouth_colour = srgb_to_linear(linear_to_srgb(skin_colour) * tint)
        for i, (lay, w, c) in enumerate(zip(layouts, weights, colours)):
            check()
            # What the fill tends to: the strategy's base image, or the median skin colour. The fill works on
            # the difference to it, so far from any data the texture becomes the base.
            base = (recipe.base(lay.tile, S).reshape(3, S * S) if recipe.base is not None
                    else skin_colour[:, None].expand(3, S * S))
            check()
            # Mirror: weakly seen texels take their mirror image's colour, as far as that was seen.
            acc = torch.cat([c * w, w[None]])                           # (4, N) premultiplied
            for mt, (sel, grid) in (lay.mirror.items() if recipe.mirror else ()):
                m = render.sample_image(first[mt], grid)                # (4, M)
                own = w[sel]
                gate = render.smoothstep(0.5 * recipe.mirror_from, recipe.mirror_from, own) \
                    if recipe.mirror_from > 0 else 1.0
                acc[:, sel] += (1.0 - own) * gate * m
            check()
            acc_w = acc[3]
            col = acc[:3] / acc_w.clamp_min(1e-6)
            check()
            # Only confidently seen texels drive the fill (faint ones would spread into the holes: the
            # pyramid trusts the nearest data, however weak); every texel then blends its own colour
            # with the fill by its weight, so seen and filled parts meet without a step.
            alpha = render.smoothstep(BLEND_WEIGHT[0], BLEND_WEIGHT[1], acc_w)
            trust = torch.where(lay.mouth, 0.0, render.smoothstep(FILL_TRUST[0], FILL_TRUST[1], acc_w))
            img = _texel_image(lay, torch.cat([col - base[:, lay.texel], trust[None], alpha[None]]), S).view(5, S * S)
            check()
            rimg, wimg, aimg = img[:3], img[3], img[4]
            if seams.tile == lay.tile and seams.source in final and len(seams.texel):
                # Seams with a tile done before: the same 3D points there, so no colour step across the seam.
                sc = render.sample_image(final[seams.source], seams.grid) - base[:, seams.texel]  # (3, M)
                ssum = torch.zeros((4, S * S), device=dev).index_add_(
                    1, seams.texel, torch.cat([sc, torch.ones_like(sc[:1])]))
                on = torch.nonzero(ssum[3]).squeeze(1)
                a = aimg[on]
                rimg[:, on] = rimg[:, on] * a + ssum[:3, on] / ssum[3, on] * (1.0 - a)
                wimg[on] = 1.0
                aimg[on] = 1.0
            if _debug is not None:
                _debug[f"fill_colour.{lay.tile}"] = (rimg + base).view(3, S, S).permute(1, 2, 0).cpu().numpy()
                _debug[f"fill_weight.{lay.tile}"] = wimg.view(S, S).cpu().numpy()
            check()
            fill = push_pull(rimg.view(3, S, S), wimg.view(S, S), torch.zeros(3, device=dev),
                             FILL_PRIOR_WEIGHT, check).view(3, S * S)
            check()
            out = base + rimg * aimg + fill * (1.0 - aimg)
            mt = torch.nonzero(lay.mouth).squeeze(1)
            if len(mt):
                a = alpha[mt]
                out[:, lay.texel[mt]] = col[:, mt] * a + mouth_colour[:, None] * (1.0 - a)
            final[lay.tile] = out.view(3, S, S)
            diffuse[lay.tile] = out.view(3, S, S).permute(1, 2, 0).clamp(0.0, 1.0).cpu().numpy()
            visibility[lay.tile] = _texel_image(lay, w, S).clamp(0.0, 1.0).cpu().numpy()
            hooks.progress(0.65 + 0.35 * (i + 1) / len(layouts))
        check()
    info = {"photo_px_per_texel": px_per_texel, "skin_colour_linear": [float(x) for x in skin_colour],
            "skin_reference_texels": int(len(ref_sel))}
    return TextureResult(recipe.name, S, {"diffuse": diffuse, "visibility": visibility, **constant_maps(S)}, info)


TEXEL_CHUNK = 1 << 19   # texels per call of a per-texel op that a 2048-px tile's 3 million would keep for 1-2 s


def _texel_chunks(n: int, check: Callable[[], None]):
    """Slices of at most TEXEL_CHUNK of n texels, with `check()` before each and after the last (it raises
    to cancel): a per-texel op run over them and concatenated gives the numbers of one call."""
    for a in range(0, max(n, 1), TEXEL_CHUNK):
        check()
        yield slice(a, a + TEXEL_CHUNK)
    check()


def unclipped(colour: torch.Tensor, clipped: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """De-lit colours (3, N) with their clipped channels (clipped share (3, N), colour.SRGB8_CLIPPED) rebuilt:
    a clipped channel is only a lower bound, so it becomes the larger of itself and the reference colour
    (3, N) scaled to the texel's unclipped channels (a highlight-reconstruction by chromaticity, as raw
    converters do). Over-exposed skin clips red first: left alone it turns cyan-grey where the light is
    strongest, a shading that every relight would keep."""
    trust = 1.0 - clipped
    scale = (trust * colour).sum(0) / (trust * reference).sum(0).clamp_min(1e-6)
    return colour + clipped * (reference * scale - colour).clamp_min(0.0)


def _unlit(colour: torch.Tensor, shading: torch.Tensor | None) -> torch.Tensor:
    """Colour (3, N) divided by the shading at each texel (shading floored: deep shadow has no data)."""
    return colour if shading is None else colour / shading.clamp_min(MIN_SHADING)


def delit_texture(obs: Observation, fit: SceneFit, model: FaceModel, size: int = 1024,
                  hooks: Hooks | None = None, *, _debug: dict | None = None) -> TextureResult:
    """Strategy "delit": the photo divided by the fitted shading (SceneFit.lighting) at each texel, keeping
    the photo's detail; where the photo says little (hair, background, deep shadow, grazing angles, the
    hidden side) it blends towards the mirrored de-lit texel and then towards the fitted albedo model, so
    the scalp, ears and neck continue the face's colour without seams (module docstring, steps 4-5)."""
    tex = make_texture(obs, fit, model, size, delit_recipe(obs, fit), hooks, _debug=_debug)
    return skin_maps.with_measured_maps(tex, obs, fit, model, hooks)  # normal, specular, roughness, eyes


def delit_recipe(obs: Observation, fit: SceneFit, albedo_base: bool = True) -> Recipe:
    """The "delit" strategy's changes to the projection: shading divided out, hair, background and deep
    shadow lose weight, the fill tends to the fitted albedo model (`albedo_base`; else to the median skin)."""
    if fit.lighting is None:
        raise ValueError("the de-lit texture needs a fit with lighting (photometric.fit_photometric)")
    dev = fit.vertices.device
    lighting = fit.lighting.detach().float().to(dev)
    albedo_model = fit.albedo_model
    k = obs.intrinsics
    # The shading of a surface facing the camera: the reference for "deep shadow".
    facing = render.sh_shading(torch.tensor([[0.0, 0.0, 1.0]], device=dev), lighting)[0]
    reference = float((facing * LUMA.to(dev)).sum().clamp_min(1e-3))
    masks = obs.masks
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)[None]  # noqa: E731
    hair = to_t(masks.hair) if masks is not None else None
    person = to_t(masks.person) if masks is not None else None
    near_hair = (to_t(skin_maps.wide_blur(np.ascontiguousarray(masks.hair, dtype=np.float32), max(
        0.5, HAIR_NEAR_SIGMA * _box_height(obs) * masks.hair.shape[0] / k.height))) if masks is not None else None)

    def shading(n: torch.Tensor) -> torch.Tensor:
        return render.sh_shading(n.T, lighting).T

    def weight(tile: int, uvd: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
        lum = (LUMA.to(dev)[:, None] * sh).sum(0)
        w = render.smoothstep(SHADOW_CONFIDENCE[0] * reference, SHADOW_CONFIDENCE[1] * reference, lum)
        if hair is not None:
            grid = render.pixel_grid(uvd[0], uvd[1], k.width, k.height)
            w = w * (1.0 - render.smoothstep(*HAIR_PROBABILITY, render.sample_image(hair, grid)[0]))
            w = w * render.smoothstep(*HAIR_PROBABILITY, render.sample_image(person, grid)[0])
        return w

    model_image = None
    if albedo_model is not None and fit.albedo is not None and len(fit.albedo) == albedo_model.num_components:
        coeffs = fit.albedo.detach().float().to(dev)
        images: dict[tuple[int, int], torch.Tensor] = {}

        def model_image(tile: int, S: int) -> torch.Tensor:
            if (tile, S) not in images:
                images[tile, S] = albedo_model.image(tile, coeffs, S).clamp(0.0, 1.0)
            return images[tile, S]

    def check(tile: int, uvd: torch.Tensor) -> torch.Tensor:
        # Hair strands reach below the hair mask's edge (a fringe on the forehead, wisps at the temples):
        # mixed pixels there pass the mask, and inside the face no other skin check runs, so a dark,
        # yellow band would be kept at the hairline and the fill would carry it up the forehead.
        grid = render.pixel_grid(uvd[0], uvd[1], k.width, k.height)
        return render.smoothstep(*HAIR_NEAR, render.sample_image(near_hair, grid)[0])
    return Recipe("delit", shading, weight, model_image if albedo_base else None, reference=model_image,
                  check=check if near_hair is not None else None)


def _box_height(obs: Observation) -> float:
    """The detected face box's height in photo pixels (the photo's height without a detection)."""
    det = getattr(obs, "detection", None)
    if det is None or det.box is None:
        return float(obs.intrinsics.height)
    return float(max(det.box[3] - det.box[1], 1.0))


def generated_texture(obs: Observation, fit: SceneFit, model: FaceModel, size: int = 1024,
                      hooks: Hooks | None = None, **kw) -> TextureResult:
    """Strategy "generated": "delit" with a diffusion model's completion as the fill (backend/generator)."""
    from .generator import generated_texture as generate
    tex = generate(obs, fit, model, size, hooks, **kw)
    return skin_maps.with_measured_maps(tex, obs, fit, model, hooks)  # normal, specular, roughness, eyes


# The texture stage's strategies, by the name of Options.texture.
STRATEGIES: dict[str, Callable[..., TextureResult]] = {"projection": project_texture, "delit": delit_texture,
                                                       "generated": generated_texture}

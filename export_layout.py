"""The maths of exporting a head to formats without UDIM (glTF, FBX, OBJ, USD): pure numpy, no bpy.

Exporters write one image per texture slot and read UVs in 0..1. A UDIM head has the skin on tiles
1001 and 1002 (u in 0..1 and 1..2) and every other part on its own tile. The export layout:
- skin: the N tiles side by side in one atlas image (N*S x S pixels), u' = (tile index + local u) / N,
  v' = v. The atlas is the tiles' pixels copied, not resampled: lossless and deterministic;
- every other part: its own tile's local coordinates, u' = u - tile column (each of those materials
  has at most one image, e.g. the eyes' iris texture, drawn in 0..1).
The tile of a polygon is that of the mean u of its corners, so a polygon whose corner lies exactly
on a tile's edge (u = 1.0) stays in one tile.
Also here: the eyeball's iris image, drawn as numbers (the importer and the exporters share it).
"""
from __future__ import annotations

import numpy as np


def polygon_tiles(corner_uvs: np.ndarray, face_sizes: np.ndarray) -> np.ndarray:
    """(P,) int: the UDIM column (0 for 1001) of each polygon, from the mean u of its corners."""
    sizes = np.asarray(face_sizes, dtype=np.int64)
    starts = np.zeros(len(sizes), np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    mean_u = np.add.reduceat(np.asarray(corner_uvs, dtype=np.float64)[:, 0], starts) / sizes
    return np.floor(mean_u).astype(np.int64)


def export_uvs(corner_uvs: np.ndarray, face_sizes: np.ndarray, face_part: np.ndarray,
               atlas_parts: dict[int, list[int]]) -> np.ndarray:
    """(C, 2) float32 per-corner UVs in 0..1 for one material per part.

    atlas_parts: part index -> the UDIM tiles (1001, 1002, ...) laid side by side in that part's
    atlas, in order; parts not named keep their tile's local coordinates."""
    uv = np.asarray(corner_uvs, dtype=np.float64)
    sizes = np.asarray(face_sizes, dtype=np.int64)
    tile_col = np.repeat(polygon_tiles(uv, sizes), sizes)
    part = np.repeat(np.asarray(face_part, dtype=np.int64), sizes)
    out = uv.copy()
    out[:, 0] = uv[:, 0] - tile_col
    for p, tiles in atlas_parts.items():
        sel = part == p
        cols = np.asarray([t - 1001 for t in tiles], dtype=np.int64)
        lut = np.full(max(int(cols.max()), int(tile_col[sel].max(initial=0))) + 1, -1, np.int64)
        lut[cols] = np.arange(len(cols))
        slot = lut[np.clip(tile_col[sel], 0, None)]
        bad = (slot < 0) | (tile_col[sel] < 0)
        if bad.any():
            raise ValueError(f"part {p} has polygons on UDIM tiles {sorted(set((tile_col[sel][bad] + 1001).tolist()))} "
                             f"that its atlas {tiles} lacks")
        out[sel, 0] = (slot + out[sel, 0]) / len(cols)
    return out.astype(np.float32)


def atlas(tiles: list[np.ndarray]) -> np.ndarray:
    """The tiles (H, W, C) side by side, left to right in the given order (all the same shape)."""
    shapes = {t.shape for t in tiles}
    if len(shapes) != 1:
        raise ValueError(f"UDIM tiles of one map must have one size, got {sorted(shapes)}")
    return np.concatenate(tiles, axis=1)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


# Radial profile of the ICT eyeball's outer shell, whose planar UV has its front pole at (0.5, 0.5):
# distance from the pole (UV units) -> linear RGB. Pupil, iris (dark ring at the limbus), sclera.
DEFAULT_IRIS = (0.18, 0.11, 0.06)


def eye_profile(iris=DEFAULT_IRIS):
    iris = np.asarray(iris, dtype=np.float64)
    pupil = np.array([0.005, 0.005, 0.005])
    sclera = np.array([0.80, 0.78, 0.74])
    stops = [(0.0, pupil), (0.036, pupil), (0.042, iris * 0.6), (0.085, iris), (0.10, iris * 0.5),
             (0.112, sclera), (0.35, np.array([0.78, 0.72, 0.68]))]
    return np.array([s[0] for s in stops]), np.stack([s[1] for s in stops])


def eye_image(size: int = 512, iris=DEFAULT_IRIS) -> np.ndarray:
    """(size, size, 4) float32 sRGB-encoded RGBA (what an 8-bit sRGB image holds) of the eyeball."""
    pos, colours = eye_profile(iris)
    c = (np.arange(size) + 0.5) / size - 0.5
    r = np.hypot(c[None, :], c[:, None])
    rgb = np.stack([np.interp(r, pos, colours[:, k]) for k in range(3)], axis=-1)
    out = np.ones((size, size, 4), np.float32)
    out[..., :3] = srgb_encode(rgb)
    return out

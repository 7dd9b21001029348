"""The maths of exporting a head to formats without UDIM (glTF, FBX, OBJ, USD): pure numpy, no bpy.

Exporters write one image per texture slot and read UVs in 0..1. A UDIM head has the skin on tiles
1001 and 1002 (u in 0..1 and 1..2) and every other part on its own tile. The export layout:
- skin: the N tiles side by side in one atlas image (N*S x S pixels), u' = (tile index + local u) / N,
  v' = v. The atlas is the tiles' pixels copied, not resampled: lossless and deterministic;
- every other part: its own tile's local coordinates, u' = u - tile column (each of those materials
  has at most one image, e.g. the eyes' iris texture, drawn in 0..1).
The tile of a polygon is that of the mean u of its corners, so a polygon whose corner lies exactly
on a tile's edge (u = 1.0) stays in one tile.
Also here: the eyeball's iris image and the eyelash strands, drawn as numbers (the importer and the
exporters share them).
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


# The ICT eyelash cards (tile 1007, docs/blender.md): six strips of cards per eye, stacked in v, the left
# eye's at local u 0.51-0.99, the right eye's at 0.01-0.49. Strips 0-2 are the lower lid's three layers
# (5-7 mm long), strips 3-5 the upper lid's (8-10 mm); each strip's top edge (its largest v) is the lash root
# at the lid margin and its bottom edge the tips. (v0, v1) per strip, read off the mesh's UVs:
LASH_STRIPS = ((0.014, 0.154), (0.18, 0.32), (0.346, 0.486), (0.516, 0.656), (0.682, 0.822), (0.848, 0.988))
LASH_COLOUR = (0.018, 0.012, 0.009)   # linear RGB: dark brown-black hair


def lash_image(size: int = 1024, seed: int = 0) -> np.ndarray:
    """(size, size, 4) float32 RGBA of individual lash strands on the cards: sRGB-encoded colour, alpha the
    strands' coverage, 0 between them. Rows run bottom-up (row 0 is v = 0), as Blender's pixels do.

    A card drawn as one half-transparent sheet is a grey band across the eye (three layers of lower lashes
    in front of the sclera): real lashes are thin strands with gaps. Per card layer: upper 60 strands,
    lower 20 (real lids carry about 100-150 upper and 50-75 lower lashes, spread over the three layers),
    each tapering from about 0.1 mm at the root to nothing at its tip, of random length and lean."""
    rng = np.random.default_rng(seed)
    cover = np.zeros((size, size), np.float64)          # sum of -log(1 - alpha): strands composite
    rows_v = (np.arange(size) + 0.5) / size
    for k, (v0, v1) in enumerate(LASH_STRIPS):
        upper = k >= 3
        rows = np.nonzero((rows_v >= v0) & (rows_v <= v1))[0]
        t = (v1 - rows_v[rows]) / (v1 - v0)              # 0 at the root, 1 at the card's tip edge
        for lo, hi in ((0.01, 0.49), (0.51, 0.99)):
            n = 60 if upper else 20
            s0 = rng.uniform(lo + 0.01, hi - 0.01, n)
            # Shorter and fainter towards the eye corners (the card's ends), as on a real lid.
            along = np.sin(np.pi * (s0 - lo) / (hi - lo)) ** 0.5
            length = (rng.uniform(0.55, 1.0, n) if upper else rng.uniform(0.35, 0.8, n)) * (0.4 + 0.6 * along)
            start = rng.uniform(0.0, 0.06, n)
            lean = rng.normal(0.0, 0.012, n)             # sideways drift over the card (u units)
            root_width = (0.002 if upper else 0.0012) * rng.uniform(0.7, 1.3, n)   # half-width, u units
            opacity = (1.0 if upper else 0.6) * rng.uniform(0.6, 1.0, n) * along
            # (rows, strands): each strand's centre, half-width and opacity on every row of the strip
            frac = (t[:, None] - start[None]) / (length[None] - start[None])
            on = (frac >= 0) & (frac <= 1)
            centre = s0[None] + lean[None] * np.clip(frac, 0, 1) ** 2
            half = root_width[None] * (1.0 - 0.85 * np.clip(frac, 0, 1))
            alpha = opacity[None] * (1.0 - np.clip(frac, 0, 1) ** 2)
            # Coverage of each pixel column by the strand's [centre - half, centre + half] (box filter).
            r_idx, s_idx = np.nonzero(on)
            c_px = centre[r_idx, s_idx] * size - 0.5
            h_px = np.maximum(half[r_idx, s_idx] * size, 0.25)
            lo_px, hi_px, a_on = c_px - h_px, c_px + h_px, alpha[r_idx, s_idx]
            first = np.floor(c_px).astype(np.int64)
            for dx in range(-3, 4):
                col = first + dx
                ok = (col >= 0) & (col < size)
                overlap = np.clip(np.minimum(hi_px, col + 0.5) - np.maximum(lo_px, col - 0.5), 0.0, 1.0)
                a = np.clip(a_on * overlap, 0.0, 0.999)
                np.add.at(cover, (rows[r_idx[ok]], col[ok]), -np.log1p(-a[ok]))
    out = np.empty((size, size, 4), np.float32)
    out[..., :3] = srgb_encode(np.asarray(LASH_COLOUR))
    out[..., 3] = 1.0 - np.exp(-cover)
    return out

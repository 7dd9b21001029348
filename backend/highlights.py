"""Specular highlights taken out of the de-lit diffuse map (docs/maps.md, "Highlights").

The de-lit map is the photo divided by the fitted diffuse shading, so whatever the skin reflected at its
surface (the shine on the nose, forehead and lips) stays in it as a pale patch, and every relight keeps
that patch where the photo's light put it, on top of the highlight the material itself then adds.

By the dichromatic reflection model (Shafer 1985) a skin texel of the photo is albedo x shading plus a
surface reflection of the light's own colour. Divided by the shading, a unit of highlight adds
light_colour / shading to the de-lit colour: a known direction in colour space per texel, paler than
the skin. So each seen texel is split (`skin_maps.specular_evidence`, least squares) into a multiple of
a reference skin colour and a multiple of that highlight colour, and the highlight's part is taken out
where it is a clear share of the texel's brightness (a soft threshold: below it the split is noise and
the shading fit's own tint error, docs/maps.md "Why the photo's specular evidence fails").

The reference skin colour is the local mean of the de-lit map over the texel's face region (lips are not
the skin around them), away from the highlights found in a first pass, times the fitted albedo model's
colour structure at the texel over its mean in the same window (lips redder at their middle, the upper
lip's stubble, the lids): the local mean alone would call every texel paler than its neighbours a
highlight. Only brightening is removed, and never more of it than the texel's brightening over its
reference in every channel, nor more than half its luminance: a highlight lies on top of the skin's
colour, so a texel darker than its reference (stubble, a mole, a crease) is kept as it is, and a misfit
(teeth seen on a lip texel, a wrong reference) is not hollowed into a dark spot. Brows are hair: left
alone; the removal fades out towards them, towards the skin's edges and where the photo saw little.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from . import skin_maps
from .scene import _nothing
from .skin_maps import REGION_NAMES, TileFrames

LUMA = skin_maps.LUMA.astype(np.float32)


@dataclass(frozen=True)
class HighlightSettings:
    window_cm: float = 0.5            # the reference skin colour's local window (Gaussian sigma)
    share: tuple[float, float] = (0.01, 0.03)   # the highlight's share of the texel's luminance: from
    #                                             nothing removed to all of it (smoothstep)
    max_share: float = 0.5            # the most of a texel's luminance that may be taken as highlight
    min_visibility: float = 0.05      # texels the photo saw at least this well ...
    full_visibility: float = 0.3      # ... faded in up to this (the fill blends in below it anyway)
    brows: tuple[float, float] = (0.2, 0.6)   # brow weight over which the removal fades out (hair)
    edge_cm: float = 0.1              # the fade's width at the edge of the skin (Gaussian sigma)
    core_weight: float = 0.75         # a region's colour comes from its core (soft weight above this)
    passes: int = 2                   # the second pass leaves the first pass's highlights out of the reference
    working_size: int = 256           # the reference's resolution per tile


DEFAULT_HIGHLIGHTS = HighlightSettings()


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _region_images(frames: TileFrames, size: int, core_weight: float,
                   check: Callable[[], None] = _nothing) -> tuple[np.ndarray, np.ndarray]:
    """(s, s, R) the soft region weights and (s, s, R) their cores (weight >= core_weight), area-averaged
    to the reference's working size (brows zero: hair). One channel at a time, with `check()` between:
    all 2R channels of a 2048-px tile at once are 0.3 GB and over a second of work."""
    S = frames.raster.size
    w = frames.regions.astype(np.float32).copy()
    w[:, REGION_NAMES.index("brows")] = 0.0
    core = (w >= core_weight).astype(np.float32)
    small = []
    for values in (*w.T, *core.T):
        check()
        img = frames.image(np.ascontiguousarray(values))
        small.append(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) if size != S else img)
    R = w.shape[1]
    return np.stack(small[:R], -1), np.stack(small[R:], -1)


def _reference(diffuse: np.ndarray, model_colour: np.ndarray | None, frames: TileFrames, weight: np.ndarray,
               regions: tuple[np.ndarray, np.ndarray], sigma: float, at: np.ndarray) -> np.ndarray:
    """(M, 3) the reference skin colour at the tile's flat texel indices `at`: per region, the weighted local mean of the
    de-lit map over the region's core (over the albedo model's local mean there, when given), blended by
    the soft region weights, at the working size of `regions` (the reference is smooth: a 0.5 cm window),
    brought back to the tile's size and, with the model, times the model's own colour at each texel."""
    S = frames.raster.size
    soft, core = regions
    s = soft.shape[0]
    shrink = (lambda im: im) if s == S else (lambda im: cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA))
    w_img = frames.image(weight.astype(np.float32))
    fields = [np.asarray(diffuse, np.float32)]
    if model_colour is not None:
        fields.append(np.asarray(model_colour, np.float32))
    # shrunk premultiplied by the weight (an area average of the seen texels only), then un-premultiplied
    w_small = shrink(w_img)
    stack = shrink(np.ascontiguousarray(np.concatenate(fields, -1) * w_img[..., None]))   # (s, s, 3 or 6)
    stack = stack / np.maximum(w_small, 1e-12)[..., None]
    num = np.zeros((s, s, 3), np.float32)
    den = np.zeros((s, s), np.float32)
    for i in range(soft.shape[-1]):
        ri = soft[..., i]
        wc = w_small * core[..., i]
        if ri.max() <= 0.01 or wc.sum() <= 0:
            continue
        blurred = skin_maps.masked_blur(stack, wc, sigma)          # the region core's local mean
        local = blurred[..., :3]
        if model_colour is not None:
            local = local / np.maximum(blurred[..., 3:], 1e-4)
        num += ri[..., None] * local
        den += ri
    ratio = num / np.maximum(den, 1e-6)[..., None]
    if s != S:
        ratio = cv2.resize(ratio, (S, S), interpolation=cv2.INTER_LINEAR)
    ref = ratio.reshape(S * S, 3)[at]
    if model_colour is not None:
        ref = ref * np.asarray(model_colour, np.float32).reshape(S * S, 3)[at]
    return ref


def remove_highlights(diffuse: dict[int, np.ndarray], visibility: dict[int, np.ndarray],
                      frames: dict[int, TileFrames], rotation: np.ndarray, sh: np.ndarray | None,
                      model_colour: dict[int, np.ndarray] | None = None,
                      settings: HighlightSettings = DEFAULT_HIGHLIGHTS, *,
                      check: Callable[[], None] = _nothing) -> tuple[dict[int, np.ndarray], dict]:
    """The de-lit diffuse tiles (S, S, 3) with the photo's specular highlights taken out (module docstring),
    and what was found. `frames`: skin_maps.texel_frames of the fitted vertices at the tiles' size;
    `rotation` the fitted head's; `sh` its SH lighting (9, 3); `model_colour` the fitted albedo model's
    tiles (S, S, 3), the reference's colour structure (None: the local mean alone). Returns new arrays;
    the inputs are not changed. Without light (no SH, or no directional part) the tiles come back as they are.
    `check()` is called between steps (it raises to cancel)."""
    out = {t: np.asarray(d) for t, d in diffuse.items()}
    info = {"texels": 0, "removed_luminance": 0.0}
    if sh is None:
        return out, info
    sh = np.asarray(sh, dtype=np.float64)
    _, e_rgb = skin_maps.key_light(sh)
    e_lum = float(e_rgb @ LUMA)
    if e_lum <= 1e-6:
        return out, info
    light_colour = e_rgb / e_lum
    rot = np.asarray(rotation, dtype=np.float64)
    removed_sum, seen_sum, count = 0.0, 0.0, 0
    for tile, fr in frames.items():
        if tile not in diffuse:
            continue
        check()
        S = fr.raster.size
        vis = fr.at(visibility[tile]).astype(np.float32)
        brows = fr.regions[:, REGION_NAMES.index("brows")]
        idx = np.flatnonzero((vis > settings.min_visibility) & (brows < settings.brows[1]))
        if len(idx) == 0:
            continue
        at = fr.texel[idx]                                  # flat indices into the (S, S) tile
        texel_cm = max(skin_maps.texel_size_cm(fr), 1e-6)
        # faded out towards the brows (hair), towards texels of other parts (the eye sockets, the mouth)
        # and where the photo saw the skin poorly: where the removal stops, it stops smoothly, not at a
        # triangle's edge or a visibility threshold
        skin = skin_maps.wide_blur(fr.image(np.ones(len(fr.texel), np.float32)), max(1.0, settings.edge_cm / texel_cm))
        check()
        fade = ((1.0 - _smoothstep(*settings.brows, brows[idx])) * _smoothstep(0.5, 0.95, skin.reshape(-1)[at])
                * _smoothstep(settings.min_visibility, settings.full_visibility, vis[idx]))
        # float32 per texel (a million of them): the split needs no more
        check()
        n = fr.normal[idx] @ rot.T.astype(np.float32)
        shading = np.maximum(skin_maps.sh_basis_np(n) @ sh.astype(np.float32), 1e-3)
        towards = light_colour[None].astype(np.float32) / shading   # (M, 3) a unit of highlight, de-lit
        lum_towards = np.maximum(towards @ LUMA, 1e-6)
        check()
        d = np.asarray(diffuse[tile], np.float32).reshape(S * S, 3)[at]
        lum_d = np.maximum(d @ LUMA, 1e-6)
        size = min(S, settings.working_size)
        sigma = max(1.0, settings.window_cm / texel_cm * size / S)
        regions = _region_images(fr, size, settings.core_weight, check)
        mc = model_colour.get(tile) if model_colour is not None else None
        weight = np.where(brows >= settings.brows[0], 0.0, vis)
        for _ in range(max(1, settings.passes)):
            check()
            ref = _reference(diffuse[tile], mc, fr, weight, regions, sigma, at)
            s = np.maximum(skin_maps.specular_evidence(d, ref, 1.0, towards), 0.0)
            share = s * lum_towards / lum_d
            highlight = _smoothstep(*settings.share, share)
            # at most the texel's brightening over its reference in every channel: a highlight lies on
            # top of the skin's own colour, so no channel of what is left is darker than that (teeth or
            # a lash seen on a lip texel, misfits that the split would otherwise hollow into dark spots)
            over = np.maximum(d - ref, 0.0) / towards
            excess = np.minimum(np.minimum(over[:, 0], over[:, 1]), over[:, 2])
            # and never more than max_share of it: the reference can be wrong too (the albedo model's
            # own features, a dark lid), and a texel emptied of most of its light is a hole, not skin
            cap = settings.max_share * lum_d / lum_towards
            take = np.minimum(np.minimum(s, excess), cap) * highlight * fade
            weight = weight.copy()
            weight[idx] *= 1.0 - highlight                  # the next reference away from the highlights
        cleaned = np.maximum(d - take[:, None] * towards, 0.0)
        img = np.array(out[tile], dtype=np.float32, copy=True).reshape(S * S, 3)
        img[at] = cleaned
        out[tile] = img.reshape(S, S, 3)
        removed_sum += float(np.sum(vis[idx] * take * lum_towards))
        seen_sum += float(np.sum(vis[idx] * lum_d))
        count += int(np.count_nonzero(take > 1e-6))
    info = {"texels": count, "removed_luminance": round(removed_sum / max(seen_sum, 1e-9), 5),
            "light_colour": [round(float(x), 4) for x in light_colour]}
    return out, info

"""What the generator is conditioned on, from the texture stage's direct view (texture.Recipe.prepare).

Layout: both UDIM tiles side by side, tile 1001 (face) on the left and 1002 (head, neck, ears) on the
right, RES x RES texels each (a (C, RES, 2 RES) image). Colours are sRGB-encoded and scaled to [-1, 1]
(x = 2 srgb - 1): the model's error is then roughly perceptual.

Spatial condition (SPATIAL_CHANNELS, at RES): the direct view's de-lit colour and its confidence, the same
for the mirror image of every texel (the UV layout's mirror map, as the texture stage's step 4 uses it),
the fitted albedo model's image (the prior the "delit" strategy fills with), the layout's coverage, and
the texel's place (u, v in [-1, 1]).

Frequency condition (3 channels, at RES): the direct view at 2 RES through one level of the Haar wavelet
transform, its three directional high-frequency sub-bands (LH, HL, HH) summed per colour channel, where
the whole 2x2 block was seen (the seed paper's frequency condition: where the photo holds skin detail).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cache import BoundedCache
from ..colour import linear_to_srgb

TILES = (1001, 1002)
RES = 64                  # texels per tile side of the generator
COND_RES = 2 * RES        # the direct view is pooled to this before the wavelet transform
SPATIAL_CHANNELS = 14
FREQ_CHANNELS = 3
FREQ_GAIN = 4.0           # the high-frequency bands are small: scaled up to order 1
SEEN = (0.05, 0.5)        # direct confidence: below, a texel's colour is not given to the model


@dataclass
class MirrorMap:
    """The UV layout's mirror map at one resolution as bilinear taps on the (T * R * R) flat layout:
    value[dst] = sum_k w[k] * value[src[k]] (texels without a mirror keep their own value)."""
    res: int
    dst: torch.Tensor        # (M,) long
    src: torch.Tensor        # (4, M) long
    w: torch.Tensor          # (4, M) float
    coverage: torch.Tensor   # (T, R, R) float 0/1: texels inside the layout

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        """(..., T, C, R, R) -> the same with every texel replaced by its mirror image's value."""
        shape = img.shape
        flat = img.movedim(-3, -4).reshape(*shape[:-4], shape[-3], -1)        # (..., C, T*R*R)
        out = flat.clone()
        taps = flat[..., self.src.reshape(-1)].reshape(*flat.shape[:-1], 4, -1)
        out[..., self.dst] = (taps * self.w.to(img.dtype)).sum(-2)
        return out.reshape(*shape[:-4], shape[-3], shape[-4], *shape[-2:]).movedim(-4, -3)


_MIRRORS = BoundedCache(64 << 20)


def mirror_map(model, res: int) -> MirrorMap:
    return _MIRRORS.get((model.hash, res), lambda: _mirror_map(model, res))


def preload_mirror_map(model_hash: str, res: int, dst, src, w, coverage) -> None:
    """A mirror map read from the weights file (weights.load_generator): the same arrays `_mirror_map`
    computes for that face model, without the UV layout's rasterization."""
    _MIRRORS.get((model_hash, res), lambda: MirrorMap(res, dst, src, w, coverage))


def _mirror_map(model, res: int) -> MirrorMap:
    from ..texture import _uv_layout
    layouts, _ = _uv_layout(model, res, "cpu")
    dst, src, wts = [], [], []
    cov = torch.zeros(len(TILES), res * res)
    for ti, lay in enumerate(layouts):
        cov[ti, lay.texel] = 1.0
        for mt, (sel, grid) in lay.mirror.items():
            mi = TILES.index(mt)
            x = (grid[:, 0] + 1.0) * 0.5 * res - 0.5
            y = (grid[:, 1] + 1.0) * 0.5 * res - 0.5
            x0, y0 = torch.floor(x), torch.floor(y)
            ax, ay = x - x0, y - y0
            s, w = [], []
            for dy, wy in ((0, 1 - ay), (1, ay)):
                for dx, wx in ((0, 1 - ax), (1, ax)):
                    xi = (x0.long() + dx).clamp(0, res - 1)
                    yi = (y0.long() + dy).clamp(0, res - 1)
                    s.append(mi * res * res + yi * res + xi)
                    w.append(wx * wy)
            dst.append(ti * res * res + lay.texel[sel])
            src.append(torch.stack(s))
            wts.append(torch.stack(w))
    return MirrorMap(res, torch.cat(dst), torch.cat(src, 1), torch.cat(wts, 1).float(), cov.view(len(TILES), res, res))


def pool_first(first: dict[int, torch.Tensor], size: int = COND_RES) -> torch.Tensor:
    """The texture stage's direct view {tile: (4, S, S)} (premultiplied linear colour, weight) area-pooled
    to (T, 4, size, size), still premultiplied (S a multiple of size)."""
    out = []
    for t in TILES:
        img = first[t].float().cpu()
        f = img.shape[-1] // size
        out.append(F.avg_pool2d(img[None], f)[0] if f > 1 else img)
    return torch.stack(out)


def _colour(pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 4, R, R) premultiplied -> sRGB [-1, 1] colour (..., 3, R, R) (0 where unseen) and weight (..., R, R)."""
    w = pre[..., 3, :, :]
    lin = pre[..., :3, :, :] / w.clamp_min(1e-4)[..., None, :, :]
    col = linear_to_srgb(lin.clamp(0.0, 1.0)) * 2.0 - 1.0
    return torch.where(w[..., None, :, :] > 1e-4, col, torch.zeros_like(col)), w


def to_layout(tiles: torch.Tensor) -> torch.Tensor:
    """(..., T, C, R, R) -> (..., C, R, T * R): the tiles side by side."""
    return torch.cat(tiles.unbind(-4), dim=-1)


def from_layout(img: torch.Tensor) -> torch.Tensor:
    """(..., C, R, T * R) -> (..., T, C, R, R)."""
    return torch.stack(img.chunk(len(TILES), dim=-1), dim=-4)


def haar_high(x: torch.Tensor) -> torch.Tensor:
    """(..., C, 2R, 2W) -> (..., C, R, W): LH + HL + HH of one level of the orthonormal Haar transform."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    lh, hl, hh = (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2
    return lh + hl + hh


def make_conditions(first128: torch.Tensor, prior: torch.Tensor, model, mirror: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial (B, SPATIAL_CHANNELS, RES, 2 RES) and frequency (B, 3, RES, 2 RES) conditions from the direct
    view pooled to COND_RES, (B, T, 4, 2R, 2R) premultiplied linear, and the albedo prior (B, T, 3, R, R)
    linear (albedo model image at RES). `mirror`: the whole sample seen through the UV mirror map first
    (training augmentation)."""
    first128 = first128.float()
    prior = prior.float()
    m128, m64 = mirror_map(model, COND_RES), mirror_map(model, RES)
    if mirror:
        first128, prior = m128.apply(first128), m64.apply(prior)
    pre64 = F.avg_pool2d(first128.flatten(0, 1), 2).view(*first128.shape[:3], RES, RES)
    col, w = _colour(pre64)
    seen = ((w - SEEN[0]) / (SEEN[1] - SEEN[0])).clamp(0, 1)
    mpre = m64.apply(pre64)
    mcol, mw = _colour(mpre)
    mseen = ((mw - SEEN[0]) / (SEEN[1] - SEEN[0])).clamp(0, 1)
    pri = linear_to_srgb(prior.clamp(0, 1)) * 2.0 - 1.0
    B = first128.shape[0]
    cov = m64.coverage.to(first128)[None].expand(B, -1, -1, -1)
    ys = torch.linspace(-1, 1, RES)
    xs = torch.linspace(-1, 1, len(TILES) * RES)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1])[None].expand(B, -1, -1, -1)
    spatial = torch.cat([to_layout(col * seen[:, :, None]), to_layout(w[:, :, None]),
                         to_layout(mcol * mseen[:, :, None]), to_layout(mw[:, :, None]),
                         to_layout(pri), to_layout(cov[:, :, None]), grid], dim=1)
    # Frequency: the direct view at 2 RES, sRGB; bands only where the whole 2x2 block was seen.
    c128, w128 = _colour(first128)
    s128 = ((w128 - SEEN[0]) / (SEEN[1] - SEEN[0])).clamp(0, 1)
    block = -F.max_pool2d(-s128.flatten(0, 1)[:, None], 2)[:, 0].view(B, len(TILES), RES, RES)
    hf = haar_high(c128) * block[:, :, None] * FREQ_GAIN
    return spatial, to_layout(hf)

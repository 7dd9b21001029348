"""dlib's 150x150 face chip, differentiably in torch, from MediaPipe's 478 points.

dlib's face descriptor was trained on chips cut by `get_face_chip(img, shape, 150, 0.25)`: a
similarity transform that puts five points of its 5-point shape predictor (both corners of both
eyes and the bottom of the nose) on a fixed template, then bilinear sampling from an image pyramid
(pyramid_down<2>: a [1 4 6 4 1] filter and every other pixel) so that a large face is not
aliased. This module does the same, with torch ops only, so gradients reach the image (grid_sample)
and the points (a closed-form least-squares similarity):

- `chip_transform(points, template)`: chip px -> image px, as dlib's chip_details and
  extract_image_chips build it (their extraction rectangle is 1 px narrower than 150 x scale and
  centred on the transform of (75, 75), so this is not quite the fitted similarity);
- `sample_chip(image, transform)`: dlib's pyramid level choice, the pyramid, grid_sample;
- `align_chip(image, points)`: the above with MediaPipe's points on MEDIAPIPE_TEMPLATE.

MEDIAPIPE_TEMPLATE is where MediaPipe's eye corners and subnasale fall, on average, in dlib's own
chips of the 86 London neutral photos (scripts/fit_chip_template.py): MediaPipe places eye corners
a little differently from dlib's predictor, so dlib's template for its own points would frame the
face slightly differently.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# dlib's template for its 5-point predictor (get_face_chip_details, dlib 19.x+), in face units
# (0..1 before padding), in the predictor's order: image-right eye outer and inner corner,
# image-left eye outer and inner corner, bottom of the nose.
DLIB_5POINT_TEMPLATE = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)

# The MediaPipe points that mean the same as dlib's five (iBUG 45, 42, 36, 39, 33; see
# landmarks.IBUG68_FROM_MEDIAPIPE), and where they fall in dlib's chips (face units, as above).
# The subnasale (94) gave chips closer to dlib's than the nose tip (2); more points (all of the
# eyes and nose, or all inner iBUG points) were worse: they move with expression and with
# MediaPipe's own placement, and dlib's five do not. Fitted on the London neutral photos; on the
# smiling ones (not used) descriptors are 0.055 from dlib's pipeline on average (0.089 with dlib's
# template), max 0.12.
MEDIAPIPE_CHIP_POINTS = (263, 362, 33, 133, 94)
MEDIAPIPE_TEMPLATE = (
    (0.8743253628, 0.2175437488),
    (0.6355570896, 0.2339654111),
    (0.1130368951, 0.2197184025),
    (0.3512865405, 0.2334518955),
    (0.4938538453, 0.5876206693),
)

# pyramid_down<2>: separable [1 4 6 4 1] / 16, output pixel i from input pixels 2i .. 2i+4.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
# dlib maps a point to the next level down by p / 2 - (1.25, 0.75) (x, y). Its filter actually
# centres level pixel i on input pixel 2i + 2 (p / 2 - 1); the chips the network was trained on
# carry dlib's mapping, so it is kept.
_POINT_DOWN_SHIFT = (1.25, 0.75)


def template_pixels(template, size: int = CHIP_SIZE, padding: float = CHIP_PADDING,
                    dtype=torch.float32, device=None) -> torch.Tensor:
    """(N, 2) chip pixel positions of a template given in face units (dlib's padding rule)."""
    t = torch.as_tensor(template, dtype=dtype, device=device)
    return (padding + t) / (2 * padding + 1) * size


def fit_similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares similarity dst ~ A @ src + t (rotation and uniform scale, no reflection),
    for (..., N, 2) point sets: as complex numbers, dst = c * src + t with c = a + ib. Closed form
    and differentiable. Returns A (..., 2, 2) and t (..., 2)."""
    ms, md = src.mean(-2, keepdim=True), dst.mean(-2, keepdim=True)
    s, d = src - ms, dst - md
    norm = (s * s).sum((-1, -2))
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(-1) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1) / norm
    A = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
    t = md[..., 0, :] - (A @ ms[..., 0, :, None])[..., 0]
    return A, t


def chip_transform(points: torch.Tensor, template, size: int = CHIP_SIZE,
                   padding: float = CHIP_PADDING) -> tuple[torch.Tensor, torch.Tensor]:
    """Chip px -> image px as dlib extracts chips: q = A @ chip_px + t, (..., 2, 2) and (..., 2).

    dlib fits the similarity S from template to points, then keeps only its angle, its scale s
    and the image point S(size/2, size/2) as the centre of an extraction rectangle size*s wide,
    whose corner pixel centres are (size*s - 1)/2 from the centre; chip pixels 0 and size-1 land
    on them. So a chip pixel moves (size*s - 1)/(size - 1) image px, about the centre (size-1)/2."""
    dst = points.to(torch.float64)
    src = template_pixels(template, size, padding, torch.float64, points.device)
    A, t = fit_similarity(src.expand_as(dst), dst)
    scale = torch.sqrt(A[..., 0, 0] ** 2 + A[..., 1, 0] ** 2)
    centre = (A @ torch.full((2, 1), size / 2.0, dtype=A.dtype, device=A.device))[..., 0] + t
    step = (size * scale - 1.0) / (size - 1.0)
    A_chip = A * (step / scale)[..., None, None]
    t_chip = centre - (A_chip @ torch.full((2, 1), (size - 1) / 2.0, dtype=A.dtype, device=A.device))[..., 0]
    return A_chip.to(points.dtype), t_chip.to(points.dtype)


def pyramid_levels(width: float, size: int = CHIP_SIZE) -> int:
    """How many times dlib halves the image before sampling a size x size chip from an
    extraction rectangle `width` image px wide (dlib counts both end pixels): while the
    rectangle one level down still has more pixels than the chip (rect_down: w -> (w - 1)/2 + 1)."""
    downs = 0
    while ((width - 1) / 2 + 1) ** 2 > size * size:
        width = (width - 1) / 2 + 1
        downs += 1
    return downs


def pyramid_down(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, (H-3)//2, (W-3)//2): dlib's pyramid_down<2> (valid 5x5 binomial,
    stride 2)."""
    c = image.shape[1]
    k = _BINOMIAL.to(image)
    kernel = (k[:, None] * k[None, :]).expand(c, 1, 5, 5)
    return F.conv2d(image, kernel, stride=2, groups=c)


def _floor_straight_through(x: torch.Tensor) -> torch.Tensor:
    """floor(x) in the forward pass (dlib's integer pixels), the identity for gradients."""
    return x + (torch.floor(x) - x).detach()


def sample_chip(image: torch.Tensor, A: torch.Tensor, t: torch.Tensor, size: int = CHIP_SIZE,
                dlib_rounding: bool = True) -> torch.Tensor:
    """The (C, size, size) chip of `image` ((C, H, W) float) for chip px -> image px
    q = A @ p + t, sampled like dlib's extract_image_chip: crop around the chip, halve the crop
    `pyramid_levels` times, then bilinear interpolation (pixels outside the image are 0).
    `dlib_rounding` truncates every level and the chip to integers, as dlib's uint8 images do
    (straight-through: gradients are those of the unrounded values); with it, chips from dlib's
    own 5 points equal dlib's to a few 1e-3 grey levels on average. Without it the chip is
    smooth but ~1 grey level brighter (0.005 in descriptor distance)."""
    _, h, w = image.shape
    step = float(torch.sqrt(A[0, 0] ** 2 + A[1, 0] ** 2).detach())   # image px per chip px
    downs = pyramid_levels(step * (size - 1) + 1.0, size)

    # Crop: the chip's corners, grown by dlib's border (2 px, doubled + 2 per level) so the
    # filter sees real pixels at the edge, rounded as dlib does (the crop origin sets which
    # pixels the pyramid filters are centred on).
    corners = torch.tensor([[0.0, 0.0], [size - 1.0, 0.0], [0.0, size - 1.0], [size - 1.0, size - 1.0]],
                           dtype=A.dtype, device=A.device)
    q = (corners @ A.detach().T + t.detach())
    grow = 2.0
    for _ in range(downs):
        grow = grow * 2 + 2
    x0 = max(0, round(float(q[:, 0].min()) - grow))
    y0 = max(0, round(float(q[:, 1].min()) - grow))
    x1 = min(w, round(float(q[:, 0].max()) + grow) + 1)
    y1 = min(h, round(float(q[:, 1].max()) + grow) + 1)
    if x1 <= x0 or y1 <= y0:
        return image.new_zeros((image.shape[0], size, size))
    level = image[None, :, y0:y1, x0:x1]
    built = 0
    while built < downs and min(level.shape[-2:]) > 8:   # dlib's pyramid stops below 9 px too
        level = pyramid_down(level)
        if dlib_rounding:
            level = _floor_straight_through(level)
        built += 1

    # Chip pixel grid -> crop coordinates -> dlib's point_down per level -> grid_sample's [-1, 1].
    ys, xs = torch.meshgrid(torch.arange(size, dtype=A.dtype, device=A.device),
                            torch.arange(size, dtype=A.dtype, device=A.device), indexing="ij")
    p = torch.stack([xs, ys], -1).reshape(-1, 2)
    q = p @ A.T + t - torch.tensor([x0, y0], dtype=A.dtype, device=A.device)
    shift = torch.tensor(_POINT_DOWN_SHIFT, dtype=A.dtype, device=A.device)
    for _ in range(built):
        q = q / 2.0 - shift
    lh, lw = level.shape[-2:]
    grid = torch.stack([2.0 * q[:, 0] / max(lw - 1, 1) - 1.0, 2.0 * q[:, 1] / max(lh - 1, 1) - 1.0], -1)
    chip = F.grid_sample(level, grid.reshape(1, size, size, 2).to(level.dtype), mode="bilinear",
                         padding_mode="zeros", align_corners=True)[0]
    if dlib_rounding:
        chip = _floor_straight_through(chip)
    return chip


def align_chip(image: torch.Tensor, points: torch.Tensor, template=None, indices=MEDIAPIPE_CHIP_POINTS,
               size: int = CHIP_SIZE, padding: float = CHIP_PADDING, dlib_rounding: bool = True) -> torch.Tensor:
    """(3, size, size) dlib-style chip of `image` ((3, H, W) float RGB 0..255) from landmark
    `points` ((N, 2) image px; MediaPipe's 478 by default, of which `indices` are used) placed on
    `template` (face units; MEDIAPIPE_TEMPLATE by default). Differentiable in image and points."""
    template = MEDIAPIPE_TEMPLATE if template is None else template
    chosen = points if indices is None else points[list(indices)]
    A, t = chip_transform(chosen, template, size, padding)
    return sample_chip(image, A, t, size, dlib_rounding)


def align_chips(images: torch.Tensor, points: torch.Tensor, **kw) -> torch.Tensor:
    """(B, 3, size, size) from (B, 3, H, W) images and (B, N, 2) points (one pyramid per image:
    faces of different sizes need different depths)."""
    return torch.stack([align_chip(img, pts, **kw) for img, pts in zip(images, points)])

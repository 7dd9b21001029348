"""Z-buffer triangle rasterizer in vectorised torch (CPU or CUDA: wherever the inputs are).

Conventions (the same as `camera.project`):
- `screen[:, 0:2]` are pixel coordinates: x to the right, y down, origin at the top-left *corner*
  of the image, so pixel (row j, column i) covers [i, i+1) x [j, j+1) and its centre is
  (i + 0.5, j + 0.5). `camera.project(...)` output can be passed straight in.
- `screen[:, 2]` is depth: smaller wins. With `perspective_correct=True` it must be the view depth
  (> 0, as `camera.project` returns it): barycentrics and depth are interpolated perspective-correctly
  (1/depth is affine in screen space). With `perspective_correct=False` everything is interpolated
  linearly in screen space (UV space, orthographic views); depth may then be anything finite, e.g. 0.
- Coverage is exact and watertight: vertices are snapped to 1/256 px, edge functions are evaluated in
  int64 and the top-left fill rule decides pixels whose centre lies on an edge, so a pixel on an edge
  shared by two triangles is drawn by exactly one of them.
- Front faces are counter-clockwise as seen by the camera (the OBJ / Blender convention), i.e. clockwise
  in pixel coordinates with y down. `cull_backfaces=True` drops the others.
- Triangles with a vertex behind the camera (depth <= 0 in perspective mode), far outside the image
  (|x|, |y| > 2^22 px) or with zero area are skipped (no near-plane clipping).
- The depth test packs (depth as sortable float32 bits) << 31 | triangle into one int64 and keeps the
  minimum with `scatter_reduce(amin)`: depth and triangle come out together, ties go to the lower
  triangle index, and the result is deterministic on every device.

UV space: pass the per-corner UVs as `screen` (u * size, (1 - v) * size, 0) with the triangle corner
indices and `perspective_correct=False`: every texel gets the triangle under its centre and the
barycentrics there (see `uv_screen`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

SUBPIXEL_BITS = 8
_ONE = 1 << SUBPIXEL_BITS
_HALF = _ONE // 2
_COORD_LIMIT = float(1 << 22)  # px: keeps every int64 edge-function product below 2^61
_ID_BITS = 31
_ID_MASK = (1 << _ID_BITS) - 1
_EMPTY = torch.iinfo(torch.int64).max
DEFAULT_CHUNK = 1 << 21  # pixels per chunk of spans (about 100 MB of temporaries)


@dataclass
class Raster:
    triangle: torch.Tensor   # (H, W) long, index of the visible triangle, -1 where empty
    bary: torch.Tensor       # (H, W, 3) float32, perspective-correct barycentrics of that triangle (0 where empty)
    depth: torch.Tensor      # (H, W) float32 depth (inf where empty)
    triangles: torch.Tensor  # (T, 3) long, the index triangles that were drawn (for render.fragments)

    @property
    def mask(self) -> torch.Tensor:
        return self.triangle >= 0

    @property
    def height(self) -> int:
        return self.triangle.shape[0]

    @property
    def width(self) -> int:
        return self.triangle.shape[1]


def _sortable_bits(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 in [0, 2^32) with the same order (for finite values)."""
    bits = x.float().contiguous().view(torch.int32).long()
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse their order
    return bits + (1 << 31)


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def rasterize(screen: torch.Tensor, triangles: torch.Tensor, height: int, width: int,
              perspective_correct: bool = True, cull_backfaces: bool = False,
              chunk: int = DEFAULT_CHUNK, cancel_check: Callable[[], None] | None = None) -> Raster:
    """Draw triangles (T, 3) indexing rows of `screen` (V, 3) = (x px, y px, depth) into an H x W buffer.
    `cancel_check()`, if given, is called between chunks and steps (it raises to stop): a 2048-px
    layout spends seconds in the set-up and the resolve as well as in the drawing."""
    check = cancel_check or (lambda: None)
    device = screen.device
    screen = screen.detach().float()
    triangles = triangles.to(device=device, dtype=torch.long)
    H, W = int(height), int(width)

    tri_key = torch.full((H * W,), _EMPTY, dtype=torch.int64, device=device)
    corners = screen[triangles]                                        # (T, 3, 3)
    xy, z = corners[..., :2], corners[..., 2]
    ok = torch.isfinite(corners).all(dim=(1, 2)) & (xy.abs() < _COORD_LIMIT).all(dim=(1, 2))
    if perspective_correct:
        ok &= (z > 0).all(dim=1)
    fixed = torch.round(torch.where(ok[:, None, None], xy, 0.0) * _ONE).long()  # (T, 3, 2) 1/256 px
    X, Y = fixed[..., 0], fixed[..., 1]
    area = (X[:, 1] - X[:, 0]) * (Y[:, 2] - Y[:, 0]) - (Y[:, 1] - Y[:, 0]) * (X[:, 2] - X[:, 0])
    ok &= area != 0
    if cull_backfaces:
        ok &= area < 0  # counter-clockwise on screen (y down) has negative area here
    # Make every triangle positively oriented by swapping its corners 1 and 2; undone for barycentrics.
    swap = area < 0
    order = torch.where(swap[:, None], torch.tensor([0, 2, 1], device=device), torch.tensor([0, 1, 2], device=device))
    X, Y, z = X.gather(1, order), Y.gather(1, order), z.gather(1, order)
    area = area.abs()

    # Edge k is opposite corner k: e0 = v1->v2, e1 = v2->v0, e2 = v0->v1. E_k(p) >= 0 inside.
    ax, ay = X[:, [1, 2, 0]], Y[:, [1, 2, 0]]
    dx, dy = X[:, [2, 0, 1]] - ax, Y[:, [2, 0, 1]] - ay
    # E_k at pixel (i, j), centre (256 i + 128, 256 j + 128): E = ci * i + cj * j + c0.
    ci = -dy * _ONE
    cj = dx * _ONE
    c0 = dy * ax - dx * ay + (dx - dy) * _HALF
    # Top-left rule (y down, positive orientation): top edges (dy == 0, dx > 0) and left edges (dy < 0)
    # own the centres that lie exactly on them; other edges need E > 0, i.e. E - 1 >= 0.
    top_left = (dy < 0) | ((dy == 0) & (dx > 0))
    c0_test = c0 - (~top_left).long()

    # Pixel bounding boxes (pixel centres inside the triangle's box), clipped to the image.
    x0 = _ceil_div(X.min(1).values - _HALF, _ONE).clamp_min(0)
    x1 = torch.div(X.max(1).values - _HALF, _ONE, rounding_mode="floor").clamp_max(W - 1)
    y0 = _ceil_div(Y.min(1).values - _HALF, _ONE).clamp_min(0)
    y1 = torch.div(Y.max(1).values - _HALF, _ONE, rounding_mode="floor").clamp_max(H - 1)
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = torch.where(ok & (bw > 0), (y1 - y0 + 1).clamp_min(0), 0)

    live = torch.nonzero(bh > 0).squeeze(1)  # drawn triangles, in index order; keys hold `live` positions
    n_live = len(live)
    x0, y0, bw, bh = x0[live], y0[live], bw[live], bh[live]
    ci, cj, c0, c0_test = ci[live], cj[live], c0[live], c0_test[live]
    inv_area = 1.0 / area[live].double()
    if perspective_correct:
        zw = inv_area[:, None] / z[live].double()  # b_k / z_k = E_k * zw_k
    else:
        zw = inv_area[:, None] * z[live].double()  # b_k * z_k = E_k * zw_k

    # Scanline spans, one per triangle and box row: the exact run of pixel centres inside, from the
    # integer edge functions E_k(col) = A_k + ci_k * col >= 0 (fill-rule bias included in A_k).
    check()
    n_spans = int(bh.sum()) if n_live else 0
    st = torch.repeat_interleave(torch.arange(n_live, device=device), bh, output_size=n_spans)
    row = torch.arange(n_spans, device=device) - (torch.cumsum(bh, 0) - bh).index_select(0, st)
    y = y0.index_select(0, st) + row
    xs = x0.index_select(0, st)
    c = ci.index_select(0, st)
    a = c * xs[:, None] + cj.index_select(0, st) * y[:, None] + c0_test.index_select(0, st)
    q = torch.div(a, torch.where(c == 0, 1, c.abs()), rounding_mode="floor")  # floor(A / |ci|)
    first = torch.where(c > 0, -q, 0).amax(1).clamp_min(0)                    # c > 0: col >= ceil(-A / c)
    last = torch.minimum(torch.where(c < 0, q, W).amin(1), bw.index_select(0, st) - 1)  # c < 0: col <= floor(A / |c|)
    length = torch.where(((c == 0) & (a < 0)).any(1), 0, (last - first + 1).clamp_min(0))
    check()
    spans = torch.nonzero(length > 0).squeeze(1)
    st, length, first = st[spans], length[spans], first[spans]
    a, c = a[spans], c[spans]
    pix0 = y[spans] * W + xs[spans] + first
    # Interpolated 1/depth (perspective) or depth (linear) along the span: v(col) = v_first + dv * col.
    zw_s = zw.index_select(0, st)
    v_first = ((a + c * first[:, None]).double() * zw_s).sum(1)
    dv = (c.double() * zw_s).sum(1)
    if perspective_correct:  # larger 1/depth wins: key on -1/depth (no division per pixel)
        v_first, dv = -v_first, -dv
    v_first, dv = v_first.float(), dv.float()

    ends = torch.cumsum(length, 0)
    n_span = len(length)
    lo = 0
    while lo < n_span:
        # Take spans until the pixel budget is used up (at least one span per chunk).
        base = int(ends[lo - 1]) if lo else 0
        hi = max(int(torch.searchsorted(ends, base + chunk, right=True)), lo + 1)
        _draw_spans(tri_key, length[lo:hi], pix0[lo:hi], v_first[lo:hi], dv[lo:hi], st[lo:hi])
        lo = hi
        check()

    # Resolve: per covered pixel the winning triangle, its barycentrics and depth. Per triangle, the
    # (perspective-weighted) barycentrics are planes in the pixel offset from the box corner (x0, y0):
    # num_k = p0_k + pi_k * di + pj_k * dj, in the caller's corner order (the swap undone).
    pix = torch.nonzero(tri_key != _EMPTY).squeeze(1)
    local = tri_key.index_select(0, pix) & _ID_MASK
    unswap = torch.where(swap[live][:, None], torch.tensor([0, 2, 1], device=device),
                         torch.tensor([0, 1, 2], device=device))
    e_corner = ci * x0[:, None] + cj * y0[:, None] + c0                   # E_k at the box corner
    f = zw if perspective_correct else inv_area[:, None].expand(-1, 3)
    planes = [(t.double() * f).gather(1, unswap).float() for t in (e_corner, ci, cj)]
    check()
    di = (pix % W - x0.index_select(0, local)).float()[:, None]
    dj = (torch.div(pix, W, rounding_mode="floor") - y0.index_select(0, local)).float()[:, None]
    num = (planes[0].index_select(0, local) + planes[1].index_select(0, local) * di
           + planes[2].index_select(0, local) * dj).clamp_min(0.0)
    total_w = num.sum(1).clamp_min(1e-30)
    bary = num / total_w[:, None]
    check()
    if perspective_correct:
        depth = 1.0 / total_w
    else:
        dz = [(t.double() * zw).sum(1).float() for t in (e_corner, ci, cj)]  # linear depth plane
        depth = (dz[0].index_select(0, local) + dz[1].index_select(0, local) * di[:, 0]
                 + dz[2].index_select(0, local) * dj[:, 0])
    tri = live.index_select(0, local)
    check()

    triangle = torch.full((H * W,), -1, dtype=torch.long, device=device)
    triangle[pix] = tri
    bary_out = torch.zeros((H * W, 3), dtype=torch.float32, device=device)
    bary_out[pix] = bary
    depth_out = torch.full((H * W,), float("inf"), dtype=torch.float32, device=device)
    depth_out[pix] = depth
    return Raster(triangle.view(H, W), bary_out.view(H, W, 3), depth_out.view(H, W), triangles)


def _draw_spans(tri_key, length, pix0, v_first, dv, tid):
    """Depth-test every pixel of the given spans into tri_key (packed depth and triangle keys)."""
    device = tri_key.device
    n = int(length.sum())
    sid = torch.repeat_interleave(torch.arange(len(length), device=device), length, output_size=n)
    off = torch.arange(n, device=device) - (torch.cumsum(length, 0) - length).index_select(0, sid)
    val = v_first.index_select(0, sid) + dv.index_select(0, sid) * off
    key = (_sortable_bits(val) << _ID_BITS) | tid.index_select(0, sid)
    tri_key.scatter_reduce_(0, pix0.index_select(0, sid) + off, key, reduce="amin", include_self=True)


def uv_screen(corner_uvs: torch.Tensor, tile: int, size: int) -> torch.Tensor:
    """Per-corner UDIM UVs (C, 2) -> (C, 3) screen coordinates of a size x size image of `tile` (1001...).

    Row 0 of the image is the top of the tile (v = 1), as in image files and Blender.
    """
    u = (corner_uvs[:, 0] - (tile - 1001)) * size
    v = (1.0 - corner_uvs[:, 1]) * size
    return torch.stack([u, v, torch.zeros_like(u)], dim=1)


def benchmark(size: int = 1024, repeats: int = 3, device: str = "cpu") -> dict[str, float]:
    """Seconds (best of `repeats`) for the ICT head in a photo view and for UV tiles 1001 and 1002."""
    from . import camera
    from .facemodel import PART_NAMES, load_face_model

    model = load_face_model(device=device)
    topo = model.topology
    tris = torch.from_numpy(topo.triangles).to(device)
    k = camera.Intrinsics.for_image(size, size)
    # A head filling most of the frame, turned a little.
    rot = camera.axis_angle_to_matrix(torch.tensor([0.1, 0.35, 0.0]))
    dist = 1.25 * k.focal_px * 36.0 / size
    pts = camera.to_camera(model.neutral, rot.to(device), torch.tensor([0.0, -1.0, -dist], device=device))
    screen = camera.project(pts, k)
    uvs = torch.from_numpy(topo.corner_uvs).to(device)
    corners = torch.from_numpy(topo.triangle_corners).to(device)
    skin = torch.from_numpy(topo.polygon_part[topo.triangle_polygon] == PART_NAMES.index("skin")).to(device)
    tile_of = torch.from_numpy(topo.triangle_uvs[:, :, 0].min(1)).to(device).floor().long() + 1001

    def best(fn):
        times = []
        for _ in range(repeats):
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    out = {"photo_view": best(lambda: rasterize(screen, tris, size, size, cull_backfaces=True)),
           "photo_view_no_cull": best(lambda: rasterize(screen, tris, size, size))}
    for tile in (1001, 1002):
        sel = corners[skin & (tile_of == tile)]
        scr = uv_screen(uvs, tile, size)
        out[f"uv_{tile}"] = best(lambda: rasterize(scr, sel, size, size, perspective_correct=False))
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Time the rasterizer on the ICT head.")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    for name, sec in benchmark(a.size, a.repeats, a.device).items():
        print(f"{name:20s} {sec * 1000:8.1f} ms")

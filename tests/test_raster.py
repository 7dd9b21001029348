"""The z-buffer rasterizer: coverage, fill rule, depth order, barycentrics, UV space, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import camera
from backend.facemodel import PART_NAMES, load_face_model
from backend.raster import rasterize, uv_screen
from backend.render import fragments, interpolate as interpolate_fragments, to_image

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def interpolate(r, attributes):
    """Attributes interpolated at every pixel of raster r -> (H, W, C), 0 where empty."""
    frags = fragments(r)
    return to_image(frags, interpolate_fragments(frags, attributes))


def _brute_force(screen, tris, H, W, perspective):
    """Reference: every pixel centre against every triangle in float64 (strictly inside only)."""
    jj, ii = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    px, py = ii + 0.5, jj + 0.5
    best = torch.full((H, W), float("inf"), dtype=torch.float64)
    tri_id = torch.full((H, W), -1)
    bary = torch.zeros(H, W, 3, dtype=torch.float64)
    for t in range(len(tris)):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = screen[tris[t]].double().tolist()
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if area == 0:
            continue
        b0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) / area
        b1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) / area
        b2 = 1 - b0 - b1
        inside = (b0 > 1e-9) & (b1 > 1e-9) & (b2 > 1e-9)
        if perspective:
            d = 1 / (b0 / z0 + b1 / z1 + b2 / z2)
            b = torch.stack([b0 / z0, b1 / z1, b2 / z2], -1) * d[..., None]
        else:
            d = b0 * z0 + b1 * z1 + b2 * z2
            b = torch.stack([b0, b1, b2], -1)
        upd = inside & (d < best)
        best[upd], tri_id[upd], bary[upd] = d[upd], t, b[upd]
    return tri_id, bary, best


@pytest.mark.parametrize("perspective", [True, False])
def test_matches_brute_force_on_random_triangles(perspective):
    g = torch.Generator().manual_seed(1)
    H, W = 41, 57
    screen = torch.rand(80, 3, generator=g) * torch.tensor([W * 1.3, H * 1.3, 10.0]) - torch.tensor([W * 0.15, H * 0.15, -1.0])
    tris = torch.randint(0, 80, (60, 3), generator=g)
    r = rasterize(screen, tris, H, W, perspective_correct=perspective)
    ref_tri, ref_bary, ref_depth = _brute_force(screen, tris, H, W, perspective)
    agree = r.triangle == ref_tri
    assert agree.float().mean() > 0.998  # pixel centres within 1/256 px of an edge may differ
    both = agree & (ref_tri >= 0)
    # Vertices snap to 1/256 px: barycentrics move by about that over the triangle's size.
    assert (r.bary.double()[both] - ref_bary[both]).abs().max() < 0.01
    assert (r.depth.double()[both] - ref_depth[both]).abs().max() < 0.01
    assert torch.isinf(r.depth[r.triangle < 0]).all()
    assert (r.bary[r.triangle < 0] == 0).all()


def test_single_triangle_coverage_matches_area():
    H = W = 512
    screen = torch.tensor([[20.3, 30.7, 1.0], [480.9, 100.2, 1.0], [150.5, 470.1, 1.0]])
    r = rasterize(screen, torch.tensor([[0, 1, 2]]), H, W)
    (x0, y0, _), (x1, y1, _), (x2, y2, _) = screen.tolist()
    area = abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) / 2
    covered = int(r.mask.sum())
    perimeter = sum(np.hypot(*(screen[a, :2] - screen[b, :2]).tolist()) for a, b in ((0, 1), (1, 2), (2, 0)))
    # Pixel-centre sampling: the count differs from the area by a fraction of the perimeter at most.
    assert abs(covered - area) < 0.5 * perimeter
    assert abs(covered - area) / area < 0.005


def test_shared_edges_are_watertight_and_not_doubled():
    """A fan of triangles around a centre and a grid of split squares: every pixel drawn exactly once."""
    H = W = 64
    n = 13
    ang = torch.linspace(0, 2 * np.pi, n + 1)[:-1] + 0.3
    pts = torch.cat([torch.tensor([[32.0, 32.0]]), torch.stack([32 + 60 * ang.cos(), 32 + 60 * ang.sin()], 1)])
    screen = torch.cat([pts, torch.ones(n + 1, 1)], 1)
    tris = torch.tensor([[0, 1 + i, 1 + (i + 1) % n] for i in range(n)])
    counts = torch.zeros(H, W, dtype=torch.long)
    for t in range(n):  # each triangle alone: the union must cover each pixel exactly once
        counts += rasterize(screen, tris[t:t + 1], H, W).mask.long()
    assert counts.max() == 1
    assert counts.sum() == H * W  # the fan covers the whole image
    # Pixel-aligned squares split along a diagonal: exactly their area.
    grid = torch.tensor([[x, y, 1.0] for y in (0.0, 16.0, 48.0) for x in (0.0, 16.0, 48.0)])
    quads = [(0, 1, 4, 3), (1, 2, 5, 4), (3, 4, 7, 6), (4, 5, 8, 7)]
    tris = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    counts = torch.zeros(H, W, dtype=torch.long)
    for t in range(len(tris)):
        counts += rasterize(grid, tris[t:t + 1], H, W).mask.long()
    assert counts.max() == 1 and counts.sum() == 48 * 48


def test_depth_order_of_overlapping_triangles():
    H = W = 32
    near = [[2.0, 2.0, 5.0], [30.0, 4.0, 5.0], [4.0, 30.0, 5.0]]
    far = [[1.0, 1.0, 9.0], [31.0, 1.0, 9.0], [16.0, 31.0, 9.0]]
    for first, second, near_id in ((near, far, 0), (far, near, 1)):
        screen = torch.tensor(first + second)
        tris = torch.tensor([[0, 1, 2], [3, 4, 5]])
        for perspective in (True, False):
            r = rasterize(screen, tris, H, W, perspective_correct=perspective)
            m0 = rasterize(screen, tris[:1], H, W).mask
            m1 = rasterize(screen, tris[1:], H, W).mask
            both = m0 & m1
            assert both.sum() > 100
            assert (r.triangle[both] == near_id).all()
            assert torch.allclose(r.depth[both], torch.tensor(5.0))


def test_backface_culling_follows_the_camera_convention():
    """A triangle counter-clockwise as the camera sees it (the OBJ front face) is kept."""
    k = camera.Intrinsics.for_image(64, 64)
    # In camera space (+Y up, looking down -Z) these corners run counter-clockwise seen from the camera.
    tri_cam = torch.tensor([[-1.0, -1.0, -10.0], [1.0, -1.0, -10.0], [0.0, 1.0, -10.0]])
    screen = camera.project(tri_cam, k)
    front = rasterize(screen, torch.tensor([[0, 1, 2]]), 64, 64, cull_backfaces=True)
    back = rasterize(screen, torch.tensor([[0, 2, 1]]), 64, 64, cull_backfaces=True)
    assert front.mask.sum() > 50 and back.mask.sum() == 0
    # The ICT head seen from the front: culling hides nothing that is visible without it.
    model = load_face_model()
    k = camera.Intrinsics.for_image(256, 256)
    pts = camera.to_camera(model.neutral, torch.eye(3), torch.tensor([0.0, -2.0, -140.0]))
    tris = torch.from_numpy(model.topology.triangles)
    r0 = rasterize(camera.project(pts, k), tris, 256, 256)
    r1 = rasterize(camera.project(pts, k), tris, 256, 256, cull_backfaces=True)
    assert r1.mask.sum() == r0.mask.sum()
    assert (r0.triangle == r1.triangle).float()[r0.mask].mean() > 0.98


def test_perspective_correct_interpolation_recovers_3d_points():
    """Interpolating camera-space positions and projecting them lands on the pixel centres."""
    k = camera.Intrinsics.for_image(128, 96)
    quad = torch.tensor([[-8.0, -6.0, -20.0], [8.0, -6.0, -45.0], [8.0, 6.0, -45.0], [-8.0, 6.0, -20.0]])
    screen = camera.project(quad, k)
    r = rasterize(screen, torch.tensor([[0, 1, 2], [0, 2, 3]]), k.height, k.width)
    pts = interpolate(r, quad)
    uv = camera.project(pts[r.mask], k)[:, :2]
    jj, ii = torch.nonzero(r.mask, as_tuple=True)
    centres = torch.stack([ii + 0.5, jj + 0.5], 1)
    assert r.mask.sum() > 2000
    assert (uv - centres).abs().max() < 0.02
    assert torch.allclose(r.depth[r.mask], -pts[r.mask][:, 2], rtol=1e-4)
    # Per-corner attributes give the same as per-vertex ones.
    per_corner = quad[torch.tensor([[0, 1, 2], [0, 2, 3]])]
    assert torch.allclose(interpolate(r, per_corner), pts, atol=1e-5)


def _tile_triangles(model, tile):
    topo = model.topology
    part = topo.polygon_part[topo.triangle_polygon]
    tri_tile = np.floor(topo.triangle_uvs[:, :, 0].min(1)).astype(int) + 1001
    return np.flatnonzero((part == PART_NAMES.index("skin")) & (tri_tile == tile))


@pytest.mark.parametrize("tile", [1001, 1002])
def test_uv_rasterization_covers_the_uv_area(tile):
    model = load_face_model()
    topo = model.topology
    S = 512
    ids = _tile_triangles(model, tile)
    uv = topo.triangle_uvs[ids].astype(np.float64)
    area = 0.5 * np.abs((uv[:, 1, 0] - uv[:, 0, 0]) * (uv[:, 2, 1] - uv[:, 0, 1])
                        - (uv[:, 2, 0] - uv[:, 0, 0]) * (uv[:, 1, 1] - uv[:, 0, 1])).sum()
    screen = uv_screen(torch.from_numpy(topo.corner_uvs), tile, S)
    r = rasterize(screen, torch.from_numpy(topo.triangle_corners[ids]), S, S, perspective_correct=False)
    covered = int(r.mask.sum())
    assert abs(covered - area * S * S) / (area * S * S) < 0.01
    # Interpolated UVs land on the texel centres (row 0 = top of the tile = v 1).
    uvs = interpolate(r, torch.from_numpy(topo.triangle_uvs[ids]))
    jj, ii = torch.nonzero(r.mask, as_tuple=True)
    assert torch.allclose(uvs[r.mask][:, 0] - (tile - 1001), (ii + 0.5) / S, atol=1e-4)
    assert torch.allclose(uvs[r.mask][:, 1], 1 - (jj + 0.5) / S, atol=1e-4)
    assert (r.depth[r.mask] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_and_independent_of_chunking(device):
    model = load_face_model()
    k = camera.Intrinsics.for_image(400, 300)
    rot = camera.axis_angle_to_matrix(torch.tensor([0.1, 0.6, 0.05]))
    screen = camera.project(camera.to_camera(model.neutral, rot, torch.tensor([0.0, 0.0, -90.0])), k).to(device)
    tris = torch.from_numpy(model.topology.triangles).to(device)
    a = rasterize(screen, tris, k.height, k.width, cull_backfaces=True)
    b = rasterize(screen, tris, k.height, k.width, cull_backfaces=True)
    c = rasterize(screen, tris, k.height, k.width, cull_backfaces=True, chunk=5000)
    for other in (b, c):
        assert torch.equal(a.triangle, other.triangle)
        assert torch.equal(a.bary, other.bary)
        assert torch.equal(a.depth, other.depth)
    assert a.triangle.device.type == torch.device(device).type


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model = load_face_model()
    k = camera.Intrinsics.for_image(300, 300)
    screen = camera.project(camera.to_camera(model.neutral, torch.eye(3), torch.tensor([0.0, 0.0, -80.0])), k)
    tris = torch.from_numpy(model.topology.triangles)
    a = rasterize(screen, tris, 300, 300)
    b = rasterize(screen.cuda(), tris.cuda(), 300, 300)
    assert (a.triangle == b.triangle.cpu()).float().mean() > 0.999
    same = a.triangle == b.triangle.cpu()
    assert (a.bary[same] - b.bary.cpu()[same]).abs().max() < 1e-4


def test_skips_triangles_behind_the_camera_and_empty_input():
    screen = torch.tensor([[1.0, 1.0, -1.0], [30.0, 1.0, 2.0], [1.0, 30.0, 2.0]])
    assert rasterize(screen, torch.tensor([[0, 1, 2]]), 32, 32).mask.sum() == 0
    r = rasterize(screen, torch.zeros((0, 3), dtype=torch.long), 8, 8)
    assert r.triangle.shape == (8, 8) and (r.triangle == -1).all()

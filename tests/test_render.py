"""The render module: gradients against finite differences, the SH basis, interpolation on the real head."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend import render
from backend.camera import Intrinsics, axis_angle_to_matrix
from backend.facemodel import PART_NAMES, load_face_model


def _random_triangles(seed: int, n: int = 6, size: int = 48):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 1, 2, generator=g, dtype=torch.float64) * size
    xy = centres + (torch.rand(n, 3, 2, generator=g, dtype=torch.float64) - 0.5) * size * 0.6
    depth = 10.0 + 5.0 * torch.rand(n, 3, 1, generator=g, dtype=torch.float64)
    screen = torch.cat([xy, depth], -1).reshape(-1, 3)
    tris = torch.arange(3 * n).reshape(n, 3)
    return screen, tris, size


@pytest.mark.parametrize("perspective", [True, False])
def test_barycentrics_match_the_rasterizer_and_sum_to_one(perspective):
    screen, tris, size = _random_triangles(0)
    r = render.rasterize(screen, tris, size, size, perspective_correct=perspective)
    ours = render.fragments(r, screen, perspective)
    theirs = render.fragments(r)
    assert len(ours.pixel) > 200
    # The rasterizer's come from vertices snapped to 1/256 px: on triangles ~10 px wide, ~4e-4 apart.
    assert torch.allclose(ours.bary.float(), theirs.bary, atol=2e-3)
    assert torch.allclose(ours.bary.sum(1), torch.ones(len(ours.pixel), dtype=torch.float64))


@pytest.mark.parametrize("perspective", [True, False])
def test_interpolation_gradients_match_finite_differences(perspective):
    """d(weighted sum of interpolated attributes) / d(screen positions, attributes), fixed triangle ids."""
    screen, tris, size = _random_triangles(1)
    r = render.rasterize(screen, tris, size, size, perspective_correct=perspective)
    attrs = torch.rand(len(screen), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = torch.rand(int(r.mask.sum()), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def f(scr, att):
        frags = render.fragments(r, scr, perspective)
        return (render.interpolate(frags, att) * weights).sum()

    assert torch.autograd.gradcheck(f, (screen.clone().requires_grad_(True), attrs.clone().requires_grad_(True)),
                                    eps=1e-6, atol=1e-5)


def test_vertex_normals_are_the_area_weighted_face_normals_of_the_head():
    """On the ICT head: each vertex normal is the normalised sum of its faces' cross products (computed
    here in float64 numpy), and almost every corner's face points within 90 degrees of its vertex's normal
    (folds such as the lids and lips make the rest)."""
    model = load_face_model()
    verts = model.vertices()
    tris = torch.as_tensor(model.topology.triangles)
    normals = render.vertex_normals(verts, tris)

    v, t = verts.double().numpy(), tris.numpy()
    cross = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])          # (T, 3), 2 x area x normal
    summed = np.zeros_like(v)
    np.add.at(summed, t.reshape(-1), np.repeat(cross, 3, axis=0))
    used = np.linalg.norm(summed, axis=1) > 0
    want = summed[used] / np.linalg.norm(summed[used], axis=1, keepdims=True)
    assert np.abs(normals.numpy()[used] - want).max() < 1e-4

    face = cross / np.linalg.norm(cross, axis=1, keepdims=True).clip(1e-12)
    agree = (normals.numpy()[t] * face[:, None]).sum(-1) > 0                   # (T, 3)
    assert agree.mean() > 0.99


def test_vertex_normals_and_sh_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(4)
    verts = torch.rand(8, 3, dtype=torch.float64, generator=g)
    tris = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7], [1, 5, 2]])
    sh = torch.randn(9, 3, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda v: render.vertex_normals(v, tris)[:7], (verts.requires_grad_(True),))
    n = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64, generator=g), dim=1)
    assert torch.autograd.gradcheck(render.sh_shading, (n.requires_grad_(True), sh.requires_grad_(True)))


def test_sh_basis_is_orthonormal_on_the_sphere():
    """The documented constants: the 9 functions are orthonormal (Gauss-Legendre x uniform phi quadrature)."""
    z, wz = np.polynomial.legendre.leggauss(24)
    phi = (np.arange(48) + 0.5) * 2 * math.pi / 48
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    s = np.sqrt(1 - zz ** 2)
    n = torch.from_numpy(np.stack([s * np.cos(pp), s * np.sin(pp), zz], -1).reshape(-1, 3))
    w = torch.from_numpy((wz[:, None] * np.full(48, 2 * math.pi / 48)[None]).reshape(-1))
    y = render.sh_basis(n)
    gram = (y * w[:, None]).T @ y
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=2e-4)


def test_uniform_light_shades_one_and_a_clamped_cosine_light_matches_lambert():
    n = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    assert torch.allclose(render.sh_shading(n, render.uniform_sh(1.0, torch.float64)), torch.ones(50, 3, dtype=torch.float64))
    # A distant light of irradiance 1 from direction d: radiance SH L_lm = Y_lm(d), shading coefficients
    # sh_lm = A_l L_lm / pi, and the exact shading is max(0, n.d) / pi. Truncated after band 2, the
    # clamped cosine is within about 10% of its peak (Ramamoorthi & Hanrahan 2001).
    d = torch.nn.functional.normalize(torch.tensor([0.3, 0.5, 0.81], dtype=torch.float64), dim=0)
    bands = torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2])
    sh = torch.tensor(render.SH_BAND_CONVOLUTION, dtype=torch.float64)[bands] / math.pi * render.sh_basis(d)
    shade = render.sh_shading(n, sh[:, None].expand(9, 3))[:, 0]
    exact = (n @ d).clamp_min(0) / math.pi
    assert (shade - exact).abs().max() < 0.1 / math.pi
    facing = n @ d > 0.9
    assert ((shade - exact)[facing].abs() < 0.07 / math.pi).all()


def test_head_render_gradient_matches_finite_differences():
    """The full chain on the ICT head: projection, fixed-id rasterization, differentiable barycentrics,
    vertex normals, SH shading of a per-vertex albedo. Directional derivative vs central differences."""
    model = load_face_model()
    topo = model.topology
    skin = torch.from_numpy(topo.triangles[topo.polygon_part[topo.triangle_polygon] == PART_NAMES.index("skin")])
    k = Intrinsics.for_image(64, 64)
    rot = axis_angle_to_matrix(torch.tensor([0.1, 0.4, 0.0], dtype=torch.float64))
    trans = torch.tensor([0.0, 1.0, -k.focal_px * 30.0 / 64], dtype=torch.float64)
    verts = model.neutral.double()
    g = torch.Generator().manual_seed(5)
    albedo = torch.rand(len(verts), 3, dtype=torch.float64, generator=g)
    sh = render.uniform_sh(0.8, torch.float64)
    sh[1:4] = 0.3 * torch.randn(3, 3, dtype=torch.float64, generator=g)
    r = render.rasterize(render.project(render.to_camera(verts, rot, trans), k), skin, 64, 64, cull_backfaces=True)
    target = torch.rand(int(r.mask.sum()), 3, dtype=torch.float64, generator=g)

    def loss(v):
        cam = render.to_camera(v, rot, trans)
        frags = render.fragments(r, render.project(cam, k))
        n = torch.nn.functional.normalize(render.interpolate(frags, render.vertex_normals(cam, skin)), dim=1)
        img = render.interpolate(frags, albedo) * render.sh_shading(n, sh)
        return (img - target).square().sum()

    x = verts.clone().requires_grad_(True)
    loss(x).backward()
    d = torch.randn(verts.shape, dtype=torch.float64, generator=g) * 0.01
    eps = 1e-4
    numeric = (loss(verts + eps * d) - loss(verts - eps * d)) / (2 * eps)
    analytic = (x.grad * d).sum()
    assert r.mask.sum() > 1000 and abs(float(analytic)) > 1e-3
    assert abs(float(numeric - analytic)) < 1e-5 * max(1.0, abs(float(numeric)))


def test_photo_view_sees_the_face_and_not_the_back_of_the_head():
    model = load_face_model()
    k = Intrinsics.for_image(400, 400)
    trans = torch.tensor([0.0, 0.0, -k.focal_px * 30.0 / 400])
    cam = render.to_camera(model.neutral, torch.eye(3), trans)
    tris = torch.from_numpy(model.topology.triangles)
    view = render.photo_view(cam, tris, k, 1024)
    normals = render.vertex_normals(cam, tris)
    nose, back = 5, 10000  # a face vertex and one on the back of the head (asset README ranges)
    _, f = render.view_factors(cam[[nose, back]].T, normals[[nose, back]].T, view, k)
    assert float(f["visible"][0]) == 1.0 and float(f["angle"][0]) > 0.9
    assert float(f["visible"][1]) == 0.0

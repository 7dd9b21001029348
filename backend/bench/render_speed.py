"""Seconds of one differentiable render and its backward pass on the CPU: what a photometric fit pays
per step. The ICT head (skin, eyes, teeth, mouth) fills a square face crop of `size` px; gradients flow
to identity coefficients, per-vertex albedo and SH lighting (render.py's whole chain)."""
from __future__ import annotations

import time

import numpy as np
import torch

from .. import render
from ..camera import Intrinsics, axis_angle_to_matrix
from ..facemodel import PART_NAMES, load_face_model


def render_backward(size: int, repeats: int = 5, device: str = "cpu") -> dict:
    model = load_face_model(device=device)
    topo = model.topology
    keep = np.isin(topo.polygon_part[topo.triangle_polygon], [PART_NAMES.index(p) for p in ("skin", "eyes", "teeth", "mouth")])
    tris = torch.from_numpy(topo.triangles[keep]).to(device)
    k = Intrinsics.for_image(size, size)
    rot = axis_angle_to_matrix(torch.tensor([0.05, 0.3, 0.0], device=device))
    trans = torch.tensor([0.0, 1.5, -k.focal_px * 26.0 / size], device=device)
    g = torch.Generator().manual_seed(0)
    target = torch.rand(size * size, 3, generator=g).to(device)
    identity = torch.zeros(model.num_identity, device=device, requires_grad=True)
    albedo = torch.full((model.num_vertices, 3), 0.5, device=device, requires_grad=True)
    sh = render.uniform_sh(0.9, device=device).requires_grad_(True)
    forward, backward, pixels = [], [], 0
    for _ in range(repeats + 1):  # the first run warms caches and is not counted
        t0 = time.perf_counter()
        cam = render.to_camera(model.vertices(identity), rot, trans)
        screen = render.project(cam, k)
        r = render.rasterize(screen, tris, size, size, cull_backfaces=True)
        frags = render.fragments(r, screen)
        n = torch.nn.functional.normalize(render.interpolate(frags, render.vertex_normals(cam, tris)), dim=1)
        colour = render.interpolate(frags, albedo) * render.sh_shading(n, sh)
        loss = (colour - target[frags.pixel]).abs().mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        forward.append(t1 - t0)
        backward.append(t2 - t1)
        pixels = len(frags.pixel)
        identity.grad = albedo.grad = sh.grad = None
    return {"size": size, "covered_pixels": pixels, "forward_s": float(np.median(forward[1:])),
            "backward_s": float(np.median(backward[1:])), "total_s": float(np.median(np.add(forward, backward)[1:])),
            "repeats": repeats, "threads": torch.get_num_threads(), "device": device}

"""The "As Photographed" environment (sh_lighting.py, bpy-free): lit by it, a Lambertian surface gets the
shading the backend fitted, in every direction; and its SH basis is the backend's."""
from __future__ import annotations

import numpy as np
import torch

import sh_lighting
from backend import render


def _irradiance_over_pi(env: np.ndarray, normals_world: np.ndarray) -> np.ndarray:
    """(1/pi) * integral of L(w) max(0, n.w) dw over the equirect image (solid angle per pixel)."""
    h, w = env.shape[:2]
    d = sh_lighting.equirect_directions(w)
    theta = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    dw = (np.cos(theta) * (np.pi / h) * (2 * np.pi / w))[:, None] * np.ones((1, w))
    cos = np.clip(np.einsum("hwc,nc->nhw", d, normals_world), 0, None)
    return np.einsum("nhw,hwk,hw->nk", cos, env.astype(np.float64), dw) / np.pi


def test_the_basis_is_the_backends():
    n = torch.nn.functional.normalize(torch.randn(40, 3, dtype=torch.float64), dim=1)
    assert np.allclose(sh_lighting.sh_basis(n.numpy()), render.sh_basis(n).numpy())


def test_environment_relights_with_the_fitted_shading():
    g = np.random.default_rng(0)
    sh = np.zeros((9, 3))
    sh[0] = np.array([1.0, 0.9, 0.8]) / 0.282095       # uniform light, a warm tint
    sh[1:4] = np.array([[0.3], [0.5], [-0.2]]) * np.array([[1.0, 0.9, 0.8]])  # and a directional part
    pose = np.linalg.qr(g.normal(size=(3, 3)))[0]
    pose *= np.sign(np.linalg.det(pose))
    obj = np.linalg.qr(g.normal(size=(3, 3)))[0]
    obj *= np.sign(np.linalg.det(obj))
    env = sh_lighting.environment_image(sh, pose, obj, width=256)
    assert env.min() >= 0 and env.shape == (128, 256, 3)
    n_cam = g.normal(size=(30, 3))
    n_cam /= np.linalg.norm(n_cam, axis=1, keepdims=True)
    n_world = n_cam @ sh_lighting.world_to_camera(pose, obj)   # rows: W^T applied to each camera normal
    expected = sh_lighting.sh_basis(n_cam) @ sh
    got = _irradiance_over_pi(env, n_world)
    assert np.abs(got - expected).max() < 0.03 * expected.max()

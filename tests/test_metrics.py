"""Bench metrics on hand-made cases (no photos, no pipeline)."""
import numpy as np
import pytest

from backend.bench import metrics
from backend.landmarks import FRL_TO_IBUG68, frl_pairs


def _image(seed=0, shape=(64, 80, 3)):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, shape[1])[None, :, None] * np.ones(shape)
    return np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)


def test_identical_images_ssim_one_psnr_inf():
    a = _image()
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.psnr(a, a) == float("inf")
    mask = np.zeros(a.shape[:2], bool)
    mask[10:30, 20:50] = True
    assert metrics.ssim(a, a.copy(), mask) == pytest.approx(1.0)


def test_psnr_known_value_and_mask():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[:4] += 10                      # MSE 100 in the top half, 0 in the bottom half
    top = np.zeros((8, 8), bool)
    top[:4] = True
    assert metrics.psnr(a, b, top) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    assert metrics.psnr(a, b, ~top) == float("inf")
    assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / 50))


def test_ssim_drops_with_noise_and_ignores_unmasked_pixels():
    a = _image(1)
    noisy = np.clip(a + np.random.default_rng(2).normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(a, noisy) < 0.9
    b = a.copy()
    b[:, :40] = 0                    # damage only the left half
    right = np.zeros(a.shape[:2], bool)
    right[:, 50:] = True             # beyond the 11-px window reach of the damage
    assert metrics.ssim(a, b, right) == pytest.approx(1.0, abs=1e-6)
    assert metrics.ssim(a, b) < 0.9


def test_lpips_identical_zero_and_different_positive():
    lp = metrics.Lpips()
    a = _image(3, (96, 96, 3))
    assert lp(a, a) == pytest.approx(0.0, abs=1e-6)
    b = np.clip(a.astype(int)[::-1] + 40, 0, 255).astype(np.uint8)
    assert lp(a, b) > 0.05
    mask = np.zeros((96, 96), bool)
    mask[20:60, 20:60] = True
    assert lp(a, a, mask) == pytest.approx(0.0, abs=1e-6)


def test_known_offset_gives_known_nme():
    # A hand-made .tem: 189 points, pupils 60 px apart; predictions offset by (3, 4) -> 5 px each.
    tem = np.zeros((189, 2))
    tem[0], tem[1] = (100, 100), (160, 100)
    rng = np.random.default_rng(0)
    frl, ibug = frl_pairs()
    tem[frl] = rng.uniform(50, 250, size=(len(frl), 2))
    pred68 = np.zeros((68, 2))
    pred68[ibug] = tem[frl] + (3.0, 4.0)
    err = metrics.frl_nme(pred68, tem)
    assert len(err) == len(FRL_TO_IBUG68) == 12  # the issue says 13 but lists these 12 pairs
    np.testing.assert_allclose(err, 5.0 / 60.0)
    assert metrics.nme(tem[frl] + (3.0, 4.0), tem[frl], 60.0) == pytest.approx(5.0 / 60.0)


def test_similarity_alignment_recovers_scaled_rotated_copy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    a = np.radians(35)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    y = 1.7 * x @ rot.T + (3, -2, 5)
    assert metrics.aligned_vertex_errors(x, y).max() < 1e-9
    # A reflection is not a rotation: the alignment must not use it.
    assert metrics.aligned_vertex_errors(x * (-1, 1, 1), x).mean() > 0.1


def test_verification_auc():
    assert metrics.verification_auc([1, 2], [3, 4, 5]) == 1.0
    assert metrics.verification_auc([3, 4, 5], [1, 2]) == 0.0
    assert metrics.verification_auc([1, 1], [1, 1]) == 0.5
    assert metrics.verification_auc([1, 3], [2, 4]) == pytest.approx(0.75)


def test_summarize_ignores_nan():
    s = metrics.summarize([1.0, 2.0, 3.0, float("nan"), None])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["median"] == 2.0 and s["max"] == 3.0
    assert metrics.summarize([])["n"] == 0

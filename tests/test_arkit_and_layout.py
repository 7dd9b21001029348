"""The bpy-free parts of the Blender side: ARKit names from ICT's expressions, the export UV layout
and atlas, the eye image (tests without Blender)."""
from __future__ import annotations

import numpy as np
import pytest

import arkit
import export_layout

ICT_53 = ['browDown_L', 'browDown_R', 'browInnerUp_L', 'browInnerUp_R', 'browOuterUp_L', 'browOuterUp_R',
          'cheekPuff_L', 'cheekPuff_R', 'cheekSquint_L', 'cheekSquint_R', 'eyeBlink_L', 'eyeBlink_R',
          'eyeLookDown_L', 'eyeLookDown_R', 'eyeLookIn_L', 'eyeLookIn_R', 'eyeLookOut_L', 'eyeLookOut_R',
          'eyeLookUp_L', 'eyeLookUp_R', 'eyeSquint_L', 'eyeSquint_R', 'eyeWide_L', 'eyeWide_R', 'jawForward',
          'jawLeft', 'jawOpen', 'jawRight', 'mouthClose', 'mouthDimple_L', 'mouthDimple_R', 'mouthFrown_L',
          'mouthFrown_R', 'mouthFunnel', 'mouthLeft', 'mouthLowerDown_L', 'mouthLowerDown_R', 'mouthPress_L',
          'mouthPress_R', 'mouthPucker', 'mouthRight', 'mouthRollLower', 'mouthRollUpper', 'mouthShrugLower',
          'mouthShrugUpper', 'mouthSmile_L', 'mouthSmile_R', 'mouthStretch_L', 'mouthStretch_R', 'mouthUpperUp_L',
          'mouthUpperUp_R', 'noseSneer_L', 'noseSneer_R']


def test_arkit_has_apples_52_names_once():
    assert len(arkit.ARKIT_NAMES) == 52 == len(set(arkit.ARKIT_NAMES))
    assert {"browInnerUp", "cheekPuff", "tongueOut", "eyeBlinkLeft", "mouthSmileRight"} <= set(arkit.ARKIT_NAMES)
    assert not any(n.endswith(("_L", "_R")) for n in arkit.ARKIT_NAMES)


def test_every_ict_expression_is_used_exactly_once():
    m = arkit.arkit_matrix(ICT_53)
    assert m.shape == (52, 53)
    assert (m.sum(axis=0) == 1).all(), "each ICT expression feeds exactly one ARKit shape"
    rows = dict(zip(arkit.ARKIT_NAMES, m))
    assert rows["browInnerUp"][[ICT_53.index("browInnerUp_L"), ICT_53.index("browInnerUp_R")]].tolist() == [1, 1]
    assert rows["tongueOut"].sum() == 0
    assert rows["jawOpen"][ICT_53.index("jawOpen")] == 1 and rows["jawOpen"].sum() == 1


def test_arkit_deltas_combine_halves_and_keep_the_rest():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(53, 7, 3)).astype(np.float16)
    out = arkit.arkit_deltas(ICT_53, d)
    assert out.shape == (52, 7, 3) and out.dtype == np.float32
    k = arkit.ARKIT_NAMES.index
    np.testing.assert_allclose(out[k("cheekPuff")], d[6].astype(np.float32) + d[7].astype(np.float32))
    np.testing.assert_array_equal(out[k("eyeBlinkRight")], d[ICT_53.index("eyeBlink_R")].astype(np.float32))
    assert not out[k("tongueOut")].any()


def test_arkit_values_mean_of_halves():
    w = np.linspace(0, 1, 53)
    v = arkit.arkit_values(ICT_53, w)
    assert v["browInnerUp"] == pytest.approx((w[2] + w[3]) / 2)
    assert v["noseSneerLeft"] == pytest.approx(w[51]) and v["tongueOut"] == 0.0


def test_a_model_without_a_needed_expression_is_named():
    with pytest.raises(KeyError, match="cheekPuff_R"):
        arkit.arkit_matrix([n for n in ICT_53 if n != "cheekPuff_R"])


def _quad_mesh():
    # three quads: skin on 1001, skin on 1002 (one corner exactly on u = 1.0), eyes on 1001
    uv = np.array([[0.1, 0.1], [0.3, 0.1], [0.3, 0.3], [0.1, 0.3],
                   [1.0, 0.5], [1.5, 0.5], [1.5, 0.9], [1.2, 0.9],
                   [0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]], np.float32)
    return uv, np.array([4, 4, 4]), np.array([0, 0, 1])


def test_export_uvs_put_each_tile_in_its_half():
    uv, sizes, part = _quad_mesh()
    out = export_layout.export_uvs(uv, sizes, part, {0: [1001, 1002]})
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out[:4, 0], uv[:4, 0] / 2)            # 1001 -> left half
    np.testing.assert_allclose(out[4:8, 0], (1 + uv[4:8, 0] - 1) / 2)  # 1002 -> right half, u=1.0 stays there
    np.testing.assert_allclose(out[8:, 0], uv[8:, 0])                 # eyes: own 0..1
    np.testing.assert_allclose(out[:, 1], uv[:, 1])


def test_export_uvs_refuse_a_tile_the_atlas_lacks():
    uv, sizes, part = _quad_mesh()
    with pytest.raises(ValueError, match="1002"):
        export_layout.export_uvs(uv, sizes, part, {0: [1001]})


def test_atlas_is_the_tiles_side_by_side_and_samples_back():
    """A texel of tile 1002 at local (u, v) is found in the atlas at the export UV."""
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 8, 3)), rng.random((8, 8, 3))
    img = export_layout.atlas([a, b])
    assert img.shape == (8, 16, 3)
    uv, sizes, part = _quad_mesh()
    out = export_layout.export_uvs(uv, sizes, part, {0: [1001, 1002]})
    u_local, u_atlas = uv[5, 0] - 1, out[5, 0]
    assert int(u_atlas * 16) == 8 + int(u_local * 8)


def test_eye_image_pupil_iris_sclera():
    img = export_layout.eye_image(256)
    assert img.shape == (256, 256, 4) and img.dtype == np.float32
    centre, iris, sclera = img[128, 128, :3], img[128, 128 + 17, :3], img[128, 128 + 60, :3]
    assert centre.max() < 0.1 and sclera.min() > 0.8
    assert iris[0] > iris[2] and 0.2 < iris.mean() < 0.7  # brown iris, sRGB encoded
    assert (img[..., 3] == 1).all()


def test_lash_image_is_strands_with_gaps_dense_at_the_root():
    """The lash cards carry individual strands: a uniform half-transparent card (the old material) draws a
    grey band across the eye. Rows run bottom-up; each strip's root is its top edge (largest v)."""
    size = 512
    img = export_layout.lash_image(size)
    assert img.shape == (size, size, 4) and img.dtype == np.float32
    alpha = img[..., 3]
    v = (np.arange(size) + 0.5) / size
    strips = np.zeros(size, bool)
    for k, (v0, v1) in enumerate(export_layout.LASH_STRIPS):
        rows = (v >= v0) & (v <= v1)
        strips |= rows
        band = alpha[rows]
        root, tip = band[-4:], band[:4]                     # the top rows are the roots
        assert root.max() > 0.4, k                            # strands are drawn
        assert (band < 0.05).mean() > 0.6, k                  # mostly gaps between strands
        assert root.mean() > 3 * tip.mean(), k                # dense at the lid, thin at the tips
        assert root.mean() < 0.5, k                           # never a solid sheet
    assert alpha[~strips].max() == 0.0                         # nothing between the cards
    upper = alpha[(v >= 0.5)].mean()
    lower = alpha[(v < 0.5)].mean()
    assert upper > 1.5 * lower                                 # the lower lid's lashes are sparser
    assert img[..., :3].max() < 0.2                            # dark hair
    assert np.array_equal(img, export_layout.lash_image(size))  # deterministic


def test_photo_camera_sees_the_head_where_the_photo_did():
    import photo_camera
    rng = np.random.default_rng(2)
    angles = rng.normal(scale=0.2, size=3)
    cx_, cy_, cz_ = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx_, -sx], [0, sx, cx_]])
    ry = np.array([[cy_, 0, sy], [0, 1, 0], [-sy, 0, cy_]])
    rz = np.array([[cz_, -sz, 0], [sz, cz_, 0], [0, 0, 1]])
    r = rz @ ry @ rx
    t = np.array([1.5, -2.0, -70.0])
    result = {"camera": {"width": 1200, "height": 900, "focal_px": 2100.0, "cx": 630.0, "cy": 440.0},
              "pose": {"rotation": r.tolist(), "translation_cm": t.tolist()}}
    X = rng.normal(scale=8.0, size=(50, 3))  # ICT cm
    xc = X @ r.T + t
    u = 630.0 + 2100.0 * xc[:, 0] / -xc[:, 2]
    v = 440.0 - 2100.0 * xc[:, 1] / -xc[:, 2]
    loc = np.array([0.4, -1.0, 2.0])
    setup = photo_camera.camera_setup(result, loc)
    world = loc + 0.01 * X @ photo_camera.ICT_TO_BLENDER.T
    np.testing.assert_allclose(photo_camera.project(setup, world), np.c_[u, v], atol=1e-6)
    assert setup.lens_mm == pytest.approx(2100 * 36 / 1200)
    np.testing.assert_allclose(setup.matrix_world[:3, :3] @ setup.matrix_world[:3, :3].T, np.eye(3), atol=1e-12)

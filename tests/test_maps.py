"""Measured skin maps and eyes (backend/skin_maps.py, backend/eyes.py), each against a known truth:
conventions of the normal map (signs, 16-bit flat), the Poisson height, detail normals of a known relief
under a known light, the dichromatic specular evidence, a shiny region found from its highlight, regions,
the eyeball's UV, iris colour and size from a drawn eye, the bundle's files, the de-lit strategy's maps,
and one synthetic head of the bench (backend/bench/maps_truth.py) where the measured maps beat flat and
constant ones. Cycles' own check of the normal-map convention: tests/blender/test_maps_blender.py."""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from backend import eyes, skin_maps
from backend.facemodel import load_face_model

SIZE = 256


@pytest.fixture(scope="module")
def model():
    return load_face_model()


@pytest.fixture(scope="module")
def frames(model):
    return skin_maps.texel_frames(model, model.neutral, SIZE)


def _uv():
    u = (np.arange(SIZE) + 0.5) / SIZE
    return np.tile(u[None, :], (SIZE, 1)), np.tile((1.0 - u)[:, None], (1, SIZE))   # u, v (row 0 = v 1)


def _angles(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, -1), -1, 1)))


# ---------------------------------------------------------------------------------------------
# Conventions


def test_principled_terms():
    assert skin_maps.level_from_f0(skin_maps.F0_AT_IOR) == pytest.approx(0.5)
    assert skin_maps.f0_from_level(0.5) == pytest.approx(0.02778, abs=1e-5)
    assert skin_maps.roughness_from_alpha(0.25) == pytest.approx(0.5)


def test_each_texel_frame_sits_where_its_texel_centre_maps_on_the_surface(model):
    """Independent of the raster's stored weights: each texel centre's barycentrics in its triangle's UVs,
    applied to the vertex positions and normals, give the frame's position and normal."""
    topo = model.topology
    verts = model.vertices(torch.randn(model.identity.shape[0], generator=torch.Generator().manual_seed(3))).numpy()
    vn = skin_maps._vertex_normals(verts.astype(np.float64), topo.triangles)
    for tile, fr in skin_maps.texel_frames(model, verts, SIZE).items():
        row, col = np.divmod(fr.texel, SIZE)
        uv = np.stack([tile - 1001 + (col + 0.5) / SIZE, 1.0 - (row + 0.5) / SIZE], 1)
        c = topo.corner_uvs[topo.triangle_corners[fr.raster.triangle]].astype(np.float64)   # (N, 3, 2)
        m = np.stack([c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]], 2)                              # (N, 2, 2)
        ok = np.abs(np.linalg.det(m)) > 1e-12
        b12 = np.linalg.solve(m[ok], (uv - c[:, 0])[ok][..., None])[..., 0]
        bary = np.concatenate([1.0 - b12.sum(1, keepdims=True), b12], 1)
        assert bary.min() > -0.02 and ok.mean() > 0.999               # the centre lies in its triangle
        corners = topo.triangles[fr.raster.triangle[ok]]
        pos = np.einsum("nk,nkc->nc", bary, verts[corners])
        nrm = np.einsum("nk,nkc->nc", bary, vn[corners])
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        assert np.abs(fr.position[ok] - pos).max() < 0.01               # cm: a tenth of a texel here
        assert _angles(fr.normal[ok], nrm).max() < 1.0                 # degrees (0.4 at the sharpest creases)


def test_height_ramps_tilt_the_normal_against_u_and_v(frames):
    """h rising along +u tilts the normal towards -X (-T), along +v towards -Y (-B): OpenGL tangent space;
    flat height gives exactly (0, 0, 1)."""
    fr = frames[1001]
    u, v = _uv()
    for ramp, axis in ((u, 0), (v, 1)):
        n = fr.at(skin_maps.height_to_normal(0.05 * ramp, fr))
        inner = (np.abs(n[:, axis]) > 0) & (n[:, 2] > 0.5)
        assert (n[inner, axis] < 0).mean() > 0.99, axis
        assert np.abs(n[:, 1 - axis]).mean() < 0.4 * np.abs(n[:, axis]).mean(), axis   # sheared UVs: some cross-talk
        # the tilt is the surface slope: 0.05 cm per UV unit over |dP/du| (or |dP/dv|) cm per UV unit
        want = 0.05 / np.abs(fr.jacobian[:, axis, axis])
        got = np.abs(n[:, axis] / n[:, 2])
        assert np.median(np.abs(got / want - 1)) < 0.05
    flat = skin_maps.height_to_normal(np.zeros((SIZE, SIZE)), fr)
    assert np.array_equal(flat[..., 2], np.ones((SIZE, SIZE), np.float32)) and not flat[..., :2].any()


def test_16_bit_encoding_keeps_flat_flat_and_round_trips():
    flat = np.zeros((4, 4, 3))
    flat[..., 2] = 1.0
    enc = skin_maps.encode_normal16(flat)
    assert enc.dtype == np.uint16
    dec = skin_maps.decode_normal(enc)
    assert np.abs(dec[..., :2]).max() < 2e-5 and np.all(dec[..., 2] == 1.0)
    eight = np.round((flat * 0.5 + 0.5) * 255).astype(np.uint8)
    assert np.abs(skin_maps.decode_normal(eight)[..., :2]).max() > 3e-3      # what 8 bits gave
    rng = np.random.default_rng(0)
    n = rng.normal(size=(64, 64, 3))
    n[..., 2] = np.abs(n[..., 2]) + 1
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    assert _angles(skin_maps.decode_normal(skin_maps.encode_normal16(n)), n).max() < 0.005


def test_poisson_integration_recovers_a_height_from_its_slopes(frames):
    fr = frames[1001]
    rng = np.random.default_rng(1)
    from backend.bench.maps_truth import band_noise
    h = 0.01 * band_noise(rng, SIZE, 12.0)
    du, dv = skin_maps.uv_gradient(h)
    back = skin_maps.integrate_slopes(skin_maps.surface_gradient(fr, du, dv), fr)
    want, got = fr.at(skin_maps.height_to_normal(h, fr)), fr.at(skin_maps.height_to_normal(back, fr))
    inner = fr.at(cv2.erode(fr.image(np.ones(len(fr.texel), np.uint8), 0), np.ones((5, 5)))) > 0
    assert np.median(_angles(got, want)[inner]) < 0.2 and np.median(_angles(want, np.array([0, 0, 1.0]))[inner]) > 1.0


# ---------------------------------------------------------------------------------------------
# Detail normals: a known relief under a known light, in texture space


def _lit_relief(frames, rotation, sh, seed=3, slope=0.15):
    """A relief (cm) on tile 1001, its normal map, and the de-lit texture a perfect projection of a
    photo of it under SH light `sh` would give: albedo * S(n') / S(n) (n the mesh normal)."""
    from backend.bench.maps_truth import band_noise
    fr = frames[1001]
    rng = np.random.default_rng(seed)
    texel_cm = skin_maps.texel_size_cm(fr)
    lam = 0.35                                      # cm: 3 texels at this size, inside the relief bands (< 4 mm)
    h = band_noise(rng, SIZE, lam / texel_cm) * slope * lam / (2 * math.pi)
    truth = skin_maps.height_to_normal(h, fr)
    tn = fr.at(truth).astype(np.float64)
    n2 = skin_maps._unit(tn[:, 0:1] * fr.tangent + tn[:, 1:2] * fr.bitangent + tn[:, 2:3] * fr.normal) @ rotation.T
    n1 = fr.normal.astype(np.float64) @ rotation.T
    lum = lambda n: np.maximum(skin_maps.sh_basis_np(n) @ (sh @ skin_maps.LUMA), 1e-3)  # noqa: E731
    albedo = np.array([0.45, 0.32, 0.25])
    diffuse = fr.image((albedo[None] * (lum(n2) / lum(n1))[:, None]).astype(np.float32), fill=0.0)
    return truth, diffuse, np.ones((SIZE, SIZE), np.float32)


def _side_light() -> np.ndarray:
    d = np.array([0.7, 0.3, 0.65])
    d /= np.linalg.norm(d)
    a = np.array([math.pi, 2 * math.pi / 3, math.pi / 4])[[0, 1, 1, 1, 2, 2, 2, 2, 2]] / math.pi
    sh = np.repeat((a * skin_maps.sh_basis_np(d[None])[0] * 2.0)[:, None], 3, 1)
    sh[0] += 0.15 / 0.282095
    return sh


def test_detail_normals_recover_a_known_relief(frames):
    fr = frames[1001]
    rot, sh = np.eye(3), _side_light()
    truth, diffuse, vis = _lit_relief(frames, rot, sh)
    est = skin_maps.detail_normals(diffuse, vis, fr, rot, sh)
    inner = fr.at(cv2.erode(fr.image(np.ones(len(fr.texel), np.uint8), 0), np.ones((9, 9)))) > 0
    err = _angles(fr.at(est), fr.at(truth))[inner].mean()
    flat = _angles(np.array([[0, 0, 1.0]]), fr.at(truth))[inner].mean()
    # One photo sees the relief's slope along the light's tilt direction g, not across it: that part must
    # come back (correlated, at the right scale), and the normals must beat the flat map overall.
    g = skin_maps.shading_tilt_gradient(fr, rot, sh)
    gh = g / np.linalg.norm(g, axis=1, keepdims=True)
    slope = lambda n: -n[:, :2] / n[:, 2:3]  # noqa: E731
    along_est = np.sum(slope(fr.at(est)) * gh, 1)[inner]
    along_true = np.sum(slope(fr.at(truth)) * gh, 1)[inner]
    corr = np.corrcoef(along_est, along_true)[0, 1]
    gain = np.sum(along_est * along_true) / np.sum(along_true ** 2)
    print(f"detail normals {err:.2f} deg, flat {flat:.2f} deg; along the light: corr {corr:.2f}, gain {gain:.2f}")
    assert flat > 4.0 and err < 0.85 * flat
    assert corr > 0.65 and 0.4 < gain < 1.5
    # Without light from the side nothing can be read: the estimate stays (nearly) flat, never wild.
    uniform = np.zeros((9, 3))
    uniform[0] = 1.0 / 0.282095
    _, diffuse_u, _ = _lit_relief(frames, rot, uniform)
    est_u = skin_maps.detail_normals(diffuse_u, vis, fr, rot, uniform)
    assert _angles(fr.at(est_u), np.array([[0, 0, 1.0]]))[inner].mean() < 0.5


# ---------------------------------------------------------------------------------------------
# Specular


def test_highpass_level_by_level_is_pywts_transform_and_cancellable():
    """The detail sub-bands computed one level at a time (so that a cancel lands between levels) are the
    numbers of pywt's whole stationary transform, bit for bit; a check that raises stops the transform."""
    import pywt
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.normal(size=(256, 256)), (0, 0), 1.5).astype(np.float32)
    coeffs = pywt.swt2(image, "sym4", level=4, trim_approx=True, norm=True)
    coeffs[0] = np.zeros_like(coeffs[0])
    calls = []
    out = skin_maps.highpass(image, 4, check=lambda: calls.append(1))
    assert np.array_equal(out, pywt.iswt2(coeffs, "sym4", norm=True))
    assert len(calls) == 8   # after each level, both ways

    def stop():
        raise RuntimeError("cancelled")
    with pytest.raises(RuntimeError):
        skin_maps.highpass(image, 4, check=stop)


def test_specular_evidence_is_dichromatic():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.2, 0.6, size=(500, 3)) * np.array([1.0, 0.75, 0.6])
    shading = rng.uniform(0.5, 1.5, size=(500, 1)) * np.ones(3)
    light = np.array([1.02, 1.0, 0.95])
    s = rng.uniform(0.0, 0.2, size=500)
    brighter = rng.uniform(0.8, 1.2, size=(500, 1))        # the skin a little darker or lighter: not specular
    photo = base * brighter * shading + s[:, None] * light
    np.testing.assert_allclose(skin_maps.specular_evidence(photo, base, shading, light), s, atol=1e-9)
    assert np.abs(skin_maps.specular_evidence(base * brighter * shading, base, shading, light)).max() < 1e-9


def test_a_shiny_forehead_is_found_from_its_highlight(model, frames):
    """De-lit maps of a head lit from above the camera whose forehead reflects twice the prior: the
    forehead's level comes out high, the lit cheeks stay near the prior, and the roughness stays in range."""
    rot, trans = np.eye(3), np.array([0.0, -2.0, -55.0])
    d = np.array([0.0, 0.45, 0.89])
    d /= np.linalg.norm(d)
    e = np.array([2.2, 2.2, 2.2])
    sh = np.zeros((9, 3))
    sh[0] = 0.25 / 0.282095
    sh[[3, 1, 2]] = (skin_maps.BAND1_DIRECTIONAL * d)[:, None] * e[None]
    diffuse, vis = {}, {}
    fi = skin_maps.REGION_NAMES.index("forehead")
    for tile, fr in frames.items():
        n = fr.normal.astype(np.float64) @ rot.T
        p = fr.position.astype(np.float64) @ rot.T + trans
        v = -p / np.linalg.norm(p, axis=1, keepdims=True)
        k = 1.0 + fr.regions[:, fi]                             # level 1.0 on the forehead, 0.5 elsewhere
        spec = skin_maps.ggx_specular(n, v, d, 0.5, skin_maps.f0_from_level(0.5 * k))[:, None] * e[None]
        shading = np.maximum(skin_maps.sh_basis_np(n) @ sh, 1e-3)
        albedo = np.array([0.45, 0.32, 0.25])
        diffuse[tile] = fr.image(((albedo * shading + spec) / shading).astype(np.float32), fill=0.0)
        vis[tile] = fr.image((np.clip(n[:, 2], 0, 1) ** 0.5).astype(np.float32), fill=0.0)
    fit = skin_maps.specular_maps(diffuse, vis, frames, rot, trans, sh, light=(d, e))   # evidence on by default
    regions = fit.info["regions"]
    print({k: v["level_ratio"] for k, v in regions.items()})
    assert regions["forehead"]["level_ratio"] > 1.25
    assert 0.7 < regions["cheeks"]["level_ratio"] < 1.3
    fr = frames[1001]
    fore = fr.regions[:, fi] > 0.9
    assert fr.at(fit.level[1001])[fore].mean() > 0.62 > fr.at(fit.level[1001])[fr.regions[:, 2] > 0.9].mean()
    assert all(0.05 <= r.min() and r.max() <= 1.0 for r in fit.roughness.values())
    # with the evidence off the maps are the region priors, whatever the photo shows
    off = skin_maps.specular_maps(diffuse, vis, frames, rot, trans, sh, replace(skin_maps.DEFAULT_SETTINGS, spec_evidence=False),
                                  light=(d, e))
    assert off.info == {"evidence": False}
    assert all(np.allclose(v, 0.5, atol=1e-6) for v in off.level.values())


def test_the_light_search_finds_a_highlights_direction_on_the_head(frames):
    """The key light's direction from the highlights alone (skin_maps.search_light_direction), on the face
    tile's real normals: a GGX highlight from a direction off both grids is found to within a fine step, and
    the batched evaluation of the directions gives the same numbers as one direction at a time."""
    fr = frames[1001]
    rot, trans = np.eye(3), np.array([0.0, -2.0, -55.0])
    n = fr.normal.astype(np.float64) @ rot.T
    p = fr.position.astype(np.float64) @ rot.T + trans
    v = -p / np.linalg.norm(p, axis=1, keepdims=True)
    az, el = np.radians(23.0), np.radians(31.0)
    d = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    w = np.clip(n[:, 2], 0.0, 1.0)
    s = skin_maps.ggx_specular(n, v, d, 0.5, skin_maps.f0_from_level(0.5))
    found, c_found, c_start = skin_maps.search_light_direction(n, v, s, w, 0.5, skin_maps.f0_from_level(0.5),
                                                               np.array([0.0, 0.0, 1.0]))
    angle = np.degrees(np.arccos(np.clip(found @ d, -1.0, 1.0)))
    print(f"found {angle:.2f} deg from the light, correlation {c_found:.4f} (the camera's direction {c_start:.4f})")
    assert angle < 2.0 and c_found > 0.99 > c_start
    dirs = skin_maps.direction_grid(10.0)[:40]
    batch = skin_maps.ggx_specular(n[:2000], v[:2000], dirs[:, None, :], 0.5, 0.03)
    assert batch.shape == (40, 2000)
    assert all(np.array_equal(batch[i], skin_maps.ggx_specular(n[:2000], v[:2000], dirs[i], 0.5, 0.03)) for i in range(40))


def test_regions_label_the_face(model):
    w = skin_maps.vertex_regions(model)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    lm = model.landmarks68
    name = lambda i: skin_maps.REGION_NAMES[int(np.argmax(w[lm[i]]))]  # noqa: E731
    assert name(62) == name(66) == "lips" and name(30) == "nose" and name(8) == "chin"
    assert name(19) == "brows" and name(33) in ("nose", "upper_lip")
    forehead = int(np.argmax(np.where(np.arange(len(w)) < 6706, model.neutral[:, 1].numpy(), -1e9)))
    assert skin_maps.REGION_NAMES[int(np.argmax(w[forehead]))] == "forehead"
    assert skin_maps.REGION_NAMES[int(np.argmax(w[11000]))] == "other"          # neck


# ---------------------------------------------------------------------------------------------
# Eyes


def test_eyeball_uv_table_reads_the_ict_eyeball(model):
    xs, ys = eyes.eyeball_uv_table(model)
    assert xs[0] == 0 and ys[0] == 0 and np.all(np.diff(ys) >= 0) and np.all(np.diff(xs) > 0)
    # a human iris (11.7 mm across) lies where the importer's default image draws it (UV 0.10-0.11)
    assert 0.09 < np.interp(0.585, xs, ys) < 0.13


def _drawn_eye(iris_srgb=(40, 90, 160), sclera_srgb=(225, 220, 212)):
    """A 400 px photo with both eyes drawn at MediaPipe's points: an almond opening, an iris disc of
    radius 14 px with a pupil and a corneal highlight."""
    img = np.full((400, 400, 3), (190, 150, 130), np.uint8)
    pts = np.zeros((478, 2), np.float32)
    for side, cx in (("right", 130.0), ("left", 270.0)):
        loop = eyes.EYE_LOOPS[side]
        t = np.linspace(0, 2 * np.pi, len(loop), endpoint=False)
        pts[list(loop)] = np.c_[cx + 45 * np.cos(t), 200 + 18 * np.sin(t)]
        cv2.ellipse(img, (int(cx), 200), (45, 18), 0, 0, 360, sclera_srgb, -1)
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.ellipse(mask, (int(cx), 200), (45, 18), 0, 0, 360, 1, -1)
        disc = np.zeros_like(mask)
        cv2.circle(disc, (int(cx), 200), 14, 1, -1)
        img[(disc > 0) & (mask > 0)] = iris_srgb
        cv2.circle(img, (int(cx), 200), 5, (10, 10, 10), -1)
        cv2.circle(img, (int(cx) + 4, 196), 2, (255, 255, 255), -1)
        c, ring = eyes.IRIS_POINTS[side]
        pts[c] = (cx, 200)
        pts[list(ring)] = [(cx + 14, 200), (cx, 186), (cx - 14, 200), (cx, 214)]
    return img, pts


def test_iris_colour_and_size_are_measured_from_the_iris_points():
    from skimage.color import deltaE_ciede2000, rgb2lab

    from backend.colour import linear_to_srgb
    img, pts = _drawn_eye()
    ms = eyes.measure_eyes(img, pts)
    assert [m.side for m in ms] == ["right", "left"]
    for m in ms:
        assert m.radius_px == pytest.approx(14.0) and m.iris_pixels > 300 and m.sclera_pixels > 300
        want = rgb2lab((np.array([40, 90, 160]) / 255.0)[None, None])[0, 0]
        got = rgb2lab(linear_to_srgb(np.asarray(m.iris_linear, np.float32))[None, None])[0, 0]
        assert deltaE_ciede2000(got, want) < 2.0
        assert np.all(m.sclera_linear > 0.6)


def test_eye_image_draws_the_measured_iris_at_its_size():
    iris = np.array([0.02, 0.08, 0.25])
    img = eyes.eye_image(iris, (0.7, 0.68, 0.64), 0.12, size=256)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    lin = eyes.SRGB8_TO_LINEAR[img]
    c = (np.arange(256) + 0.5) / 256 - 0.5
    r = np.hypot(c[None, :], c[:, None])
    assert lin[r < 0.03].mean() < 0.02                                        # pupil
    annulus = (r >= 0.4 * 0.12) & (r <= 0.9 * 0.12)
    np.testing.assert_allclose(lin[annulus].mean(0), iris, rtol=0.08, atol=0.004)
    sclera = lin[(r > 0.15) & (r < 0.2)].mean(0)
    assert 0.55 < sclera @ eyes.LUMA < 0.75 and sclera.max() < 0.99           # not pure white


# ---------------------------------------------------------------------------------------------
# The bundle and the strategies


def blank_scene(model, side: int, name: str = "x.png"):
    """(obs, fit): a black side x side photo with no landmarks and the neutral head 60 cm in front of the
    camera, what write_bundle needs around a TextureResult whose maps a test sets itself."""
    from backend.camera import Intrinsics
    from backend.imageio import photo_from_array
    from backend.landmarks import FaceDetection
    from backend.scene import Observation, SceneFit
    k = Intrinsics(500.0, side / 2, side / 2, side, side)
    det = FaceDetection(np.zeros((478, 2), np.float32), np.zeros(478, np.float32), {}, np.eye(4), (0, 0, 1, 1), 1)
    obs = Observation(photo_from_array(np.zeros((side, side, 3), np.uint8), name), det, k)
    v = model.neutral.clone()
    fit = SceneFit(k, torch.eye(3), torch.tensor([0.0, 0.0, -60.0]), torch.zeros(model.num_identity),
                   torch.zeros(model.num_expression), v, v, np.zeros((0, 2), np.float32), {}, {}, {})
    return obs, fit


def test_bundle_writes_roughness_16_bit_normals_and_eyes(model, tmp_path):
    import bundle_format
    from backend.bundle import write_bundle
    from backend.scene import Hooks, TextureResult
    obs, fit = blank_scene(model, 64)
    n = np.zeros((32, 32, 3), np.float32)
    n[..., 2] = 1
    n[5, 5] = (0.6, 0.0, 0.8)
    tex = TextureResult("test", 32, {"diffuse": {t: np.full((32, 32, 3), 0.4, np.float32) for t in (1001, 1002)},
                                     "visibility": {t: np.ones((32, 32), np.float32) for t in (1001, 1002)},
                                     "specular": {t: np.full((32, 32), 0.5, np.float32) for t in (1001, 1002)},
                                     "roughness": {t: np.full((32, 32), 0.3, np.float32) for t in (1001, 1002)},
                                     "normal": {t: n for t in (1001, 1002)}},
                        images={"eyes": np.full((16, 16, 3), 90, np.uint8)})
    out = tmp_path / "b"
    res = write_bundle(out, obs, fit, tex, model, {}, Hooks(), embed_model=True)
    roles = {f["path"]: (f["role"], f.get("colorspace")) for f in res["files"]}
    assert roles["roughness.1001.png"] == ("roughness", "Non-Color") and roles["eyes.png"] == ("eyes", "sRGB")
    img = cv2.imread(str(out / "normal.1001.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    dec = skin_maps.decode_normal(img[..., ::-1])
    assert np.abs(dec[5, 5] - n[5, 5]).max() < 1e-4 and np.abs(dec[0, 0, :2]).max() < 2e-5
    rough = cv2.imread(str(out / "roughness.1002.png"), cv2.IMREAD_UNCHANGED)
    assert rough.dtype == np.uint8 and np.all(rough == 77)
    b = bundle_format.read_bundle(out)
    assert set(b.tiles("roughness")) == {1001, 1002} and b.files("eyes")[0].path.name == "eyes.png"


@pytest.fixture(scope="module")
def side_lit(model):
    """tests/test_delit.py's head: a flat albedo under a hard side light, its lighting fitted."""
    from backend.photometric import PhotometricSettings, fit_photometric
    from backend.pipeline import load_correspondence
    corr = load_correspondence()
    from tests.test_delit import side_lit_scene
    _, _, obs, fit = side_lit_scene(model, corr)
    lit = fit_photometric(obs, fit, model, corr, None, PhotometricSettings(joint_steps=0))
    return obs, lit


def test_delit_strategy_measures_the_maps_projection_keeps_constants(model, side_lit):
    from backend.texture import delit_texture, project_texture
    obs, lit = side_lit
    tex = delit_texture(obs, lit, model, SIZE)
    assert set(tex.maps) >= {"diffuse", "visibility", "specular", "normal", "roughness"}
    for t in (1001, 1002):
        n = tex.maps["normal"][t]
        assert n.shape == (SIZE, SIZE, 3) and np.isfinite(n).all()
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
        assert 0.0 <= tex.maps["specular"][t].min() and tex.maps["specular"][t].max() <= 1.0
        assert 0.05 <= tex.maps["roughness"][t].min() and tex.maps["roughness"][t].max() <= 1.0
    assert tex.images["eyes"].shape == (512, 512, 3) and "maps" in tex.info
    v0 = project_texture(obs, lit, model, SIZE)
    assert "roughness" not in v0.maps and not v0.images
    assert np.all(v0.maps["normal"][1001] == np.array([0, 0, 1], np.float32))
    assert np.all(v0.maps["specular"][1001] == 0.5)


@pytest.fixture(scope="module")
def synthetic_head(model):
    """The bench's synthetic head of known maps (backend/bench/maps_truth.py, seed 1, a flat skin colour
    with the truth's highlights on it) through the pipeline's light fit and de-lit texture: (head, fit,
    texture, the de-lit diffuse before the highlights were taken out)."""
    from backend.bench import maps_truth
    from backend.pipeline import load_correspondence
    head = maps_truth.make_head(0, 1, model, [], side=768)
    _, lit, tex, raw = maps_truth.run_pipeline(head, model, load_correspondence(), None, raw=True)
    return head, lit, tex, raw


def test_the_synthetic_truth_shows_its_highlights_to_the_dichromatic_split(model, synthetic_head):
    """Given the true albedo and true diffuse shading, the specular evidence of the synthetic head's photo
    recovers the truth's own specular (its sum within 5 %, texel correlation above 0.9), so the bench can
    tell where the estimate goes wrong (docs/maps.md: the reference colour, not the photo)."""
    from backend.bench import maps_truth
    head, lit, tex, raw = synthetic_head
    diag = maps_truth.evidence_diagnosis(model, head, lit, tex, raw)
    assert abs(diag["oracle"]["sum"] - 1.0) < 0.05 and diag["oracle"]["corr"] > 0.9, diag
    assert diag["cores"], diag


def test_the_photos_highlights_leave_the_diffuse_map_and_the_rest_stays(model, synthetic_head):
    """backend/highlights.py on the synthetic head, whose albedo is known and whose photo has the truth's
    GGX highlights: on the highlight cores (specular above 10 % of the diffuse radiance) the de-lit diffuse
    comes much closer to the true albedo than with the highlights kept, elsewhere it stays as it was
    (the split leaves skin without highlight alone), and the texture says what it removed."""
    from backend.bench import maps_truth
    from backend import skin_maps
    head, lit, tex, raw = synthetic_head
    frames = skin_maps.texel_frames(model, head.vertices, tex.size, (1001,))
    sc = maps_truth.diffuse_scores(head, {"delit": tex.maps["diffuse"], "raw": raw}, tex, frames)
    assert sc["highlight_texels"] > 2000, sc
    assert sc["diffuse_delit_highlights"] < 0.6 * sc["diffuse_raw_highlights"], sc
    assert sc["diffuse_delit_elsewhere"] < sc["diffuse_raw_elsewhere"] + 0.003, sc
    assert sc["diffuse_delit"] < sc["diffuse_raw"], sc
    hl = tex.info["maps"]["highlights"]
    assert hl["removed"] and hl["texels"] > 0 and 0.0 < hl["removed_luminance"] < 0.05, hl
    # only brightening is taken out: nowhere is the cleaned map brighter than the photo's
    for t in raw:
        assert np.all(tex.maps["diffuse"][t] <= raw[t] + 1e-6)


def test_the_bundles_specular_and_roughness_beat_the_constants_on_the_synthetic_head(model, synthetic_head):
    """The texture's own specular and roughness maps (the region priors moved by the photo's highlights,
    MapSettings.spec_evidence) against the synthetic head's known maps: closer than the constants 0.5
    over the well-seen face texels (docs/maps.md has the bench over 8 heads of seeds not tuned on)."""
    from backend.bench import maps_truth
    head, lit, tex, raw = synthetic_head
    frames = skin_maps.texel_frames(model, head.vertices, tex.size)
    sc = maps_truth.map_scores(head, tex.maps, tex, frames)
    assert sc["specular_mae"] < 0.85 * sc["specular_const_mae"], sc
    assert sc["roughness_mae"] < 0.9 * sc["roughness_const_mae"], sc
    assert sc["normal_deg"] < 0.85 * sc["normal_flat_deg"], sc

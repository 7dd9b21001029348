"""`python -m backend bench` end to end on 3 London photos and 3 synthetic heads (about 1.5 minutes on 2 cores),
and the relighting measures on cases whose answer is known."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from backend.bench import SHARED_FACES, main
from backend.paths import WEIGHTS_DIR

LONDON = SHARED_FACES / "london" / "neutral"
PHOTOS = ("001_03", "002_03", "003_03")


def _needs_data():
    if not (LONDON / "001_03.tem").exists():
        pytest.skip(f"no London photos at {LONDON}")
    if not (WEIGHTS_DIR / "mediapipe_to_ict.npz").exists():
        pytest.skip("no landmark correspondence weights")
    try:
        from backend.paths import find_ict_dir
        find_ict_dir()
    except Exception:
        pytest.skip("no ICT-FaceKit assets")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    _needs_data()
    root = tmp_path_factory.mktemp("bench")
    data = root / "photos"
    data.mkdir()
    for stem in PHOTOS:
        for suffix in (".jpg", ".tem"):
            shutil.copy(LONDON / (stem + suffix), data / (stem + suffix))
    out = root / "report"
    rc = main(["--data", str(data), "--synthetic", "3", "--n-textures", "1", "--out", str(out),
               "--texture-cache", str(root / "textures"), "--baseline", "projection"])
    return rc, out, json.loads((out / "report.json").read_text())


def _finite(x):
    return x is not None and math.isfinite(x)


def test_bench_writes_report_and_pictures(bench_run):
    rc, out, rep = bench_run
    assert rc == 0
    for name in ("report.md", "report.json", "contact_sheet.png", "synthetic_sheet.png"):
        assert (out / name).stat().st_size > 1000, name
    text = (out / "report.md").read_text()
    assert text.index("## Summary") < text.index("## Pictures")
    assert "contact_sheet.png" in text


def test_speed_and_memory_are_sane(bench_run):
    _, _, rep = bench_run
    sp = rep["speed"]
    assert sp["warm_runs"] >= 3
    for stage in ("load", "detect", "fit", "texture", "write", "total"):
        assert _finite(sp["stages"][stage]["median"]) and sp["stages"][stage]["median"] >= 0
    assert 0 < sp["stages"]["total"]["median"] < 120
    assert 100 < sp["peak_rss_mb"]["max"] < 16000
    assert rep["process_peak_rss_mb"] >= sp["peak_rss_mb"]["max"] - 1
    assert sp["cold"]["process_start_to_bundle_s"] > sp["cold"]["timings_s"]["total"]


def test_landmark_and_appearance_values_are_sane(bench_run):
    _, _, rep = bench_run
    (s,) = rep["sets"]
    assert [p["ok"] for p in s["photos"]] == [True] * 3
    for p in s["photos"]:
        for method in ("fit", "mediapipe", "fit_ict68"):
            err = p["landmarks"][method]
            assert len(err) == 12 and all(_finite(e) for e in err)
            assert np.mean(err) < 0.1, (p["name"], method)
        a = p["appearance"]
        assert a["render_pixels"] > 10000 and a["face_skin_pixels"] > 5000      # renders are not empty
        assert 0.3 < a["ssim"] <= 1.0 and 15 < a["psnr_db"] < 80 and 0 <= a["lpips"] < 0.6
        assert _finite(a["id_distance"])
    lm = s["landmarks"]["methods"]
    # The fit should be about as good as the detector it fits to.
    assert lm["fit"]["per_photo"]["mean"] < lm["mediapipe"]["per_photo"]["mean"] * 1.5


def test_synthetic_fit_beats_the_mean_face(bench_run):
    _, _, rep = bench_run
    syn = rep["synthetic"]
    assert syn["succeeded"] == 3
    m = syn["methods"]
    for k in ("fit", "landmark_only", "mean_face"):
        assert all(_finite(v) for v in m[k]["pooled_mm"].values()), k
    assert m["fit"]["pooled_mm"]["mean"] < m["mean_face"]["pooled_mm"]["mean"]
    assert m["fit"]["pooled_mm"]["mean"] < 10.0


def test_synthetic_eye_and_mouth_rows(bench_run):
    _, out, rep = bench_run
    em = rep["synthetic"]["eyes_mouth"]
    assert em["heads"] == 3 and em["eyes_closed"] + em["eyes_open"] == 6
    for k in ("fit", "landmark_only", "mean_face"):
        for row in ("eye_closure_mm", "mouth_corner_mm"):
            assert _finite(em["methods"][k][row]["mean"]), (k, row)
    assert em["methods"]["fit"]["mouth_corner_mm"]["mean"] < em["methods"]["mean_face"]["mouth_corner_mm"]["mean"]
    assert all(len(p["eyes_mouth"]["fit"]["eye_closure_mm"]) == 2 for p in rep["synthetic"]["samples"])
    assert "## Eyes and mouth corners" in (out / "report.md").read_text()


def test_synthetic_samples_are_deterministic(tmp_path):
    from backend.bench.synthetic import make_sample
    from backend.facemodel import load_face_model
    try:
        model = load_face_model()
    except Exception:
        pytest.skip("no ICT-FaceKit assets")
    a = make_sample(7, 3, model, [], [], tmp_path / "a", side=192)
    b = make_sample(7, 3, model, [], [], tmp_path / "b", side=192)
    from PIL import Image
    ia, ib = np.asarray(Image.open(a.image)), np.asarray(Image.open(b.image))
    assert np.array_equal(ia, ib) and ia.std() > 5
    ta, tb = np.load(a.truth), np.load(b.truth)
    assert np.array_equal(ta["vertices"], tb["vertices"]) and a.params == b.params
    c = make_sample(8, 3, model, [], [], tmp_path / "c", side=192)
    assert not np.array_equal(np.load(c.truth)["identity"], ta["identity"])


def test_bench_refuses_without_a_task(capsys):
    assert main([]) == 2
    assert main(["--data", "/nonexistent/folder"]) == 2


# ---------------------------------------------------------------------------------------------
# Relighting rows (issue #8)


def test_relighting_rows_exist_and_are_sane(bench_run):
    _, out, rep = bench_run
    rel = rep["synthetic"]["relight"]
    assert rel["variants"]["baseline"] == "v0 projection" and not rel["reused"]["baseline"]  # generated is the default
    kinds = [r["relight"]["capture_light"] for r in rep["synthetic"]["samples"]]
    assert kinds.count("directional") == 1, kinds                    # sample 1 of 3 has the hard light
    for r in rep["synthetic"]["samples"]:
        cur, base = r["relight"]["current"], r["relight"]["baseline"]
        for m in (cur, base):
            assert 12 < m["albedo_psnr_db"] < 45 and 0.3 < m["albedo_ssim"] < 1, m
            assert 10 < m["relit_psnr_db"] < 45 and 0.3 < m["relit_ssim"] < 1 and 0 <= m["relit_lpips"] < 0.6, m
            assert 0 <= m["leakage_true_r"] <= 1 and 0 <= m["truth_albedo_r"] <= 1
            assert m["albedo_texels"] > 10000 and m["relit_pixels"] > 2000
            assert all(0.2 < g < 4 for g in m["albedo_gain"])
        assert cur["relit_oracle_psnr_db"] > 10
    # The de-lit map keeps less of the capture's light than the projected photo does.
    hard = [r["relight"] for r in rep["synthetic"]["samples"] if r["relight"]["capture_light"] == "directional"][0]
    assert hard["current"]["leakage_true_r"] < hard["baseline"]["leakage_true_r"]
    assert sum(b["n"] for b in rel["by_yaw"]) == 3 and rel["by_capture_light"]["directional"]["n"] == 1
    for p in rep["sets"][0]["photos"]:
        m = p["relight"]["current"]
        assert m["lighting"] and m["shading_leakage"] is not None and 0 <= m["shading_leakage"] < 0.5
        assert 0 <= m["hair_leakage"] <= 1 and m["seen_texels"] > 20000 and m["skin_texels"] > 10000
        assert 0.85 < m["rerender_ssim"] <= 1 and 25 < m["rerender_psnr_db"] < 60 and 0 <= m["rerender_lpips"] < 0.2
    text = (out / "report.md").read_text()
    for heading in ("## Relighting: synthetic truth", "## Relighting: photos", "### Relit PSNR"):
        assert heading in text
    assert "≥ v0 + 3 dB in every yaw bin" in text


def test_hair_leakage_catches_a_projected_fringe(bench_run):
    """v0 projects 003_03's fringe onto the forehead (measured 7 %); the de-lit map leaves hair out (target
    at most 1 %); 001_03 shows no hair on the face tile either way."""
    _, _, rep = bench_run
    photos = {p["name"]: p["relight"] for p in rep["sets"][0]["photos"]}
    assert photos["003_03.jpg"]["baseline"]["hair_leakage"] > 0.01, photos["003_03.jpg"]
    assert photos["003_03.jpg"]["current"]["hair_leakage"] < 0.01, photos["003_03.jpg"]
    assert photos["001_03.jpg"]["baseline"]["hair_leakage"] < photos["003_03.jpg"]["baseline"]["hair_leakage"] / 3


def test_shadow_map_darkens_what_lies_under_an_occluder():
    import torch
    from backend.bench.render import shadow_factor

    def square(half, z):
        return [[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]]

    verts = torch.tensor(square(1.0, 2.0) + square(5.0, 0.0), dtype=torch.float64)
    tris = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    points = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.5, 0.0], [3.0, 3.0, 0.0], [0.0, 0.0, 2.0], [-1.5, 0.0, 0.0]],
                          dtype=torch.float64)
    lit = shadow_factor(points, verts, tris, torch.tensor([0.0, 0.0, 1.0]), side=256).numpy()
    assert lit.tolist() == [0, 0, 1, 1, 1]      # shadowed: only what lies under the small square
    # Light from +x, 37 deg off the normal: the shadow moves 2 cm x 0.75 towards -x, to x in [-2.5, -0.5].
    slanted = shadow_factor(points, verts, tris, torch.tensor([0.6, 0.0, 0.8]), side=256).numpy()
    assert slanted.tolist() == [1, 1, 1, 1, 0]


def test_a_hard_light_casts_the_nose_shadow_on_the_cheek():
    """render_head with a light from the subject's right: the nose shadows part of the cheek (pixels that
    are lit when the shadow test is off), and the shadow test never brightens a pixel."""
    from backend.bench.render import Light, mesh_from_model, render_head
    from backend.bench.synthetic import rotation_ypr
    from backend.camera import Intrinsics
    from backend.facemodel import load_face_model
    try:
        model = load_face_model()
    except Exception:
        pytest.skip("no ICT-FaceKit assets")
    verts = model.neutral.numpy()
    k = Intrinsics(600.0, 128.0, 128.0, 256, 256)
    rot = rotation_ypr(0.0, 0.0, 0.0)
    trans = np.array([0.0, 0.0, -60.0]) - rot @ verts[:6706].mean(0)
    d = np.array([-0.8, 0.1, 0.6])
    light = Light(np.zeros((9, 3)), d / np.linalg.norm(d), np.ones(3))
    tiles = {1001: np.full((8, 8, 3), 0.5, np.float32), 1002: np.full((8, 8, 3), 0.5, np.float32)}
    bg = np.zeros((256, 256, 3), np.uint8)
    mesh = mesh_from_model(model, verts)
    hard = render_head(mesh, k, rot, trans, tiles, light, bg, supersample=1)
    soft = render_head(mesh, k, rot, trans, tiles, light, bg, supersample=1, shadows=False)
    face = hard.face_skin & soft.face_skin
    a, b = hard.image.astype(int).sum(2), soft.image.astype(int).sum(2)
    assert (a <= b + 3)[face].all()
    shadowed = face & (b > 150) & (a < b / 3)
    assert shadowed.sum() > 150, shadowed.sum()
    ys, xs = np.nonzero(shadowed)
    assert np.median(xs) > 128     # the light comes from image-left (the subject's right): shadows fall right


def test_texel_points_and_normals_are_in_camera_space():
    """The UV measures read each texel's point and normal on the posed head: R X + t and R n (a yawed
    head, so model-space values would differ), interpolated with the texel's barycentrics."""
    import torch
    from backend import render
    from backend.bench import relight
    from backend.bench.render import Head, mesh_from_model
    from backend.bench.synthetic import rotation_ypr
    from backend.camera import Intrinsics
    from backend.facemodel import load_face_model
    try:
        model = load_face_model()
    except Exception:
        pytest.skip("no ICT-FaceKit assets")
    mesh = mesh_from_model(model, model.neutral.numpy())
    rot, trans = rotation_ypr(40.0, -10.0, 5.0), np.array([1.0, -2.0, -60.0])
    head = Head(mesh, Intrinsics(600.0, 128.0, 128.0, 256, 256), rot, trans, {})
    layout = relight.texel_layout(mesh, side=128)
    assert layout.face.any() and (~layout.face).any()
    p, n = relight.texel_geometry(head, layout)
    corner, b = mesh.triangles[layout.triangle], layout.bary[..., None]
    model_p = (mesh.vertices[corner].astype(np.float64) * b).sum(1)
    vn = render.vertex_normals(torch.from_numpy(mesh.vertices.astype(np.float64)), torch.from_numpy(mesh.triangles)).numpy()
    model_n = (vn[corner] * b).sum(1)
    model_n /= np.linalg.norm(model_n, axis=1, keepdims=True)
    assert np.allclose(p, model_p @ rot.T + trans, atol=1e-4)
    assert np.allclose(n, model_n @ rot.T, atol=1e-4)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0)


def _truth_case(bench_run, index: int):
    from backend.bench.synthetic import truth_head, truth_light
    from backend.facemodel import load_face_model
    _, out, _ = bench_run
    path = out / "synthetic" / "truth" / f"synth_{index:04d}.npz"
    model = load_face_model()
    return model, path, truth_head(path, model), truth_light(np.load(path))


def _perfect(truth, scale=(1.0, 1.0, 1.0), lighting=None):
    """The truth as a reconstruction: its albedo (times a per-channel scale) as the diffuse, all seen."""
    from backend.bench.render import Head
    tiles = {t: img * np.asarray(scale, np.float32) for t, img in truth.tiles.items()}
    return Head(truth.mesh, truth.k, truth.rotation, truth.translation, tiles,
                {1001: np.ones((64, 64), np.float32)}, lighting, "perfect")


def test_a_perfect_reconstruction_scores_high(bench_run):
    """Truth albedo as the diffuse (scaled per channel: the gain alignment must undo it) on the true mesh."""
    from backend.bench import relight
    from backend.bench.synthetic import relight_light
    _, _, truth, capture = _truth_case(bench_run, 1)
    assert capture.kind == "directional"
    perfect = _perfect(truth, scale=(0.55, 0.7, 0.9))
    a = relight.albedo_error(perfect, truth)
    assert a["albedo_psnr_db"] > 60 and a["albedo_ssim"] > 0.999, a
    assert np.allclose(a["albedo_gain"], [1 / 0.55, 1 / 0.7, 1 / 0.9], rtol=1e-4)
    light = relight_light(0, 1)
    e = relight.relit_error(relight.relit_render(perfect, light, 512, a["albedo_gain"]),
                            relight.relit_render(truth, light, 512))
    assert e["relit_psnr_db"] > 45 and e["relit_ssim"] > 0.995, e


def test_keeping_the_light_scores_worse(bench_run):
    """v0 on the hard-light sample, with the true geometry: the rendered image projected back keeps the
    capture's shading and shadows, so its albedo is worse than a perfect one and follows the true shading."""
    import torch
    from PIL import Image
    from backend.bench import relight
    from backend.bench.render import Head
    from backend.bench.synthetic import relight_light
    from backend.scene import known_scene
    from backend.texture import project_texture
    model, path, truth, capture = _truth_case(bench_run, 1)
    image = np.asarray(Image.open(path.parent.parent / "images" / "synth_0001.jpg"))
    obs, fit = known_scene(image, truth.k, torch.from_numpy(truth.rotation).float(),
                           torch.from_numpy(truth.translation).float(), torch.from_numpy(truth.mesh.vertices))
    tex = project_texture(obs, fit, model, 512)
    v0 = Head(truth.mesh, truth.k, truth.rotation, truth.translation, tex.maps["diffuse"], tex.maps["visibility"])
    a = relight.albedo_error(v0, truth)
    assert 12 < a["albedo_psnr_db"] < 30 and a["albedo_ssim"] < 0.95, a
    leak = relight.true_shading_leakage(v0, truth, capture)
    assert leak["leakage_true_r"] > 0.5 and leak["leakage_true_r"] > leak["truth_albedo_r"] + 0.2, leak
    light = relight_light(0, 1)
    truth_relit = relight.relit_render(truth, light, 512)
    e = relight.relit_error(relight.relit_render(v0, light, 512, a["albedo_gain"]), truth_relit)
    assert e["relit_psnr_db"] < 30, e
    perfect = relight.true_shading_leakage(_perfect(truth), truth, capture)
    assert perfect["leakage_true_r"] == pytest.approx(perfect["truth_albedo_r"])


def test_photo_rerender_with_a_fitted_lighting(bench_run):
    """The photo rows on an SH-lit synthetic head, where the true lighting is known: the truth albedo
    times the true shading re-renders the image (up to noise and JPEG); a v0 map (the image itself)
    under that lighting counts the light twice and correlates with the shading."""
    from PIL import Image
    from backend.bench import relight
    from backend.bench.render import Light, head_of_bundle
    _, path, truth, capture = _truth_case(bench_run, 0)
    assert capture.kind == "sh"
    image = np.asarray(Image.open(path.parent.parent / "images" / "synth_0000.jpg"))
    skin = relight.relit_render(truth, capture, 512).face_skin.astype(np.float32)
    hair = np.zeros_like(skin)
    good, _ = relight.photo_measures(_perfect(truth, lighting=capture.sh), image, skin, hair)
    assert good["lighting"] and good["hair_leakage"] == 0
    assert good["rerender_psnr_db"] > 33 and good["rerender_ssim"] > 0.95, good
    v0 = head_of_bundle(path.parent.parent / "bundles.baseline" / "synth_0000")
    v0.lighting = capture.sh
    bad, _ = relight.photo_measures(v0, image, skin, hair)
    assert bad["rerender_psnr_db"] < good["rerender_psnr_db"] - 3, (good, bad)
    assert bad["shading_leakage"] > max(1.5 * good["shading_leakage"], good["shading_leakage"] + 0.1), (good, bad)
    assert Light(capture.sh).kind == "sh"

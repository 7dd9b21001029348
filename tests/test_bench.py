"""`python -m backend bench` end to end on 3 London photos and 3 synthetic heads (about 1 minute on 2 cores)."""
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
               "--texture-cache", str(root / "textures")])
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

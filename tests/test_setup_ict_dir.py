"""`python -m backend setup --ict-dir DIR` remembers DIR (it used to exit 0 and save nothing, so only an
environment variable worked), and its messages name the Blender button, never make or a checkout. Set-up
requires MediaPipe's segmentation models (saying where they come from), writes the face model file once and
is quick when all is in place; Check Backend checks the prepared segmentation models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKED = REPO.parent / "shared" / "assets" / "ict-facekit"
SAMPLE = REPO.parent / "shared" / "assets" / "ict-facekit-upstream-sample"


def _py(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")}
    env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_ict_dir_is_remembered(tmp_path):
    if not (PACKED / "shape_modes.npz").is_file():
        pytest.skip("no packed ICT-FaceKit")
    mine = tmp_path / "my-ict"
    mine.mkdir()
    for f in PACKED.iterdir():
        (mine / f.name).symlink_to(f)
    cp = _py(f"from backend.setup_assets import ensure_ict; print(ensure_ict({str(mine)!r}))", tmp_path / "cache")
    assert cp.returncode == 0, cp.stderr
    saved = json.loads((tmp_path / "cache" / "likeness" / "settings.json").read_text())
    assert saved["ict_dir"] == str(mine)
    cp = _py("from backend.paths import ict_candidates; print(ict_candidates()[0])", tmp_path / "cache")
    assert cp.stdout.strip() == str(mine), "a later run looks there first, without LIKENESS_ICT_DIR"


def test_incomplete_upstream_folder_is_refused_and_nothing_saved(tmp_path):
    if not (SAMPLE / "FaceXModel").is_dir():
        pytest.skip("no upstream sample")
    cp = _py(f"from backend.setup_assets import ensure_ict; ensure_ict({str(SAMPLE / 'FaceXModel')!r})", tmp_path / "c")
    assert cp.returncode != 0 and "ASSETS_MISSING" in cp.stderr and "identity002" in cp.stderr
    assert not (tmp_path / "c" / "likeness" / "settings.json").exists()


def test_messages_name_the_button_not_make(tmp_path):
    code = ("import backend.paths as p\n"
            "p.ict_candidates = lambda e=None: []\n"
            "p.landmarker_candidates = lambda e=None: []\n"
            "for f in (p.find_ict_dir, p.find_landmarker):\n"
            "    try: f()\n"
            "    except Exception as e: print(e)\n")
    cp = _py(code, tmp_path / "c")
    assert cp.stdout.count("Install Backend") == 2, cp.stdout
    assert "make" not in cp.stdout and "checkout" not in cp.stdout


# -- the rest of `python -m backend setup`: segmentation required, face model file, Check Backend -------------

SEGMENTATION = REPO.parent / "shared" / "assets" / "mediapipe-segmentation"
LANDMARKER = REPO / ".cache" / "face_landmarker.task"


def _setup(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """python -m backend.setup_assets with the packed ICT and the project's landmarker, a fresh user cache."""
    if not (PACKED / "shape_modes.npz").is_file() or not LANDMARKER.is_file():
        pytest.skip("no packed ICT-FaceKit or no face_landmarker.task (make setup)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    return subprocess.run([sys.executable, "-m", "backend.setup_assets", "--ict-dir", str(PACKED),
                           "--landmarker", str(LANDMARKER), "--cache-dir", str(tmp_path / "cache"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_setup_requires_the_segmentation_models(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cp = _setup(tmp_path, "--segmentation-dir", str(empty), "--no-face-model")
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    msg = cp.stderr.strip().splitlines()[-1]
    assert msg.startswith("ASSETS_MISSING: hair_segmentation.tflite not found") and "Traceback" not in cp.stderr
    assert "google-ai-edge/mediapipe" in msg and "63e679d99ca45b30514a9d84c9351a2d77bb9ba0" in msg
    assert "mediapipe/models/hair_segmentation.tflite" in msg
    assert "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite" in msg
    assert "Install Backend" in msg and "Install from Folder" in msg and "--segmentation-dir" in msg
    assert "make" not in msg and "checkout" not in msg


def test_setup_writes_the_face_model_once_and_is_quick_after(tmp_path):
    if not (SEGMENTATION / "hair_segmentation.tflite").is_file():
        pytest.skip("no segmentation models")
    from backend.setup_assets import face_model_hash
    cp = _setup(tmp_path, "--segmentation-dir", str(SEGMENTATION))
    assert cp.returncode == 0, cp.stderr
    models = tmp_path / "xdg" / "likeness" / "models"
    written = sorted(models.iterdir())
    # the name setup predicts without torch is the one bundle.ensure_model_file writes (and the importer reads)
    assert [p.name for p in written] == [f"{face_model_hash(PACKED)[:16]}.npz"], written
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "hair_segmentation.rgb-metadata.tflite", "selfie_segmentation.metadata.tflite"]
    before = written[0].stat().st_mtime_ns
    t0 = time.monotonic()
    cp = _setup(tmp_path)  # everything in place: no source needed, nothing written, no torch
    wall = time.monotonic() - t0
    assert cp.returncode == 0, cp.stderr
    assert written[0].stat().st_mtime_ns == before and "writing" not in cp.stderr and "prepared" not in cp.stderr
    assert wall < 2.0, f"setup with everything in place took {wall:.2f} s"


def test_check_backend_checks_the_prepared_segmentation_models(tmp_path, monkeypatch):
    if not (SEGMENTATION / "hair_segmentation.tflite").is_file():
        pytest.skip("no segmentation models")
    from backend import doctor, segmentation_models
    from backend.setup_assets import ensure_segmentation
    monkeypatch.setattr(doctor, "PACKAGES", ())             # the packages are not what this test is about
    monkeypatch.setattr(segmentation_models, "cache_dirs", lambda: [tmp_path / "cache"])

    def seg_problems():
        return [p for p in doctor.check(load_model=False)["problems"] if "segmentation" in p["what"]]
    missing = seg_problems()
    assert [p["fix"] for p in missing] == ["install", "install"], missing
    assert "hair" in missing[0]["what"] and "not prepared" in missing[0]["what"] and "person" in missing[1]["what"]
    paths = ensure_segmentation(SEGMENTATION, tmp_path / "cache")
    out = doctor.check(load_model=False)
    assert out["segmentation"] == {k: str(p) for k, p in paths.items()} and not seg_problems()
    paths["hair"].write_bytes(b"not the model")
    damaged = seg_problems()
    assert len(damaged) == 1 and "damaged" in damaged[0]["what"] and damaged[0]["fix"] == "install"

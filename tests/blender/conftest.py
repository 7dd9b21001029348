"""Fixtures for the Blender-side tests (real bpy as a module; the real backend as a subprocess)."""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Keep Blender's user folders (extensions, config) out of ~/.config: set before bpy is imported.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="likeness-bl-user-"))

import bpy  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VENV_PY = REPO / ".venv" / "bin" / "python"
FACES = REPO.parent / "shared" / "data" / "faces" / "london" / "neutral"
FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
# Blender's own extension tool, shipped inside the bpy wheel.
BLENDER_EXT = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the real backend or renders (seconds to a minute)")


def load_extension(name: str = "likeness"):
    """Import the repository root as the package `name` (what Blender does for the extension)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def likeness():
    mod = load_extension()
    mod.register()
    yield mod
    mod.unregister()


@pytest.fixture
def empty_scene(likeness):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield bpy.context.scene


@pytest.fixture
def settings(likeness, tmp_path, monkeypatch):
    """Point the add-on at the project's backend and a fresh results folder."""
    from likeness.operators import common
    s = common.Settings(backend_python=str(VENV_PY), backend_cwd=str(REPO), device="cpu",
                        texture_size=512, results_dir=str(tmp_path / "results"), timeout_s=120.0)
    os.makedirs(s.results_dir, exist_ok=True)
    monkeypatch.setattr(common, "settings", lambda context=None: s)
    return s


@pytest.fixture
def fake_worker(likeness, monkeypatch):
    """fake_worker(mode): make the generate operator start tests/blender/fake_worker.py MODE."""
    from likeness.operators import generate

    def use(mode: str):
        monkeypatch.setattr(generate, "worker_args", lambda: [str(FAKE_WORKER), mode])
    yield use
    generate.shutdown_workers()


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    found = sorted(FACES.glob("*.jpg"))
    assert len(found) >= 3, f"face photos missing under {FACES}"
    return found


def snapshot() -> dict:
    """Names of every datablock kind an import or a preset could create, plus the scene tree."""
    d = bpy.data
    snap = {k: sorted(x.name for x in getattr(d, k)) for k in
            ("objects", "meshes", "materials", "images", "collections", "lights", "worlds",
             "cameras", "node_groups", "shape_keys")}
    snap["scene_objects"] = sorted(o.name for o in bpy.context.scene.objects)
    snap["scene_world"] = bpy.context.scene.world.name if bpy.context.scene.world else None
    return snap


def drive(gen_module, timeout: float = 300.0, interval: float = 0.05) -> int:
    """Run the bpy.app.timers function ourselves (timers never fire with bpy as a module)."""
    import time
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < timeout:
        nxt = gen_module.tick()
        n += 1
        if nxt is None:
            return n
        time.sleep(interval)
    raise AssertionError(f"generation did not finish within {timeout} s")

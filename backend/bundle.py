"""The result bundle, backend side: the one module that writes it and reads it (docs/bundle.md, schema 2).

A bundle is one folder. It is written into a temporary sibling folder and renamed into place at the
end, so a folder that holds result.json is always complete and a failure or a cancel leaves nothing
behind. What counts as "our bundle" is decided here and nowhere else: the marker file
`.likeness-bundle.json` that we write, listing the files we wrote (v1 bundles, which predate it, are
recognised by their result.json and only the files it lists count as ours). Nothing that we did not
write is ever deleted or replaced: an existing bundle is replaced only when asked (overwrite), and
files a user put inside it are carried over into the new one.

Per photo the bundle stores only what differs per photo: fitted vertices (mesh.npz, about 0.6 MB),
the maps, the preview and result.json. Topology, UVs, parts and expression deltas are the face
model's: result.json names the model by hash, and the model file (`<hash16>.npz`, about 10 MB) is
written once per model into the per-user cache (or into the bundle with `embed_model`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from . import __version__
from .cache import write_npz_atomic
from .colour import encode_srgb8, to_unorm8
from .errors import LikenessError
from .facemodel import PART_NAMES, VERTEX_RANGES, FaceModel
from .paths import USER_CACHE
from .skin_maps import encode_normal16

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
RESULT_NAME = "result.json"
MARKER_NAME = ".likeness-bundle.json"
TEMP_MARKER = ".likeness-temp.json"
MARKER_FORMAT = "likeness-bundle"
MODEL_CACHE_DIR = USER_CACHE / "models"
MODEL_FILE_FORMAT = "likeness-face-model"
STALE_FOREIGN_HOST_S = 24 * 3600  # a temp folder of another machine (network drive) is stale after a day

# Preview pictures by role: the fit over the photo (the photo's aspect), the photometric fit's panels.
PREVIEW_FILES = {"preview": "preview.png", "photometric_preview": "photometric.png"}

# Per map role: how the float map is encoded (8 bits; the normal map 16 bits, so that flat stays flat:
# skin_maps.encode_normal16), and the colour space Blender must read it in.
MAP_ENCODING = {
    "diffuse": (encode_srgb8, "sRGB"),
    "specular": (to_unorm8, "Non-Color"),
    "roughness": (to_unorm8, "Non-Color"),
    "normal": (encode_normal16, "Non-Color"),
    "visibility": (to_unorm8, "Non-Color"),
}
# Whole images without a tile (TextureResult.images), by role: file name and colour space.
IMAGE_FILES = {"eyes": ("eyes.png", "sRGB")}


# ---------------------------------------------------------------------------------------------
# What is ours


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting too deep for the parser
        return None


def owned_files(folder: Path) -> set[str] | None:
    """The names of the files in `folder` that we wrote, if it is one of our bundles; else None."""
    folder = Path(folder)
    marker = _read_json(folder / MARKER_NAME)
    if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and isinstance(marker.get("files"), list):
        return {str(f) for f in marker["files"] if isinstance(f, str)} | {MARKER_NAME}
    legacy = _read_json(folder / RESULT_NAME)  # schema 1: no marker; its result.json lists what it wrote
    if (isinstance(legacy, dict) and legacy.get("schema_version") == 1
            and (legacy.get("software") or {}).get("name") == "likeness" and isinstance(legacy.get("files"), list)):
        return {str(f.get("path")) for f in legacy["files"] if isinstance(f, dict)} | {RESULT_NAME}
    return None


def is_bundle(folder: Path) -> bool:
    """A complete bundle of ours (the marker and result.json are the last files written)."""
    folder = Path(folder)
    return folder.is_dir() and owned_files(folder) is not None and (folder / RESULT_NAME).is_file()


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse early, before any work, to touch what is there, or to write where we cannot. An empty
    folder may be used; an existing bundle of ours only with overwrite; anything else never."""
    out_dir = Path(out_dir).absolute()
    _check_writable(out_dir.parent)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} exists and is not a folder; choose another output")
    if not any(out_dir.iterdir()):
        return
    if not is_bundle(out_dir):
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} holds files that are not a Likeness bundle; not touching them")
    if not overwrite:
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} already holds a bundle; choose another folder or allow overwrite")


def _check_writable(parent: Path) -> None:
    """WRITE_FAILED now, not after minutes of work, when the bundle's folder cannot be created: the
    nearest existing folder up from `parent` must let us create entries (a read-only disk or folder
    fails here; a full disk can only be found out by writing)."""
    folder = parent
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise LikenessError("WRITE_FAILED", f"cannot write the bundle in {folder}: the folder is read-only "
                            "or not ours; choose another output folder")


# ---------------------------------------------------------------------------------------------
# Staged writing


def _temp_marker(role: str, out_name: str) -> dict:
    """What the sweep needs to tell a live job's folder from a dead one's: who wrote it, where, when."""
    return {"format": "likeness-temp", "role": role, "bundle": out_name, "pid": os.getpid(),
            "host": socket.gethostname(), "time": time.time()}


def _write_temp_marker(folder: Path, role: str, out_name: str) -> None:
    with open(folder / TEMP_MARKER, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(_temp_marker(role, out_name)))


def _process_gone(pid: int, since: float) -> bool:
    """True when process `pid` no longer runs, or a later process has taken its number (it started
    after the marker was written)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in requirements.txt
        psutil = None
    if pid <= 0:
        return True
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > since + 1.0
        except psutil.NoSuchProcess:
            return True
        except (psutil.Error, OSError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _temp_name(out_name: str, kind: str) -> str:
    return f".{out_name}.{kind}-{uuid.uuid4().hex[:8]}"


def _parse_temp_name(name: str) -> tuple[str, str] | None:
    """`.<bundle>.tmp-<8 hex>` or `.<bundle>.old-<8 hex>` -> (bundle, kind); else None."""
    if not name.startswith(".") or len(name) < 15 or name[-9] != "-" or not set(name[-8:]) <= _HEX:
        return None
    kind = name[-12:-9]
    if name[-13] != "." or kind not in ("tmp", "old"):
        return None
    return name[1:-13], kind


_HEX = set("0123456789abcdef")
UNMARKED_TEMP_AGE_S = 600   # an empty temp folder without a marker (killed between mkdir and marker)


def sweep_stale(parent: Path) -> list[str]:
    """Tidy what killed jobs left in `parent` (SIGKILL, power loss); returns the names handled.
    Only folders named like ours (`.<bundle>.tmp-*`, `.<bundle>.old-*`) that hold our temp marker and
    whose job is gone (its process ended on this machine, or a day passed on another), and of those
    only the files we wrote:
    - a set-aside old bundle (`.old-`) goes back to `<bundle>` if nothing is there (the job died
      between its two renames), else its files that are not ours move into `<bundle>`;
    - a temporary folder (`.tmp-`) is deleted (all in it is ours: a job writes nothing else there);
    - an empty temporary folder without a marker is removed once it is UNMARKED_TEMP_AGE_S old."""
    handled = []
    try:
        entries = sorted(Path(parent).iterdir(), key=lambda p: ".tmp-" in p.name)  # restore olds first
    except OSError:
        return handled
    host = socket.gethostname()
    for d in entries:
        parsed = _parse_temp_name(d.name)
        if parsed is None or d.is_symlink() or not d.is_dir():
            continue
        bundle_name, kind = parsed
        m = _read_json(d / TEMP_MARKER)
        try:
            if not (isinstance(m, dict) and m.get("format") == "likeness-temp"):
                if kind == "tmp" and time.time() - d.stat().st_mtime > UNMARKED_TEMP_AGE_S:
                    d.rmdir()  # only ever succeeds on an empty folder
                    handled.append(d.name)
                continue
            when = float(m.get("time", 0))
            if m.get("host") == host:
                stale = _process_gone(int(m.get("pid", -1)), when)
            else:
                stale = time.time() - when > STALE_FOREIGN_HOST_S
            if not stale:
                continue
            if kind == "old":
                _settle_old(d, Path(parent) / bundle_name)
            else:
                _remove_ours(d, allow_unlisted=True)
            handled.append(d.name)
        except (OSError, ValueError, TypeError):
            continue  # never let tidying up fail a job
    return handled


def _settle_old(old: Path, out_dir: Path) -> list[str]:
    """Finish with a set-aside old bundle: put it back if out_dir is free, else carry the user's files
    (anything we did not write) into out_dir and delete ours. Returns warnings."""
    if not out_dir.exists() and not out_dir.is_symlink():
        os.rename(old, out_dir)
        with contextlib.suppress(OSError):
            (out_dir / TEMP_MARKER).unlink()
        return [f"restored {out_dir.name} from an interrupted overwrite"]
    if not is_bundle(out_dir):  # someone else's folder is there now: leave the old bundle as it is
        return [f"kept {old}: {out_dir} is not a bundle of ours"]
    warnings = []
    ours = owned_files(old) or set()
    for p in list(old.iterdir()):
        if p.name in ours or p.name == TEMP_MARKER:
            continue
        if (out_dir / p.name).exists() or (out_dir / p.name).is_symlink():
            warnings.append(f"kept your {p.name} in {old}: the new bundle has a file of that name")
            continue
        os.rename(p, out_dir / p.name)
    if not _remove_ours(old):
        warnings.append(f"kept {old}: it holds files that are not ours")
    return warnings


def _remove_ours(folder: Path, allow_unlisted: bool = False) -> bool:
    """Delete the files we wrote in `folder` and the folder if that empties it. A temp folder holds only
    what we wrote (allow_unlisted); a set-aside old bundle keeps anything not listed as ours. The temp
    marker goes last, so an interrupted removal is still recognised as ours."""
    ours = owned_files(folder) or set()
    for p in list(folder.iterdir()):
        if p.name != TEMP_MARKER and (p.name in ours or (allow_unlisted and (p.is_file() or p.is_symlink()))):
            with contextlib.suppress(OSError):
                p.unlink()
    with contextlib.suppress(OSError):
        (folder / TEMP_MARKER).unlink()
    try:
        folder.rmdir()
        return True
    except OSError:
        return False


def _rename_no_replace(src: Path, dst: Path) -> None:
    """Rename folder src to dst, never replacing anything at dst but an empty folder."""
    if dst.exists() or dst.is_symlink():
        if dst.is_symlink() or not dst.is_dir():
            raise LikenessError("OUTPUT_EXISTS", f"{dst} appeared while the bundle was written; the result was not kept")
        try:
            dst.rmdir()  # an empty folder is taken over; a non-empty one raises
        except OSError:
            raise LikenessError("OUTPUT_EXISTS", f"{dst} was filled while the bundle was written; "
                                "the new result was not kept") from None
    try:
        os.rename(src, dst)  # POSIX replaces at most an empty folder created since; never a non-empty one
    except OSError as exc:
        raise LikenessError("OUTPUT_EXISTS", f"could not put the bundle at {dst} ({exc.strerror or exc}); "
                            "something else was created there") from exc


def _commit(tmp: Path, out_dir: Path, overwrite: bool) -> list[str]:
    """Move the finished temp folder into place (it still holds its temp marker, so that a job killed
    here leaves a folder the sweep recognises). Returns warnings (files of the user kept elsewhere)."""
    if not (out_dir.exists() and any(out_dir.iterdir())):
        _rename_no_replace(tmp, out_dir)
        _drop_temp_marker(out_dir)
        return []
    ours = owned_files(out_dir)
    if ours is None or not overwrite:  # it changed since check_output: never touch it
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} was changed while the bundle was written; "
                            "the new result was not kept")
    # Overwrite: set the old bundle aside (marked first, so that if we die between the two renames the
    # sweep puts it back), put the new one in place, then carry the user's files over.
    old = out_dir.parent / _temp_name(out_dir.name, "old")
    _write_temp_marker(out_dir, "old", out_dir.name)
    try:
        os.rename(out_dir, old)
    except OSError as exc:
        with contextlib.suppress(OSError):
            (out_dir / TEMP_MARKER).unlink()
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} changed while the bundle was written "
                            f"({exc.strerror or exc}); the new result was not kept") from exc
    try:
        _rename_no_replace(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)  # put the old bundle back as it was
        with contextlib.suppress(OSError):
            (out_dir / TEMP_MARKER).unlink()
        raise
    _drop_temp_marker(out_dir)
    try:
        return _settle_old(old, out_dir)
    except OSError as exc:  # the new bundle is in place; the old one waits for the next sweep
        return [f"kept {old} ({exc.strerror or exc}): the next job in this folder finishes moving your files"]


def _drop_temp_marker(folder: Path) -> None:
    with contextlib.suppress(OSError):
        (folder / TEMP_MARKER).unlink()


@contextlib.contextmanager
def staged_bundle(out_dir: Path, overwrite: bool = False):
    """Yield a temporary folder next to out_dir; on success it becomes out_dir, else it is removed.
    The yielded object's `warnings` list receives what the commit had to say. Any OSError (a folder
    that is not writable, a full disk) becomes WRITE_FAILED, with nothing left behind."""
    from .signals import critical
    out_dir = Path(out_dir).absolute()
    check_output(out_dir, overwrite)
    tmp = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out_dir.parent)
        tmp = out_dir.parent / _temp_name(out_dir.name, "tmp")
        tmp.mkdir()
        _write_temp_marker(tmp, "tmp", out_dir.name)
        stage = _Stage(tmp)
        yield stage
        with critical():  # a SIGTERM waits for the renames: never between "old aside" and "new in place"
            stage.warnings += _commit(tmp, out_dir, overwrite)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(out_dir, exc) from exc
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


class _Stage:
    def __init__(self, path: Path):
        self.path = path
        self.warnings: list[str] = []

    def __truediv__(self, name: str) -> Path:
        return self.path / name


def _write_error(out_dir: Path, exc: OSError) -> LikenessError:
    return LikenessError("WRITE_FAILED", f"cannot write the bundle at {out_dir}: {exc.strerror or exc} "
                         "(is the folder writable and the disk not full?)")


def png_bytes(image: np.ndarray, name: str = "image") -> bytes:
    """PNG of an (H, W) or (H, W, 3) RGB uint8 or uint16 array; fast compression (these are big)."""
    img = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode {name}")
    return buf.tobytes()


def write_png(path: Path, image: np.ndarray) -> None:
    with open(path, "wb") as fh:  # OSError (ENOSPC, EACCES) propagates: the stage turns it into WRITE_FAILED
        fh.write(png_bytes(image, path.name))


def write_pngs(folder: Path, images: list[tuple[str, Callable[[], np.ndarray]]], cancel_check: Callable[[], None],
               workers: int = 2) -> None:
    """Write (name, make image) as PNGs in order, with a cancel check before making each, after writing
    each and while waiting for one. This thread makes each image while OpenCV's PNG encoder, which
    releases the GIL, compresses the previous ones on `workers` threads (a bundle's 13 PNGs took 0.6 s
    of its write stage one by one). Only the encoding runs there, and at most `workers` + 1 images are
    alive at once: with whole images made on the pool, the peak memory of a reconstruct rose by 300-400 MB
    (measured)."""
    import collections
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="likeness-png")
    pending: collections.deque = collections.deque()

    def write_oldest() -> None:
        name, future = pending.popleft()
        while True:   # a 2048-px 16-bit PNG takes most of a second to encode: the wait stays cancellable
            try:
                data = future.result(timeout=0.1)
                break
            except FutureTimeout:
                cancel_check()
        with open(folder / name, "wb") as fh:
            fh.write(data)
        cancel_check()
    try:
        for name, make in images:
            cancel_check()
            pending.append((name, pool.submit(png_bytes, make(), name)))
            if len(pending) > workers:
                write_oldest()
        while pending:
            write_oldest()
    finally:
        # Not waiting: on a cancel or an error, an encoding still running only makes bytes in memory (the
        # files are written here, in this thread), and the caller's staged folder is removed at once.
        pool.shutdown(wait=False, cancel_futures=True)


def write_npz(path: Path, **arrays) -> None:
    """An npz built in memory (mesh.npz is 0.6 MB), then written in one go: a write that fails (a full
    disk) raises here, instead of leaving numpy's half-written zip to fail again when it is collected."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with open(path, "wb") as fh:
        fh.write(buf.getbuffer())


def write_json(path: Path, data) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------
# The face model file (topology, UVs, parts, expression deltas): once per model, not per photo


def model_file_name(model_hash: str) -> str:
    return f"{model_hash[:16]}.npz"


def model_file_arrays(model: FaceModel) -> dict[str, np.ndarray]:
    topo = model.topology
    return {
        "format": np.array(MODEL_FILE_FORMAT), "model_hash": np.array(model.hash),
        "num_vertices": np.array(model.num_vertices, dtype=np.int64),
        "face_sizes": topo.face_sizes.astype(np.int32),
        "face_vertex_indices": topo.face_vertex_indices.astype(np.int32),
        "corner_uvs": topo.corner_uvs.astype(np.float32),
        "face_part": topo.polygon_part.astype(np.int8),
        "part_names": np.array(PART_NAMES),
        "part_vertex_ranges": np.array(list(VERTEX_RANGES.values()), dtype=np.int32),
        "part_range_names": np.array(list(VERTEX_RANGES)),
        "expression_deltas": model.expression.cpu().numpy().astype(np.float16),
        "expression_names": np.array(model.expression_names),
    }


def ensure_model_file(model: FaceModel, cache_dir: Path | None = None) -> Path:
    """The model file in the per-user cache, written once (atomically) per model hash."""
    path = Path(cache_dir or MODEL_CACHE_DIR) / model_file_name(model.hash)
    if not path.is_file():
        write_npz_atomic(path, model_file_arrays(model), compressed=True)
    return path


# ---------------------------------------------------------------------------------------------
# Writing a bundle


def write_bundle(out_dir: Path, obs, fit, tex, model: FaceModel, extra: dict, hooks, *, overwrite: bool = False,
                 embed_model: bool = False, previews: dict[str, np.ndarray] | None = None,
                 timings: Callable[[], dict] = dict) -> dict:
    """Write the bundle of one reconstruction (scene.Observation, scene.SceneFit, scene.TextureResult);
    `extra` holds result.json's sections that the pipeline knows (options, warnings, provenance), and
    `timings()` is called just before result.json is written (so the write stage's own time is in it).
    Returns the result.json content. The model file is ensured in the user cache first."""
    try:
        model_path = ensure_model_file(model)
    except OSError as exc:
        raise LikenessError("WRITE_FAILED", f"cannot write the face model file in {MODEL_CACHE_DIR}: "
                            f"{exc.strerror or exc}") from exc
    with staged_bundle(out_dir, overwrite) as stage:
        files, pngs = [], []
        for role, (encode, colorspace) in MAP_ENCODING.items():
            for tile in sorted(tex.maps.get(role, {})):
                name = f"{role}.{tile}.png"
                pngs.append((name, lambda encode=encode, m=tex.maps[role][tile]: encode(m)))
                files.append({"path": name, "role": role, "tile": tile, "colorspace": colorspace})
        for role, image in (getattr(tex, "images", None) or {}).items():
            name, colorspace = IMAGE_FILES[role]
            pngs.append((name, lambda image=image: np.asarray(image)))
            files.append({"path": name, "role": role, "colorspace": colorspace})
        write_npz(stage / "mesh.npz", vertices=fit.vertices.detach().cpu().numpy().astype(np.float32),
                  basis_vertices=fit.basis_vertices.detach().cpu().numpy().astype(np.float32))
        files.insert(0, {"path": "mesh.npz", "role": "mesh"})
        if embed_model:
            shutil.copyfile(model_path, stage / model_file_name(model.hash))
            files.append({"path": model_file_name(model.hash), "role": "model"})
        for role, image in (previews or {}).items():
            name = PREVIEW_FILES[role]
            pngs.append((name, lambda image=image: image))
            files.append({"path": name, "role": role, "colorspace": "sRGB"})
        write_pngs(stage.path, pngs, hooks.cancel_check)
        result = result_json(obs, fit, tex, model, files, extra)
        result["timings_s"] = timings()
        write_json(stage / RESULT_NAME, result)
        marker = {"format": MARKER_FORMAT, "schema_version": SCHEMA_VERSION, "id": uuid.uuid4().hex,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": [f["path"] for f in files] + [RESULT_NAME]}
        write_json(stage / MARKER_NAME, marker)
        hooks.cancel_check()
    result["warnings"] = list(result["warnings"]) + stage.warnings
    return result


def _rounded(a, digits: int = 3) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def result_json(obs, fit, tex, model: FaceModel, files: list[dict], extra: dict) -> dict:
    from .camera import yaw_pitch_roll_deg
    photo, det, k = obs.photo, obs.detection, fit.intrinsics
    rot = fit.rotation.detach().cpu().numpy()
    yaw, pitch, roll = yaw_pitch_roll_deg(rot)
    lighting = None
    if fit.lighting is not None:
        lighting = {"model": "sh2-shading", "coefficients": _rounded(fit.lighting.detach().cpu().numpy(), 5),
                    "convention": "render.py: S(n) = sh_basis(n) @ coefficients (9, 3), camera-space normals"}
    return {
        "schema_version": SCHEMA_VERSION,
        "software": {"name": "likeness", "version": __version__, "torch": torch.__version__},
        "input": {"name": photo.name, "sha256": photo.sha256, "width": photo.width, "height": photo.height,
                  "rotation_deg": photo.rotation_deg},
        "files": files,
        "model": {"name": "ICT-FaceKit Light", "hash": model.hash, "file": model_file_name(model.hash),
                  "num_vertices": model.num_vertices},
        "camera": {"model": "perspective", "width": k.width, "height": k.height, "focal_px": k.focal_px,
                   "cx": k.cx, "cy": k.cy, "focal_source": "exif" if photo.focal_35mm else "default",
                   "convention": "Xc = R @ X + t; camera looks down -Z, +Y up; "
                                 "u = cx + f*Xc.x/-Xc.z, v = cy - f*Xc.y/-Xc.z (pixels, origin top-left)"},
        "pose": {"rotation": rot.tolist(), "translation_cm": fit.translation.detach().cpu().numpy().tolist(),
                 "yaw_deg": yaw, "pitch_deg": pitch, "roll_deg": roll},
        "identity": {"names": model.identity_names, "coefficients": fit.identity.cpu().numpy().tolist()},
        "expression": {"names": model.expression_names, "coefficients": fit.expression.cpu().numpy().tolist()},
        "lighting": lighting,
        "material": {"skin": {"ior": extra.get("skin_ior", 1.4), "specular_map": "Principled Specular IOR Level",
                              "normal_map": "tangent space, OpenGL (+Y up)"}},
        "detection": {"num_faces": det.num_faces, "face_box": [float(x) for x in det.box], "source": det.source,
                      "blendshapes": {k_: float(v) for k_, v in det.blendshapes.items()},
                      "landmarks_px": _rounded(det.points, 2)},
        "fit": {"settings": fit.settings, "terms": fit.terms, "correspondence_sha256": extra.get("correspondence_sha256")},
        "texture": {"strategy": tex.strategy, "size": tex.size, "info": tex.info},
        "options": extra.get("options", {}),
        "metrics": fit.metrics,
        "timings_s": {},
        "warnings": list(photo.warnings) + list(extra.get("warnings", [])),
    }


# ---------------------------------------------------------------------------------------------
# Reading (the bench, tests, scripts; the Blender side has its own reader, bundle_format.py)


def read_result(bundle_dir: Path) -> dict:
    data = _read_json(Path(bundle_dir) / RESULT_NAME)
    if not isinstance(data, dict):
        raise LikenessError("BAD_REQUEST", f"{bundle_dir}: result.json is missing or not a JSON object")
    if data.get("schema_version") not in READABLE_SCHEMAS:
        raise LikenessError("BAD_REQUEST", f"{bundle_dir}: unsupported bundle schema {data.get('schema_version')!r}")
    return data


@dataclass
class BundleData:
    """A bundle as arrays: per-photo data plus the model's topology (from the model file or, schema 1,
    from mesh.npz)."""
    folder: Path
    result: dict
    vertices: np.ndarray           # (V, 3) float32 cm
    basis_vertices: np.ndarray     # (V, 3)
    topology: dict[str, np.ndarray]  # face_sizes, face_vertex_indices, corner_uvs, face_part, part_names, ...

    def files(self, role: str) -> list[dict]:
        return [f for f in self.result.get("files", []) if f.get("role") == role]

    def tiles(self, role: str) -> dict[int, np.ndarray]:
        """The role's UDIM images as uint8 arrays (RGB or grey), by tile."""
        out = {}
        for f in self.files(role):
            img = cv2.imread(str(self.folder / f["path"]), cv2.IMREAD_UNCHANGED)
            if img is not None:
                out[int(f["tile"])] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img
        return out


def model_file_candidates(folder: Path, name: str) -> list[Path]:
    return [Path(folder) / name, MODEL_CACHE_DIR / name]


def load_bundle(bundle_dir: Path) -> BundleData:
    folder = Path(bundle_dir)
    result = read_result(folder)
    with np.load(folder / "mesh.npz", allow_pickle=False) as m:
        mesh = {k: m[k] for k in m.files}
    if result["schema_version"] == 1:
        topo = {k: mesh[k] for k in ("face_sizes", "face_vertex_indices", "corner_uvs", "face_part", "part_names",
                                     "part_vertex_ranges", "part_range_names", "expression_deltas", "expression_names")
                if k in mesh}
    else:
        name = model_file_name(result["model"]["hash"])
        path = next((p for p in model_file_candidates(folder, name) if p.is_file()), None)
        if path is None:
            raise LikenessError("ASSETS_MISSING", f"the face model file {name} of {folder} is not in the bundle or "
                                f"in {MODEL_CACHE_DIR}; run `python -m backend setup` on this machine")
        with np.load(path, allow_pickle=False) as m:
            topo = {k: m[k] for k in m.files}
        if str(topo.get("model_hash")) != result["model"]["hash"]:
            raise LikenessError("ASSETS_MISSING", f"{path} is not the model of {folder}")
    return BundleData(folder, result, mesh["vertices"], mesh.get("basis_vertices", mesh["vertices"]), topo)

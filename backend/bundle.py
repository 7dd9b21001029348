"""Result bundle v1 (docs/bundle.md): written into a temporary sibling folder, renamed at the end.

A folder that holds result.json is always complete; a failure or a cancel leaves nothing behind,
and an existing bundle is replaced only after the new one is fully written.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from .errors import LikenessError

SCHEMA_VERSION = 1
RESULT_NAME = "result.json"


def is_bundle(path: Path) -> bool:
    return (Path(path) / RESULT_NAME).is_file()


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse early, before any work, to replace what is there."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} already exists; choose another folder or allow overwrite")
    if out_dir.exists() and not out_dir.is_dir():
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not is_bundle(out_dir):
        raise LikenessError("OUTPUT_EXISTS", f"{out_dir} holds files that are not a Likeness bundle; not touching them")


@contextlib.contextmanager
def staged_bundle(out_dir: Path, overwrite: bool = False):
    """Yield a temporary folder next to out_dir; on success it becomes out_dir, else it is removed."""
    out_dir = Path(out_dir).absolute()
    check_output(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():  # overwrite: move the old one aside first so a failed rename loses nothing
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_png(path: Path, image: np.ndarray) -> None:
    """8-bit PNG from an (H, W) or (H, W, 3) RGB uint8 array; fast compression (these are big)."""
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def read_result(bundle_dir: Path) -> dict:
    data = json.loads((Path(bundle_dir) / RESULT_NAME).read_text(encoding="utf-8"))
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported bundle schema {data.get('schema_version')}")
    return data

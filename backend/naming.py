"""Bundle folder names for a batch: one safe, unique folder inside OUT_DIR per photo.

A photo's folder is its file name without the extension (`001_03.jpg` -> `001_03`), made safe:
separators, control and reserved characters become `_`, leading dots and spaces and trailing dots
and spaces are dropped (so `..jpg` or `.hidden.jpg` never name OUT_DIR itself, a parent, or a hidden
folder), an empty result is `photo`, and names are cut to 180 bytes. When that name is not free for
the photo, the extension joins it (`a.jpg` and `a.png` -> `a_jpg` and `a_png`), then a counter
(`a_jpg_2`). A name is free for a photo unless another photo of the batch has it (compared without
case: the output may be on a case-insensitive disk) or something other than this photo's own
bundle is at OUT_DIR/name. So a photo keeps the folder it already has: after `a.jpg` made `a`,
adding `a.png` makes `a_png` and leaves `a` as it is.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\<>:"|?*]')
MAX_NAME_BYTES = 180


def split_name(file_name: str) -> tuple[str, str]:
    """(stem, extension without the dot, lower case): `a.JPG` -> (`a`, `jpg`), `.jpg` -> (``, `jpg`)
    (unlike Path.suffix, which sees no extension in `.jpg`)."""
    stem, dot, ext = file_name.rpartition(".")
    return (stem, ext.lower()) if dot else (file_name, "")


def safe_name(text: str) -> str:
    """A folder name that stays inside its parent and is not hidden."""
    name = _UNSAFE.sub("_", text).lstrip(". ").rstrip(". ")
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        name = raw[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").rstrip(". ")
    return name or "photo"


def bundle_photo_name(folder: Path) -> str | None:
    """The photo file name recorded in the bundle at `folder` (result.json input.name), if it is ours."""
    from .bundle import is_bundle, read_result
    try:
        if not is_bundle(folder):
            return None
        name = (read_result(folder).get("input") or {}).get("name")
        return name if isinstance(name, str) else None
    except Exception:  # noqa: BLE001 - unreadable: not a bundle this photo can claim
        return None


def batch_outputs(photos: list[Path], out_dir: Path,
                  owner: Callable[[Path], str | None] = bundle_photo_name) -> dict[Path, str]:
    """Photo -> folder name inside out_dir, unique and safe (see the module docstring)."""
    out_dir = Path(out_dir)
    stems = {p: safe_name(split_name(p.name)[0]) for p in photos}
    sharing = Counter(s.casefold() for s in stems.values())
    taken: set[str] = set()
    names: dict[Path, str] = {}
    for photo in sorted(photos, key=lambda p: p.name):
        stem, ext = stems[photo], safe_name(split_name(photo.name)[1] or "file")

        def free(name: str) -> bool:
            target = out_dir / name
            there = target.exists() or target.is_symlink()
            return name.casefold() not in taken and (not there or owner(target) == photo.name)

        first = [stem] if sharing[stem.casefold()] == 1 or owner(out_dir / stem) == photo.name else []
        candidates = first + [f"{stem}_{ext}"]
        name = next((c for c in candidates if free(c)), None)
        counter = 2
        while name is None:
            if free(f"{stem}_{ext}_{counter}"):
                name = f"{stem}_{ext}_{counter}"
            counter += 1
        taken.add(name.casefold())
        names[photo] = name
    return names

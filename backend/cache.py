"""A per-process cache bounded in bytes (least recently used goes first), for heavy derived data:
UV layouts per texture size, later models. The worker keeps its process for hours, so what it keeps
must have a ceiling that does not depend on how many different requests it has seen.
And the disk side of derived data that outlives a process (the face model file, the UV layouts):
npz files written atomically, read back without pickles, keyed by what they were derived from."""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch


def nbytes(obj: Any) -> int:
    """Bytes held by tensors and arrays inside obj (tuples, lists, dicts, dataclasses), counted once each."""
    seen: set[int] = set()

    def walk(x) -> int:
        if id(x) in seen:
            return 0
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            return x.element_size() * x.nelement()
        if isinstance(x, np.ndarray):
            return int(x.nbytes) if x.base is None else 0
        if isinstance(x, dict):
            return sum(walk(k) + walk(v) for k, v in x.items())
        if isinstance(x, (list, tuple, set)):
            return sum(walk(v) for v in x)
        if hasattr(x, "__dict__"):
            return walk(vars(x))
        return 0
    return walk(obj)


class BoundedCache:
    """key -> value, at most `max_bytes` of tensors and arrays in all (an entry larger than that is
    returned but not kept). Thread-safe; `get` computes a missing value outside the lock."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key, compute: Callable[[], Any]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = compute()
        size = nbytes(value)
        with self._lock:
            if size <= self.max_bytes:
                self._items[key] = (value, size)
                self._items.move_to_end(key)
                total = sum(s for _, s in self._items.values())
                while total > self.max_bytes:
                    _, (_, s) = self._items.popitem(last=False)
                    total -= s
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# ---------------------------------------------------------------------------------------------
# On disk


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray], compressed: bool) -> None:
    """Write `arrays` to `path` through a temporary file in the same folder: a reader (another process)
    sees the whole file or none, and an interrupted write leaves no partial file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_npz(path: Path, check: Callable[[], None] = lambda: None) -> dict[str, np.ndarray] | None:
    """All arrays of an npz file (no pickles), or None when it is missing or cannot be read whole.
    `check()` is called between arrays (it raises to stop: a 2048-px UV layout is 330 MB)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {}
            for k in data.files:
                check()
                out[k] = data[k]
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def code_fingerprint(*modules: ModuleType) -> str:
    """12 hex digits of the source of the modules a derived file comes from: a file made by other code
    has another name, so it is never read as if this code had made it."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]

"""A per-process cache bounded in bytes (least recently used goes first), for heavy derived data:
UV layouts per texture size, later models. The worker keeps its process for hours, so what it keeps
must have a ceiling that does not depend on how many different requests it has seen."""
from __future__ import annotations

import threading
from collections import OrderedDict
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

"""Shared test fixtures: where the photos are, and a factory for files with given bytes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `import backend` also under a bare `pytest`
    sys.path.insert(0, str(REPO))

# ../shared/data/faces next to the checkout (see its README.md). Never copy these into the repo.
FACES_DIR = REPO.parent / "shared" / "data" / "faces"
LONDON_NEUTRAL = FACES_DIR / "london" / "neutral"
LONDON_SMILING = FACES_DIR / "london" / "smiling"
WILD_DEV = FACES_DIR / "wild_dev"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The face photo folder; tests that need it are skipped (with the reason) when it is absent."""
    if not LONDON_NEUTRAL.is_dir():
        pytest.skip(f"face photos not found at {FACES_DIR}")
    return FACES_DIR


@pytest.fixture
def make_file(tmp_path):
    """make_file(name, content) -> Path: a file in a fresh temporary folder; content is bytes or str."""
    def make(name: str, content: bytes | str = b"") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path
    return make

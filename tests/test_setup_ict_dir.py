"""`python -m backend setup --ict-dir DIR` remembers DIR (it used to exit 0 and save nothing, so only an
environment variable worked), and its messages name the Blender button, never make or a checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKED = REPO.parent / "shared" / "assets" / "ict-facekit"
SAMPLE = REPO.parent / "shared" / "assets" / "ict-facekit-upstream-sample"


def _py(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")}
    env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_ict_dir_is_remembered(tmp_path):
    if not (PACKED / "shape_modes.npz").is_file():
        pytest.skip("no packed ICT-FaceKit")
    mine = tmp_path / "my-ict"
    mine.mkdir()
    for f in PACKED.iterdir():
        (mine / f.name).symlink_to(f)
    cp = _py(f"from backend.setup_assets import ensure_ict; print(ensure_ict({str(mine)!r}))", tmp_path / "cache")
    assert cp.returncode == 0, cp.stderr
    saved = json.loads((tmp_path / "cache" / "likeness" / "settings.json").read_text())
    assert saved["ict_dir"] == str(mine)
    cp = _py("from backend.paths import ict_candidates; print(ict_candidates()[0])", tmp_path / "cache")
    assert cp.stdout.strip() == str(mine), "a later run looks there first, without LIKENESS_ICT_DIR"


def test_incomplete_upstream_folder_is_refused_and_nothing_saved(tmp_path):
    if not (SAMPLE / "FaceXModel").is_dir():
        pytest.skip("no upstream sample")
    cp = _py(f"from backend.setup_assets import ensure_ict; ensure_ict({str(SAMPLE / 'FaceXModel')!r})", tmp_path / "c")
    assert cp.returncode != 0 and "ASSETS_MISSING" in cp.stderr and "identity002" in cp.stderr
    assert not (tmp_path / "c" / "likeness" / "settings.json").exists()


def test_messages_name_the_button_not_make(tmp_path):
    code = ("import backend.paths as p\n"
            "p.ict_candidates = lambda e=None: []\n"
            "p.landmarker_candidates = lambda e=None: []\n"
            "for f in (p.find_ict_dir, p.find_landmarker):\n"
            "    try: f()\n"
            "    except Exception as e: print(e)\n")
    cp = _py(code, tmp_path / "c")
    assert cp.stdout.count("Install Backend") == 2, cp.stdout
    assert "make" not in cp.stdout and "checkout" not in cp.stdout

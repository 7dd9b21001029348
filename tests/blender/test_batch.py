"""scripts/batch_blender.py with bpy as a module: two real photos plus one bad file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_batch_two_photos_and_a_bad_file(photos, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for p in photos[:2]:
        os.symlink(p, in_dir / p.name)
    (in_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    (in_dir / "readme.txt").write_text("not a photo, ignored")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "bl-user"))
    cp = subprocess.run([sys.executable, str(REPO / "scripts" / "batch_blender.py"), str(in_dir), str(out_dir),
                         "--resolution", "96", "--samples", "4", "--texture-size", "512", "--device", "cpu",
                         "--preset", "GOLDEN"],
                        capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path))
    log = cp.stdout[-4000:] + cp.stderr[-4000:]
    assert cp.returncode == 1, log  # one photo failed
    summary = json.loads((out_dir / "summary.json").read_text())
    assert (summary["photos"], summary["ok"], summary["failed"]) == (3, 2, 1), log
    assert summary["ignored"] == ["readme.txt"]
    assert "batch summary" in cp.stdout
    rows = {r["photo"]: r for r in summary["results"]}
    bad = rows["broken.jpg"]
    assert not bad["ok"] and bad["code"] in {"CORRUPT_IMAGE", "NOT_AN_IMAGE"}, bad
    assert not (out_dir / "broken").exists()
    for p in photos[:2]:
        r = rows[p.name]
        assert r["ok"], r
        blend = out_dir / p.stem / f"{p.stem}.blend"
        png = out_dir / p.stem / f"{p.stem}.png"
        assert blend.read_bytes()[:7] == b"BLENDER" or blend.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd
        assert (out_dir / p.stem / "bundle" / "result.json").is_file()
        img = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0
        assert img.shape == (96, 96, 3)
        centre = img[30:60, 35:60].reshape(-1, 3)
        corner = img[:6, :6].reshape(-1, 3).mean(axis=0)
        assert np.abs(centre - corner).sum(axis=1).mean() > 0.1, f"{png} shows no head"
    # the .blend holds the head and the preset: open one in a fresh Blender
    check = ("import bpy, sys; bpy.ops.wm.open_mainfile(filepath=sys.argv[1]); "
             "print('OBJS', sorted(o.name for o in bpy.context.scene.objects)); "
             "print('WORLD', bpy.context.scene.world.get('likeness_preset'))")
    cp2 = subprocess.run([sys.executable, "-c", check, str(out_dir / photos[0].stem / f"{photos[0].stem}.blend")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert f"'{photos[0].stem}'" in cp2.stdout and "Likeness Sun" in cp2.stdout, cp2.stdout + cp2.stderr
    assert "WORLD GOLDEN" in cp2.stdout

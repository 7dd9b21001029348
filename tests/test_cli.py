"""The command line as a studio scripts it: reconstruct and batch, exit codes and summaries."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import LONDON_NEUTRAL, REPO


def run(*args):
    return subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_batch_keeps_going_past_a_bad_photo_and_skips_finished_bundles(tmp_path, faces_dir):
    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("001_03.jpg", "002_03.jpg"):
        shutil.copy(LONDON_NEUTRAL / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    (photos / "readme.txt").write_text("not an image suffix: ignored")
    out = tmp_path / "out"

    first = run("batch", str(photos), str(out), "--device", "cpu")
    assert first.returncode == 1, first.stderr
    summary = json.loads(first.stdout)
    assert sorted(summary["done"]) == ["001_03.jpg", "002_03.jpg"]
    assert [f["photo"] for f in summary["failed"]] == ["broken.jpg"]
    assert summary["failed"][0]["code"] in ("CORRUPT_IMAGE", "NOT_AN_IMAGE")
    assert (out / "001_03" / "result.json").is_file() and (out / "002_03" / "result.json").is_file()
    assert not (out / "broken").exists()

    (photos / "broken.jpg").unlink()
    second = run("batch", str(photos), str(out), "--device", "cpu")
    assert second.returncode == 0, second.stderr
    assert sorted(json.loads(second.stdout)["skipped"]) == ["001_03.jpg", "002_03.jpg"]


def test_reconstruct_error_exit_code_and_message(tmp_path):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    res = run("reconstruct", str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "EMPTY_FILE" in res.stderr and not (tmp_path / "o").exists()


def test_every_command_uses_the_pipelines_default_texture_strategy():
    """The command line had its own default (v0's projection) while the pipeline's is the de-lit map:
    command-line and batch bundles kept the photo's light."""
    from backend.cli import _options, build_parser
    from backend.pipeline import Options
    for argv in (["reconstruct", "p.jpg", "--out", "o"], ["batch", "in", "out"], ["demo"]):
        args = build_parser().parse_args(argv)
        assert _options(args).texture == Options().texture == "generated", argv
    args = build_parser().parse_args(["reconstruct", "p.jpg", "--out", "o", "--texture", "projection"])
    assert _options(args).texture == "projection"

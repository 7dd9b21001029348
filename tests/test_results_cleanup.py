"""The preferences' clean-up of the results folder (bundle_format.clean_results, no bpy): only our
bundles, only the files we wrote, never one in use; the rule agrees with backend/bundle.py's."""
from __future__ import annotations

import json
from pathlib import Path

import bundle_format as bf
from backend import bundle as backend_bundle


def _bundle(folder: Path, files=("mesh.npz", "result.json", "diffuse.1001.png")) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_bytes(b"x" * 100)
    (folder / bf.MARKER_NAME).write_text(json.dumps({"format": "likeness-bundle", "files": list(files)}))
    return folder


def test_only_our_files_go_and_bundles_in_use_stay(tmp_path):
    a = _bundle(tmp_path / "a")
    b = _bundle(tmp_path / "b")
    c = _bundle(tmp_path / "c")
    (c / "my_notes.txt").write_text("mine")                 # a user's file inside a bundle
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "result.json").write_text("{}")  # not a bundle: no marker
    (tmp_path / "loose.png").write_bytes(b"png")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / bf.MARKER_NAME).write_text(json.dumps({"format": "likeness-bundle", "files": ["../loose.png", "/etc/passwd"]}))
    for d in (a, b, c, fake):
        assert bf.owned_files(d) == backend_bundle.owned_files(d), d  # one rule, two copies
    sizes = {x.folder.name: x.owned_bytes for x in bf.bundles_in(tmp_path)}
    assert sizes == {"a": 300 + (a / bf.MARKER_NAME).stat().st_size, "b": sizes["b"], "c": sizes["c"],
                     "fake": (fake / bf.MARKER_NAME).stat().st_size}
    removed, freed, kept = bf.clean_results(tmp_path, in_use=[b])
    assert removed == 3 and kept == [b]
    assert not a.exists() and b.is_dir() and len(list(b.iterdir())) == 4
    assert sorted(p.name for p in c.iterdir()) == ["my_notes.txt"], "the user's file and its folder stay"
    assert (tmp_path / "loose.png").read_bytes() == b"png", "a marker never reaches outside its folder"
    assert (tmp_path / "photos" / "result.json").is_file()
    assert freed == sizes["a"] + sizes["c"] + sizes["fake"]


def test_schema_1_bundles_count_by_their_result_json(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "mesh.npz").write_bytes(b"m")
    (d / "result.json").write_text(json.dumps({"schema_version": 1, "software": {"name": "likeness"},
                                               "files": [{"path": "mesh.npz", "role": "mesh"}]}))
    assert bf.owned_files(d) == {"mesh.npz", "result.json"} == backend_bundle.owned_files(d)
    bf.clean_results(tmp_path, [])
    assert not d.exists()

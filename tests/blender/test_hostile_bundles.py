"""Hostile bundles through the real importer (real bpy): issue #13's attacks on the Blender side.

Each test copies one real bundle (made by the real backend CLI, with the face model file embedded so
that its topology arrays can be attacked too), damages it, and imports it: the import must fail with
a code, create nothing, pack nothing, and never hand Blender arrays that crash it."""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import bpy
import numpy as np
import pytest

from .conftest import FACES, REPO, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hostile_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "base"
    res = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(FACES / "001_03.jpg"), "--out", str(out),
                          "--device", "cpu", "--texture-size", "512", "--embed-model"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def bundle(hostile_base, tmp_path) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(hostile_base, b)
    return b


@pytest.fixture
def outside(tmp_path) -> Path:
    """A valid PNG and a valid mesh.npz outside the bundle (what an attack would point at)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    import cv2
    cv2.imwrite(str(folder / "secret.png"), np.full((64, 64, 3), 7, np.uint8))
    return folder


def result(b: Path) -> dict:
    return json.loads((b / "result.json").read_text())


def set_result(b: Path, data) -> None:
    (b / "result.json").write_text(json.dumps(data))


def model_path(b: Path) -> Path:
    return b / result(b)["model"]["file"]


def edit_model(b: Path, **changes) -> None:
    path = model_path(b)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key].copy())
    path.unlink()
    np.savez_compressed(path, **arrays)


def import_fails(b: Path, code: str, **kw):
    """Import `b` (with pack_images on): it must raise WorkerError `code` and leave bpy.data as it was."""
    from likeness.operators import importer
    from likeness.operators.worker_client import WorkerError
    before = snapshot()
    packed_before = sum(len(i.packed_files) for i in bpy.data.images)
    with pytest.raises(WorkerError) as info:
        importer.import_bundle(b, pack_images=True, **kw)
    assert info.value.code == code, info.value
    assert snapshot() == before, "a failed import must leave nothing behind"
    assert sum(len(i.packed_files) for i in bpy.data.images) == packed_before, "nothing may be packed"
    return info.value


def test_the_unharmed_bundle_imports_and_packs_only_its_own_files(empty_scene, likeness, bundle):
    from likeness.operators import importer
    obj = importer.import_bundle(bundle, pack_images=True, shape_keys=True)
    assert len(obj.data.vertices) == 26719 and obj.data.shape_keys is not None
    images = [n.image for m in obj.data.materials for n in m.node_tree.nodes if n.type == "TEX_IMAGE"]
    # The iris the add-on draws itself is packed from memory (no file path): not a file read from anywhere.
    files = [Path(pf.filepath).resolve() for i in images if i.filepath for pf in i.packed_files]
    assert files and all(f.parent == bundle.resolve() for f in files)


@pytest.mark.parametrize("attack", ["dotdot", "etc_passwd", "absolute", "symlink_file", "symlink_dir",
                                    "mesh_outside", "mesh_symlink", "model_outside"])
def test_paths_that_leave_the_bundle_are_refused(empty_scene, likeness, bundle, outside, attack):
    """Before: `../../etc/passwd`, absolute paths and an outside mesh.npz were loaded, and with
    pack-images on the outside file was packed into the .blend."""
    shutil.copy(bundle / "mesh.npz", outside / "mesh.npz")
    rj = result(bundle)
    diffuse = next(f for f in rj["files"] if f["role"] == "diffuse" and f["tile"] == 1001)
    mesh = next(f for f in rj["files"] if f["role"] == "mesh")
    rel_outside = os.path.relpath(outside / "secret.png", bundle)
    if attack == "dotdot":
        diffuse["path"] = rel_outside                     # ../outside/secret.png
    elif attack == "etc_passwd":
        diffuse["path"] = "../../../../../../../../etc/passwd"
    elif attack == "absolute":
        diffuse["path"] = str(outside / "secret.png")
    elif attack == "symlink_file":
        (bundle / "diffuse.1001.png").unlink()
        (bundle / "diffuse.1001.png").symlink_to(outside / "secret.png")
    elif attack == "symlink_dir":
        (bundle / "maps").symlink_to(outside)
        diffuse["path"] = "maps/secret.png"
    elif attack == "mesh_outside":
        mesh["path"] = os.path.relpath(outside / "mesh.npz", bundle)
    elif attack == "mesh_symlink":
        (bundle / "mesh.npz").unlink()
        (bundle / "mesh.npz").symlink_to(outside / "mesh.npz")
    elif attack == "model_outside":
        model = next(f for f in rj["files"] if f["role"] == "model")
        model["path"] = "/" + model["path"]
    set_result(bundle, rj)
    err = import_fails(bundle, "BUNDLE_UNSAFE")
    assert "outside" in err.message


def test_a_udim_tile_linked_outside_is_refused(empty_scene, likeness, bundle, outside):
    """Blender finds a tiled image's other tiles itself: a link `diffuse.1003.png` -> anywhere was read and,
    with pack-images, packed into the .blend although no file entry names it."""
    (bundle / "diffuse.1003.png").symlink_to(outside / "secret.png")
    import_fails(bundle, "BUNDLE_UNSAFE")
    (bundle / "diffuse.1003.png").unlink()
    (bundle / "normal.1005.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a damaged tile: magenta
    import_fails(bundle, "BUNDLE_INVALID")


@pytest.mark.parametrize("size", [0, 1, -1, 65])
def test_bad_polygon_sizes_are_refused_before_any_bpy_call(empty_scene, likeness, bundle, monkeypatch, size):
    """Before: a face_sizes of 0, 1 or -1 segfaulted Blender. The corner total is kept, so only the
    per-polygon check can catch it."""
    from likeness.operators import importer
    calls = []
    monkeypatch.setattr(importer, "_build_mesh", lambda *a, **k: calls.append(a) or pytest.fail("bpy was called"))

    def damage(sizes):
        total = int(sizes[0]) + int(sizes[1])
        sizes[0], sizes[1] = size, total - size
        return sizes
    edit_model(bundle, face_sizes=damage)
    err = import_fails(bundle, "BUNDLE_INVALID")
    assert "face_sizes" in err.message and calls == []


@pytest.mark.parametrize("attack", ["index_out_of_range", "negative_index", "part_out_of_range", "uv_nan",
                                    "strings_for_numbers", "vertices_nan"])
def test_inconsistent_mesh_arrays_are_refused_before_any_bpy_call(empty_scene, likeness, bundle, monkeypatch, attack):
    from likeness.operators import importer
    calls = []
    monkeypatch.setattr(importer, "_build_mesh", lambda *a, **k: calls.append(a))
    if attack == "index_out_of_range":
        edit_model(bundle, face_vertex_indices=lambda a: np.where(np.arange(len(a)) == 5, 26719, a))
    elif attack == "negative_index":
        edit_model(bundle, face_vertex_indices=lambda a: np.where(np.arange(len(a)) == 5, -3, a))
    elif attack == "part_out_of_range":
        edit_model(bundle, face_part=lambda a: np.where(np.arange(len(a)) == 0, 99, a).astype(np.int8))
    elif attack == "uv_nan":
        edit_model(bundle, corner_uvs=lambda a: np.where(np.arange(len(a))[:, None] == 0, np.nan, a))
    elif attack == "strings_for_numbers":
        edit_model(bundle, corner_uvs=lambda a: np.array(["x"] * len(a)))
    else:
        with np.load(bundle / "mesh.npz") as z:
            v, b = z["vertices"].copy(), z["basis_vertices"]
        v[10] = np.nan
        np.savez(bundle / "mesh.npz", vertices=v, basis_vertices=b)
    import_fails(bundle, "BUNDLE_INVALID")
    assert calls == []


def test_a_50_million_vertex_range_is_refused_at_once(empty_scene, likeness, bundle):
    """Before: a vertex-group range of 50 million cost 2.5 GB (and minutes of vertex_groups.add)."""
    import psutil
    def last_to_50m(r):  # the last range (the highest one) ends at 50 million: no overlap, only out of the mesh
        r = r.astype(np.int64)
        r[np.argmax(r[:, 0]), 1] = 50_000_000
        return r
    edit_model(bundle, part_vertex_ranges=last_to_50m)
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    err = import_fails(bundle, "BUNDLE_INVALID")
    assert "range" in err.message
    assert time.perf_counter() - t0 < 2.0 and psutil.Process().memory_info().rss - rss < 200 << 20
    # Overlapping ranges (each inside the mesh) would add up to more vertices than there are: refused too.
    edit_model(bundle, part_vertex_ranges=lambda r: np.tile([[0, 26718]], (len(r), 1)).astype(r.dtype))
    import_fails(bundle, "BUNDLE_INVALID")


def _png_chunks(data: bytes):
    pos = 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _with_fresh_crcs(chunks) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, payload in chunks:
        out += struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return out


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "zeroed_fresh_crc", "no_iend"])
@pytest.mark.parametrize("name", ["diffuse.1001.png", "diffuse.1002.png", "normal.1001.png"])
def test_corrupt_or_truncated_maps_are_refused(empty_scene, likeness, bundle, damage, name):
    """Before: a corrupt or truncated diffuse/normal PNG imported as a 0x0 magenta image with no error
    (and a damaged second UDIM tile still would have: only the first tile's size was looked at)."""
    path = bundle / name
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "no_iend":
        data = data[:-12]
    else:
        chunks = list(_png_chunks(data))
        k = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
        payload = bytearray(chunks[k][1])
        payload[len(payload) // 4: len(payload) // 2] = bytes(len(payload) // 2 - len(payload) // 4)
        chunks[k] = (b"IDAT", bytes(payload))
        if damage == "zeroed_fresh_crc":  # only Blender's decoder can tell: the importer checks every tile
            data = _with_fresh_crcs(chunks)
        else:
            i = data.index(b"IDAT") + 4
            data = data[:i] + bytes(payload) + data[i + len(payload):]
    path.write_bytes(data)
    import_fails(bundle, "BUNDLE_INVALID")


@pytest.mark.parametrize("text", ["[1, 2]", "[]", "42", "null", '"bundle"', "{", "[" * 50000, "\udcff"])
def test_result_json_that_is_not_an_object(empty_scene, likeness, bundle, text):
    """Before: a result.json holding a JSON list raised a raw AttributeError."""
    (bundle / "result.json").write_text(text, errors="surrogateescape")
    import_fails(bundle, "BUNDLE_INVALID")


@pytest.mark.parametrize("section,value", [("input", []), ("input", {"name": 5}), ("material", {"skin": {"ior": "x"}}),
                                           ("expression", {"names": ["a"], "coefficients": ["b"]}),
                                           ("expression", {"names": 3, "coefficients": 3}), ("metrics", "fine")])
def test_result_json_sections_of_the_wrong_type(empty_scene, likeness, bundle, section, value):
    rj = result(bundle)
    rj[section] = value
    set_result(bundle, rj)
    import_fails(bundle, "BUNDLE_INVALID", shape_keys=True)


def test_importer_under_random_damage(empty_scene, likeness, bundle, tmp_path):
    """30 seeded random damages of result.json, mesh.npz and the model file through the real importer:
    a code or a clean import, never another exception, never a half-import."""
    from likeness.operators import importer
    from likeness.operators.worker_client import WorkerError
    from tests.test_fuzz import mutate_bundle
    rng = random.Random(1313)
    codes = {}
    for i in range(30):
        b = tmp_path / f"fuzz{i}"
        shutil.copytree(bundle, b)
        what = mutate_bundle(b, rng)
        before = snapshot()
        try:
            obj = importer.import_bundle(b, pack_images=rng.random() < 0.5, shape_keys=rng.random() < 0.5)
        except WorkerError as err:
            codes[err.code] = codes.get(err.code, 0) + 1
            assert err.code in ("BUNDLE_INVALID", "BUNDLE_UNSAFE", "ASSETS_MISSING"), (what, err)
            assert snapshot() == before, what
        else:
            assert obj.name in bpy.data.objects, what
            codes["imported"] = codes.get("imported", 0) + 1
        shutil.rmtree(b)
    print("outcomes", codes)
    assert codes.get("BUNDLE_INVALID", 0) > 10

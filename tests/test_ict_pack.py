"""Packing upstream ICT-FaceKit OBJs (backend/ict_pack.py) into what facemodel.py reads.

On real upstream files: the sample of ../shared/assets/ict-facekit-upstream-sample (neutral, identity000,
identity001, jawOpen, eyeBlink_L). On a full 158-OBJ set: a synthetic FaceXModel/ written in tmp from the
shared pack's own arrays (upstream's neutral OBJ, modes written as exact decimal text), whose pack must be
byte for byte the shared shape_modes.npz and load in FaceModel. No ICT file is written into the repo.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend import ict_pack
from backend.errors import LikenessError
from backend.ict_pack import (EXTRA_EXPRESSIONS, IDENTITY_NAMES, NEUTRAL_OBJ, SHAPE_MODES, pack_ict,
                              read_obj_vertices, verify_pack)

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
SAMPLE = ASSETS / "ict-facekit-upstream-sample"
PACKED = Path(os.environ.get("LIKENESS_ICT_DIR") or ASSETS / "ict-facekit")
SAMPLE_MODES = ("identity000", "identity001", "jawOpen", "eyeBlink_L")
KEYS = ("neutral", "identity", "expression", "identity_names", "expression_names")


@pytest.fixture(scope="module")
def sample() -> Path:
    if not (SAMPLE / "FaceXModel" / NEUTRAL_OBJ).is_file():
        pytest.skip(f"upstream ICT-FaceKit sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="module")
def packed():
    if not (PACKED / SHAPE_MODES).is_file():
        pytest.skip(f"packed ICT-FaceKit not found at {PACKED}")
    with np.load(PACKED / SHAPE_MODES) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def sample_pack(sample, tmp_path_factory) -> Path:
    return pack_ict(sample, tmp_path_factory.mktemp("sample_pack"), require_complete=False)


def linked_source(tmp_path: Path, sample: Path, leave_out=()) -> Path:
    """A FaceXModel/ of symlinks to the sample's files (cheap to alter one file of)."""
    src = tmp_path / "src" / "FaceXModel"
    src.mkdir(parents=True)
    for f in (sample / "FaceXModel").iterdir():
        if f.name not in leave_out:
            (src / f.name).symlink_to(f)
    return src


def load(pack: Path) -> dict:
    with np.load(pack / SHAPE_MODES) as data:
        return {k: data[k] for k in data.files}


# --- real upstream files -------------------------------------------------------------------------

def test_sample_pack_matches_the_shared_pack(sample_pack, packed):
    got = load(sample_pack)
    assert tuple(got) == KEYS
    assert np.array_equal(got["neutral"], packed["neutral"]) and got["neutral"].dtype == np.float32
    assert list(got["identity_names"]) == ["identity000", "identity001"]
    assert list(got["expression_names"]) == ["eyeBlink_L", "jawOpen"]  # the shared pack's order
    for kind in ("identity", "expression"):
        assert got[kind].dtype == np.float32 and got[kind].shape == (2,) + packed["neutral"].shape
    for stem in SAMPLE_MODES:
        kind = "identity" if stem.startswith("identity") else "expression"
        mine = got[kind][list(got[f"{kind}_names"]).index(stem)]
        ref = packed[kind][list(packed[f"{kind}_names"]).index(stem)]
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1.8e-6, err_msg=stem)  # the sample README's bound
        # Stronger, and what the float64 difference gives: the shared pack's exact bits (signed zeros too).
        assert np.array_equal(mine.view(np.uint32), ref.view(np.uint32)), stem
    assert got["identity_names"].dtype.kind == "U" and got["expression_names"].dtype.kind == "U"


def test_sample_pack_copies_and_manifest(sample_pack, sample):
    for name in (NEUTRAL_OBJ, "vertex_indices.json", "ICTFaceModelMaterial.mtl"):
        assert (sample_pack / name).read_bytes() == (sample / "FaceXModel" / name).read_bytes()
    assert (sample_pack / "LICENSE").read_bytes() == (sample / "LICENSE").read_bytes()  # from the repo root
    manifest = ict_pack._read_manifest(sample_pack)
    assert manifest["complete"] is False and manifest["source"]["commit"] == ict_pack.UPSTREAM_COMMIT
    assert manifest["counts"] == {"vertices": 26719, "identity": 2, "expression": 2}
    assert set(manifest["files"]) == {SHAPE_MODES, NEUTRAL_OBJ, "vertex_indices.json", "ICTFaceModelMaterial.mtl",
                                      "LICENSE"}
    assert manifest["source"]["differ_from_known_upstream"] == []
    assert len(manifest["source"]["match_known_upstream"]) == 8
    assert verify_pack(sample_pack) == []
    assert not [p for p in sample_pack.iterdir() if p.name.startswith(".")]  # no temporary left


def test_obj_reader_matches_a_plain_parse(sample):
    path = sample / "FaceXModel" / "jawOpen.obj"
    vertices, _, _ = read_obj_vertices(path)
    plain = [[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines() if line.startswith("v ")]
    assert vertices.dtype == np.float64 and np.array_equal(vertices, np.array(plain))


def test_incomplete_source_names_what_is_missing(sample, tmp_path):
    dst = tmp_path / "pack"
    with pytest.raises(LikenessError) as info:
        pack_ict(sample, dst)
    err = info.value
    assert err.code == "ASSETS_MISSING"
    assert len(err.missing) == 157 - 4 and "identity000.obj" not in err.missing
    assert {"identity002.obj", "identity099.obj", "browDown_L.obj", "PupilDilate_R.obj",
            "cheekRaiser_L.obj"} <= set(err.missing)
    assert "identity002..identity099.obj (98 files)" in err.message and "noseSneer_R.obj" in err.message
    assert not dst.exists()


def test_missing_neutral_and_index_file_are_named(sample, tmp_path):
    src = linked_source(tmp_path, sample, leave_out=(NEUTRAL_OBJ, "vertex_indices.json"))
    with pytest.raises(LikenessError) as info:
        pack_ict(src, tmp_path / "pack", require_complete=False)  # even a partial pack needs these two
    assert info.value.code == "ASSETS_MISSING"
    assert NEUTRAL_OBJ in info.value.message and "vertex_indices.json" in info.value.message


def test_a_mode_with_another_vertex_count_is_refused(sample, tmp_path):
    src = linked_source(tmp_path, sample, leave_out=("jawOpen.obj",))
    lines = (sample / "FaceXModel" / "jawOpen.obj").read_bytes().split(b"\n")
    last_v = max(i for i, line in enumerate(lines) if line.startswith(b"v "))
    (src / "jawOpen.obj").write_bytes(b"\n".join(lines[:last_v] + lines[last_v + 1:]))
    with pytest.raises(LikenessError) as info:
        pack_ict(src, tmp_path / "pack", require_complete=False)
    assert info.value.code == "ASSETS_MISSING"
    assert "jawOpen.obj has 26718 vertices" in info.value.message and "26719" in info.value.message
    assert not (tmp_path / "pack" / SHAPE_MODES).exists()


def test_a_mode_with_other_faces_is_refused(sample, tmp_path):
    src = linked_source(tmp_path, sample, leave_out=("eyeBlink_L.obj",))
    data = (sample / "FaceXModel" / "eyeBlink_L.obj").read_bytes()
    (src / "eyeBlink_L.obj").write_bytes(data.replace(b"\nf 874/1 12/2 871/3 873/4\n", b"\nf 12/2 874/1 871/3 873/4\n", 1))
    with pytest.raises(LikenessError) as info:
        pack_ict(src, tmp_path / "pack", require_complete=False)
    assert info.value.code == "ASSETS_MISSING" and "eyeBlink_L.obj has other faces" in info.value.message


def _write_phase_checks(sample, tmp_path) -> int:
    """How many times pack_ict calls cancel_check once it has started writing."""
    stage, calls = {"now": None}, []
    pack_ict(sample, tmp_path / "count", lambda s, f: stage.update(now=s),
             lambda: calls.append(stage["now"]), require_complete=False)
    return calls.count("write")


def test_an_interrupted_pack_leaves_no_shape_modes(sample, tmp_path):
    n = _write_phase_checks(sample, tmp_path)
    assert n >= 6  # before writing, between npz members, between copies, before the renames
    for k in range(n):
        dst = tmp_path / f"cancel{k}"
        stage, seen = {"now": None}, []

        def cancel_check():
            if stage["now"] == "write":
                seen.append(1)
                if len(seen) > k:
                    raise LikenessError("CANCELLED", "test")
        with pytest.raises(LikenessError) as info:
            pack_ict(sample, dst, lambda s, f: stage.update(now=s), cancel_check, require_complete=False)
        assert info.value.code == "CANCELLED"
        assert not dst.exists(), k  # nor any temporary: the folder it made is gone again


def test_a_cancel_while_reading_writes_nothing(sample, tmp_path):
    calls = []

    def cancel_check():
        calls.append(1)
        if len(calls) == 3:
            raise LikenessError("CANCELLED", "test")
    with pytest.raises(LikenessError):
        pack_ict(sample, tmp_path / "pack", cancel_check=cancel_check, require_complete=False)
    assert not (tmp_path / "pack").exists()


def test_a_failed_write_leaves_no_shape_modes(sample, tmp_path, monkeypatch):
    real, calls = np.lib.format.write_array, []

    def disk_full(fh, array, **kw):
        calls.append(1)
        if len(calls) == 2:  # the identity stack: mid-way through the npz
            raise OSError(28, "No space left on device")
        return real(fh, array, **kw)
    monkeypatch.setattr(np.lib.format, "write_array", disk_full)
    dst = tmp_path / "pack"
    dst.mkdir()  # a folder that was there stays, empty
    with pytest.raises(OSError):
        pack_ict(sample, dst, require_complete=False)
    assert list(dst.iterdir()) == []


def test_verify_pack_finds_a_modified_file(sample_pack, tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(sample_pack, pack)
    assert verify_pack(pack) == []
    npz = pack / SHAPE_MODES
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit
    npz.write_bytes(bytes(data))
    (pack / "LICENSE").unlink()
    problems = verify_pack(pack)
    assert any(SHAPE_MODES in p and "differs" in p for p in problems)
    assert any("LICENSE" in p and "missing" in p for p in problems) and len(problems) == 2
    (pack / "manifest.json").unlink()
    assert "manifest" in verify_pack(pack)[0]


def test_an_existing_pack_is_kept_unless_asked(sample, sample_pack, tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(sample_pack, pack)
    before = {p.name: p.stat().st_mtime_ns for p in pack.iterdir()}
    assert pack_ict(sample, pack, require_complete=False) == pack  # same source: left as it is
    assert {p.name: p.stat().st_mtime_ns for p in pack.iterdir()} == before

    other = linked_source(tmp_path, sample, leave_out=("eyeBlink_L.obj",))
    with pytest.raises(LikenessError) as info:
        pack_ict(other, pack, require_complete=False)
    assert info.value.code == "OUTPUT_EXISTS"
    assert {p.name: p.stat().st_mtime_ns for p in pack.iterdir()} == before

    pack_ict(other, pack, overwrite=True, require_complete=False)
    assert list(load(pack)["expression_names"]) == ["jawOpen"] and verify_pack(pack) == []

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / SHAPE_MODES).write_bytes(b"not ours")
    with pytest.raises(LikenessError) as info:
        pack_ict(sample, foreign, require_complete=False)
    assert info.value.code == "OUTPUT_EXISTS" and (foreign / SHAPE_MODES).read_bytes() == b"not ours"


def test_command_line_exits_2_with_the_code(sample, tmp_path):
    run = subprocess.run([sys.executable, "-m", "backend.ict_pack", str(sample), str(tmp_path / "pack")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "ASSETS_MISSING" in run.stderr and "identity002" in run.stderr
    run = subprocess.run([sys.executable, "-m", "backend.ict_pack", "--partial", str(sample / "FaceXModel"),
                          str(tmp_path / "pack")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and Path(run.stdout.strip()) == (tmp_path / "pack").absolute()
    assert (tmp_path / "pack" / "LICENSE").is_file()  # found next to FaceXModel/ as well
    run = subprocess.run([sys.executable, "-m", "backend.ict_pack", "--verify", str(tmp_path / "pack")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


# --- a full 158-OBJ set --------------------------------------------------------------------------

def write_full_source(dst: Path, packed: dict) -> Path:
    """FaceXModel/ with every file upstream has, the modes written so that they parse back to the
    shared pack's arrays: vertex = neutral (float64, as parsed from upstream's OBJ) + mode, as repr()
    text (the shortest decimal that reads back to the same double). Upstream writes "-0" in some
    expression OBJs where the neutral has "0", so the pack holds -0.0 there: keep that sign."""
    src = dst / "FaceXModel"
    src.mkdir(parents=True)
    for name in (NEUTRAL_OBJ, "vertex_indices.json", "ICTFaceModelMaterial.mtl"):
        (src / name).symlink_to(PACKED / name)  # byte for byte upstream's (asset READMEs)
    (dst / "LICENSE").symlink_to(PACKED / "LICENSE")
    text = (PACKED / NEUTRAL_OBJ).read_bytes()
    first = text.index(b"\nv ") + 1
    last = text.index(b"\n", text.rindex(b"\nv ") + 1) + 1
    head, tail = text[:first], text[last:]  # upstream's header, and its vt/usemtl/f lines
    neutral = read_obj_vertices(src / NEUTRAL_OBJ)[0]
    for kind in ("identity", "expression"):
        for name, mode in zip(packed[f"{kind}_names"], packed[kind]):
            v = neutral + mode.astype(np.float64)
            zeros = (neutral == 0) & (mode == 0)
            v[zeros] = mode[zeros]  # -0.0 - 0.0 is -0.0; 0.0 + -0.0 would have lost it
            assert np.array_equal((v - neutral).astype(np.float32).view(np.uint32), mode.view(np.uint32)), name
            block = "\n".join(map("v {!r} {!r} {!r}".format, *v.T.tolist())) + "\n"
            (src / f"{name}.obj").write_bytes(head + block.encode() + tail)
    return dst


@pytest.fixture(scope="module")
def full_pack(packed, tmp_path_factory):
    """(source, pack, seconds to pack): the whole set packed once for the tests below."""
    src = write_full_source(tmp_path_factory.mktemp("full_src"), packed)
    dst = tmp_path_factory.mktemp("full_pack") / "ict-facekit"
    t0 = time.perf_counter()
    pack_ict(src, dst)
    seconds = time.perf_counter() - t0
    print(f"\npack_ict, 158 OBJs: {seconds:.1f} s")
    yield src, dst, seconds
    shutil.rmtree(src)  # about 500 MB of OBJ text


def test_full_pack_is_the_shared_pack_byte_for_byte(full_pack, packed):
    src, dst, _ = full_pack
    assert len(list((src / "FaceXModel").glob("*.obj"))) == 158
    assert len(packed["expression_names"]) == 53 + len(EXTRA_EXPRESSIONS)
    assert list(load(dst)["identity_names"]) == list(IDENTITY_NAMES)
    sha = [hashlib.sha256((d / SHAPE_MODES).read_bytes()).hexdigest() for d in (dst, PACKED)]
    assert sha[0] == sha[1]
    manifest = ict_pack._read_manifest(dst)
    assert manifest["complete"] is True and manifest["counts"] == {"vertices": 26719, "identity": 100, "expression": 57}
    assert verify_pack(dst) == []


def test_full_pack_loads_in_facemodel(full_pack):
    import torch
    from backend.facemodel import FaceModel
    from backend.paths import find_ict_dir
    _, dst, _ = full_pack
    assert find_ict_dir(dst) == dst
    ours, shared = FaceModel(dst), FaceModel(PACKED)
    assert ours.expression_names == shared.expression_names and ours.identity_names == shared.identity_names
    torch.manual_seed(1)
    for _ in range(2):
        a, b = torch.randn(ours.num_identity), torch.rand(ours.num_expression)
        assert torch.equal(ours.vertices(a, b), shared.vertices(a, b))
    assert np.array_equal(ours.topology.triangles, shared.topology.triangles)


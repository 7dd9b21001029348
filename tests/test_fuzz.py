"""Generated hostile inputs (fixed seeds, bounded in count and time) for the two parsers that take
input from outside: the worker protocol and the bundle reader; and jobs killed at random points.

- The worker protocol: 300 random or mutated lines to one real worker process. Every line is answered
  with well-formed events (or, for a cancel of nothing, with nothing), the worker never dies and never
  writes anything but events, and it still reconstructs afterwards.
- The bundle reader: 300 random damages of a real bundle (result.json, mesh.npz, the face model file,
  the maps). `bundle_format.read_bundle` raises BundleError or returns arrays that pass its checks.
- Kills: real jobs SIGKILLed at random points of every stage leave no half-written bundle, and the
  next job in the same folder sweeps their temporary folders and succeeds.
(Only light imports at module level: tests/blender/test_hostile_bundles.py reuses `mutate_bundle`.)"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bundle_format
from tests.jobs import PHOTO, Worker, cli, half_written, temp_folders, temp_owner

FAST = ("--device", "cpu", "--texture-size", "512")


# ---------------------------------------------------------------------------------------------
# Random values


def random_value(rng: random.Random, depth: int = 0):
    """A random JSON value, biased to the kinds that break parsers: wrong types, extremes, nesting."""
    kinds = ["int", "float", "str", "bool", "null", "big", "neg", "path"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 3, 64, 65, 512, 1024, 1001, 1002, 4096, 8192, 2 ** 31, 2 ** 63, rng.randint(-10 ** 6, 10 ** 6)])
    if kind == "float":
        return rng.choice([0.0, -0.5, 1e308, -1e308, 1e-308, 0.1, 3.5])
    if kind == "big":
        return int("9" * rng.randint(20, 400))
    if kind == "neg":
        return -rng.randint(1, 10 ** 9)
    if kind == "str":
        return rng.choice(["", "a", "no", "0", "true", "x" * rng.randint(1, 5000), "\u0000", "\ud800", "é\u202e",
                           "cpu", "cuda", "auto", "projection", "reconstruct", "ping", "cancel"])
    if kind == "path":
        return rng.choice(PATH_ATTACKS)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["op", "id", "photo", "out", "options", "path", "role", "tile", "x", ""]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


PATH_ATTACKS = ["../../../../etc/passwd", "/etc/passwd", "..", ".", "", "a/../../b.png", "diffuse.1001.png/..",
                "C:\\Windows\\system.ini", "\\\\server\\share\\x.png", "mesh.npz\u0000.png", "~/x.png",
                "diffuse.1001.png", "mesh.npz", "result.json", "/dev/zero", "/proc/self/environ", "a" * 300]


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    op = rng.choice(["truncate", "flip", "insert", "zero", "dup"])
    i = rng.randrange(len(data))
    if op == "truncate":
        return data[:i]
    if op == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if op == "insert":
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[i:]
    if op == "zero":
        return data[:i] + bytes(min(len(data) - i, rng.randint(1, 4096))) + data[i + rng.randint(1, 4096):]
    return data[:i] + data[i:i + rng.randint(1, 64)] * rng.randint(2, 50) + data[i:]


# ---------------------------------------------------------------------------------------------
# The worker protocol

EVENTS = {"ready", "progress", "preview", "result", "error", "pong"}


def fuzz_line(rng: random.Random, bad_photo: str, out_dir: Path) -> bytes:
    """One random request line (bytes, no newline); never a `shutdown`."""
    templates = [{"op": "ping"}, {"op": "cancel", "id": "r1"},
                 {"op": "reconstruct", "id": "r1", "photo": bad_photo, "out": str(out_dir / "b"),
                  "options": {"device": "cpu", "texture_size": 512, "overwrite": False}}]
    kind = rng.choice(["value", "field", "field", "bytes", "special"])
    if kind == "value":
        obj = random_value(rng)
    elif kind == "field":
        obj = json.loads(json.dumps(rng.choice(templates)))
        for _ in range(rng.randint(1, 3)):
            target = obj["options"] if "options" in obj and isinstance(obj["options"], dict) and rng.random() < 0.4 else obj
            key = rng.choice(list(target) + ["extra", "device", "texture_size", "overwrite", "embed_model", "op", "id"])
            if rng.random() < 0.25:
                target.pop(key, None)
            else:
                target[key] = random_value(rng)
    elif kind == "bytes":
        data = mutate_bytes(rng, json.dumps(rng.choice(templates)).encode())
        return data.replace(b"\n", b" ").replace(b"\r", b" ")
    else:
        return rng.choice([b"[" * rng.randint(500, 100000), b"{\"op\": " * 3000, b"\xff\xfe\xfd",
                           b'{"op": "ping", "n": 1' + b"0" * 5000 + b"}", b'{"op": "\\ud800"}', b"\x00" * 50,
                           b"null", b'{"op": null}', b'{"op": "reconstruct", "photo": "a\\u0000", "out": "b"}',
                           b" " * 100, b'{"op": "cancel", "id": ' + b"9" * 400 + b"}"])
    if isinstance(obj, dict) and obj.get("op") == "shutdown":
        obj["op"] = "shut down"
    try:
        return json.dumps(obj).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return b"{}"


def check_event(ev: dict, codes) -> None:
    assert ev["event"] in EVENTS, ev
    if ev["event"] == "error":
        assert ev.get("code") in codes and isinstance(ev.get("message"), str), ev
        assert ev.get("id") is None or isinstance(ev["id"], (str, int)), ev
    if ev["event"] == "progress":
        assert 0.0 <= ev["fraction"] <= 1.0 and isinstance(ev["stage"], str), ev


def test_worker_protocol_fuzz(tmp_path, faces_dir):
    from backend.errors import CODES
    rng = random.Random(20240613)
    bad_photo = tmp_path / "notes.jpg"
    bad_photo.write_text("not a photo\n" * 10)
    w = Worker()
    try:
        w.wait_ready()
        t0 = time.monotonic()
        seen = {}
        lines = [fuzz_line(rng, str(bad_photo), tmp_path) for _ in range(298)] + [b"x" * (2 << 20), b"[" * (1 << 21)]
        for n, line in enumerate(lines):
            w.send_raw(line + b"\n")
            w.send_raw(b'{"op": "ping"}\n')
            ev, events = w.until(lambda e: e["event"] == "pong", timeout=30)
            assert ev["event"] == "pong", (n, line[:200], "".join(w.stderr[-20:]))
            for e in events:
                check_event(e, CODES)
                seen[e.get("code") or e["event"]] = seen.get(e.get("code") or e["event"], 0) + 1
            assert w.proc.poll() is None, (n, line[:200])
        elapsed = time.monotonic() - t0
        print(f"{len(lines)} lines in {elapsed:.1f} s; answers: {seen}")
        assert elapsed < 30 and w.bad_lines == []
        assert seen.get("BAD_REQUEST", 0) > 100
        # Wait out a job a fuzz line may have started, then reconstruct for real.
        w.send({"op": "reconstruct", "id": "real", "photo": str(PHOTO), "out": str(tmp_path / "real"),
                "options": {"device": "cpu", "texture_size": 512}})
        ev, _ = w.until(lambda e: e["event"] in ("result", "error") and e.get("id") == "real")
        if ev.get("code") == "BUSY":
            time.sleep(2)
            w.send({"op": "reconstruct", "id": "real", "photo": str(PHOTO), "out": str(tmp_path / "real"),
                    "options": {"device": "cpu", "texture_size": 512}})
            ev, _ = w.until(lambda e: e["event"] in ("result", "error") and e.get("id") == "real")
        assert ev["event"] == "result", ev
        bundle_format.read_bundle(tmp_path / "real")
        assert w.bad_lines == []
    finally:
        w.close()


# ---------------------------------------------------------------------------------------------
# The bundle reader


def _replace(path: Path, data: bytes) -> None:
    """Write a new file (unlinking first: the fuzz copies share files with the base by hard links)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)


def _save_npz(path: Path, arrays: dict) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    np.savez(path, **arrays)


def _load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def random_array(rng: random.Random, like: np.ndarray | None = None) -> np.ndarray:
    n = len(like) if like is not None and like.ndim else 10
    return rng.choice([
        lambda: np.array(rng.randint(-5, 5)),                          # 0-d
        lambda: np.zeros((0,), np.int32),
        lambda: np.full(max(n, 1), rng.choice([0, 1, 2, -1, 65, 2 ** 31 - 1]), np.int32),
        lambda: np.random.default_rng(rng.randrange(2 ** 32)).integers(-(2 ** 31), 2 ** 31 - 1, max(n, 1)).astype(np.int64),
        lambda: np.full((max(n, 1), 3), np.nan, np.float32),
        lambda: np.array(["x", "y"] * max(1, n // 2)),
        lambda: np.ones((2, 3, 4), np.float64),
        lambda: np.array([1 + 2j] * max(n, 1)),
        lambda: np.ones(max(n, 1), np.bool_),
    ])()


def _mutate_array(rng: random.Random, a: np.ndarray) -> np.ndarray:
    """Damage a real array: a few values made extreme, its shape or dtype changed, or replaced."""
    op = rng.choice(["values", "values", "shape", "dtype", "replace", "strings"])
    if op == "strings":  # the right shape, the wrong kind: text where numbers belong
        return np.full(a.shape, rng.choice(["x", "", "nan", "1e999"]))
    if op == "values" and a.size and a.dtype.kind in "iuf":
        b = a.copy().reshape(-1)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for _ in range(rng.randint(1, 5)):
                value = rng.choice([0, 1, -1, 65, 10 ** 7, 26719, -26720] if b.dtype.kind in "iu"
                                   else [np.nan, np.inf, -1e30, 0.0])
                b[rng.randrange(b.size)] = np.array(value).astype(b.dtype)  # wraps around, as a damaged file would
        return b.reshape(a.shape)
    if op == "shape" and a.ndim:
        return a.reshape(-1)[: max(0, a.size - rng.randint(1, 3))] if rng.random() < 0.5 else np.concatenate([a, a[:1]])
    if op == "dtype":
        return a.astype(rng.choice([np.float32, np.int8, np.uint8, np.float16, np.int64]), copy=True) if a.dtype.kind != "U" else a.astype("S")
    return random_array(rng, a)


def _fake_header_npz(path: Path) -> None:
    """An npz whose `vertices` header claims 10^9 x 3 float32 (12 GB) over 64 bytes of data."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 3), }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + bytes(64)
    if path.exists() or path.is_symlink():
        path.unlink()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("vertices.npy", npy)


def mutate_bundle(b: Path, rng: random.Random) -> str:
    """Apply one random damage to the bundle folder `b` (its files may be hard links: files are replaced,
    never written in place). Returns what was done."""
    rj_path = b / "result.json"
    try:
        rj = json.loads(rj_path.read_text())
        model_name = rj["model"]["file"]
        assert isinstance(rj["files"], list) and rj["files"] and all(isinstance(f, dict) for f in rj["files"])
    except Exception:  # noqa: BLE001 - an earlier damage of this case: damage the other files
        rj, model_name = None, next((p.name for p in b.glob("*.npz") if p.name != "mesh.npz"), None)
    target = rng.choice(["result", "result", "files", "text", "mesh", "model", "model", "model", "png", "link"])
    if rj is None and target in ("result", "files"):
        target = "text"
    if target == "result":
        key = rng.choice(list(rj) + ["model", "material", "input", "expression", "schema_version"])
        if rng.random() < 0.3:
            rj.pop(key, None)
        elif key in rj and isinstance(rj[key], dict) and rj[key] and rng.random() < 0.6:
            sub = rng.choice(list(rj[key]))
            rj[key][sub] = random_value(rng)
            key = f"{key}.{sub}"
        else:
            rj[key] = random_value(rng)
        _replace(rj_path, json.dumps(rj).encode("utf-8", "surrogatepass"))
        return f"result.json {key}"
    if target == "files":
        files = rj["files"]
        i = rng.randrange(len(files))
        op = rng.choice(["path", "path", "role", "tile", "colorspace", "entry", "drop", "dup"])
        if op == "path":
            files[i]["path"] = rng.choice(PATH_ATTACKS + [random_value(rng)])
        elif op == "entry":
            files[i] = random_value(rng)
        elif op == "drop":
            files.pop(i)
        elif op == "dup":
            files.append(dict(files[i], role=rng.choice(["mesh", "model", "diffuse"])))
        else:
            files[i][op] = random_value(rng)
        _replace(rj_path, json.dumps(rj).encode("utf-8", "surrogatepass"))
        return f"files[{i}].{op}"
    if target == "text":
        _replace(rj_path, mutate_bytes(rng, rj_path.read_bytes()))
        return "result.json bytes"
    if target == "mesh":
        path = b / "mesh.npz"
        op = rng.choice(["array", "array", "drop", "bytes", "header", "object", "extra"])
        if op == "bytes":
            _replace(path, mutate_bytes(rng, path.read_bytes()))
        elif op == "header":
            _fake_header_npz(path)
        else:
            try:
                arrays = _load(path)
            except Exception:  # noqa: BLE001 - an earlier mutation of this case broke the file: break it more
                _replace(path, mutate_bytes(rng, path.read_bytes()))
                return "mesh.npz bytes (again)"
            if not arrays:
                return "mesh.npz (no arrays left)"
            key = rng.choice(list(arrays))
            if op == "array":
                arrays[key] = _mutate_array(rng, arrays[key])
            elif op == "drop":
                arrays.pop(key)
            elif op == "object":
                arrays[key] = np.array([{"a": 1}, None], dtype=object)
            else:
                arrays["face_sizes"] = np.zeros(3, np.int32)  # a schema-2 mesh.npz with topology is ignored
            _save_npz(path, arrays)
        return f"mesh.npz {op}"
    if target == "model" and model_name and (b / model_name).exists():
        path = b / model_name
        try:
            arrays = _load(path)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):  # an earlier mutation already broke it
            path.write_bytes(rng.randbytes(64))
            return "model file garbage"
        key = rng.choice(["face_sizes", "face_sizes", "face_vertex_indices", "corner_uvs", "face_part", "part_names",
                          "part_vertex_ranges", "part_vertex_ranges", "part_range_names", "expression_names",
                          "expression_deltas", "model_hash", "num_vertices"])
        if key == "expression_names" and rng.random() < 0.3:
            arrays[key] = np.array([f"e{i}" for i in range(300)])
        elif key == "part_vertex_ranges" and rng.random() < 0.4:
            arrays[key] = np.array([[0, 50_000_000]] + [[0, 10]] * (len(arrays[key]) - 1), np.int64)
        else:
            arrays[key] = _mutate_array(rng, arrays[key])
        _save_npz(path, arrays)
        return f"model {key}"
    if target == "png":
        pngs = sorted(b.glob("*.png"))
        path = rng.choice(pngs)
        op = rng.choice(["bytes", "bytes", "empty", "dir", "gone"])
        if op == "bytes":
            _replace(path, mutate_bytes(rng, path.read_bytes()))
        elif op == "empty":
            _replace(path, b"")
        elif op == "dir":
            path.unlink()
            path.mkdir()
        else:
            path.unlink()
        return f"{path.name} {op}"
    # a link named like one of ours (or like a UDIM tile Blender would find) pointing out of the bundle
    name = rng.choice(["diffuse.1001.png", "diffuse.1004.png", "normal.1009.png", "mesh.npz", model_name or "x.npz"])
    path = b / name
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(rng.choice(["/etc/passwd", str(b.parent), "/dev/zero", "../" * 8 + "etc/hostname"]))
    return f"link {name}"


def check_returned(bundle: bundle_format.Bundle) -> None:
    """What read_bundle promises about a bundle it returns."""
    folder = bundle.folder
    for e in bundle.entries:
        assert e.path == folder or folder in e.path.resolve().parents
    m = bundle.mesh
    V = len(m.vertices)
    assert m.vertices.shape == m.basis_vertices.shape == (V, 3) and 0 < V <= bundle_format.MAX_VERTICES
    assert np.isfinite(m.vertices).all() and np.isfinite(m.basis_vertices).all()
    assert m.face_sizes.min() >= 3 and m.face_sizes.max() <= 64 and m.face_sizes.sum() == len(m.face_vertex_indices)
    assert m.face_vertex_indices.min() >= 0 and m.face_vertex_indices.max() < V
    assert m.corner_uvs.shape == (len(m.face_vertex_indices), 2) and np.isfinite(m.corner_uvs).all()
    assert m.face_part.shape == m.face_sizes.shape and 0 <= m.face_part.min() and m.face_part.max() < len(m.part_names)
    covered = sum(z - a + 1 for _, a, z in m.part_ranges)
    assert covered <= V and all(0 <= a <= z < V for _, a, z in m.part_ranges)
    if m.expression_deltas is not None:
        assert m.expression_deltas.shape == (len(m.expression_names), V, 3)
    assert 1.0 <= bundle.skin_ior <= 3.0


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory, faces_dir) -> Path:
    out = tmp_path_factory.mktemp("fuzzbase") / "base"
    res = cli("reconstruct", PHOTO, "--out", out, *FAST, "--embed-model")
    assert res.returncode == 0, res.stderr
    # The model file uncompressed: the fuzz rewrites it often, and compressing 10 MB each time is slow.
    model = out / json.loads((out / "result.json").read_text())["model"]["file"]
    arrays = _load(model)
    model.unlink()
    np.savez(model, **arrays)
    return out


def _linked_copy(src: Path, dst: Path) -> None:
    dst.mkdir()
    for p in src.iterdir():
        os.link(p, dst / p.name)


def test_bundle_reader_fuzz(fuzz_base, tmp_path):
    rng = random.Random(1313)
    outcomes: dict[str, int] = {}
    t0 = time.monotonic()
    for i in range(300):
        b = tmp_path / f"b{i}"
        _linked_copy(fuzz_base, b)
        what = [mutate_bundle(b, rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        try:
            got = bundle_format.read_bundle(b, want_deltas=rng.random() < 0.3)
        except bundle_format.BundleError as err:
            assert err.code in ("BUNDLE_INVALID", "BUNDLE_UNSAFE", "ASSETS_MISSING"), (what, err)
            outcomes[err.code] = outcomes.get(err.code, 0) + 1
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {i} {what}: {type(err).__name__}: {err}")
        else:
            check_returned(got)
            outcomes["read"] = outcomes.get("read", 0) + 1
        shutil.rmtree(b)
    elapsed = time.monotonic() - t0
    print(f"300 damaged bundles in {elapsed:.1f} s: {outcomes}")
    assert elapsed < 30
    assert outcomes.get("BUNDLE_INVALID", 0) > 100 and outcomes.get("BUNDLE_UNSAFE", 0) > 10
    check_returned(bundle_format.read_bundle(fuzz_base, want_deltas=True))  # the base was never touched


# ---------------------------------------------------------------------------------------------
# Kills


def test_jobs_killed_at_random_points_leave_nothing_half_written(tmp_path, faces_dir):
    """Six real jobs (a real worker each) are SIGKILLed at a random moment of a chosen stage; whatever
    each leaves, the folder never holds a half-written bundle, and the next job in the same folder
    sweeps every temporary folder and succeeds."""
    from backend.bundle import is_bundle
    rng = random.Random(613)
    parent = tmp_path / "out"
    parent.mkdir()
    left_behind = []
    stage_count = {"write": 0}
    for i, stage in enumerate(["load", "detect", "fit", "texture", "write", "write"]):
        w = Worker()
        w.wait_ready()
        out = parent / f"k{i}"
        w.send({"op": "reconstruct", "id": f"k{i}", "photo": str(PHOTO), "out": str(out),
                "options": {"device": "cpu", "texture_size": 512}})
        if stage == "write":  # into the write stage: its temporary folder exists, maps are being written
            deadline = time.monotonic() + 120
            while not any(temp_owner(d) == w.proc.pid for d in parent.iterdir() if ".tmp-" in d.name):
                assert time.monotonic() < deadline and w.proc.poll() is None
                time.sleep(0.001)
            delay = rng.uniform(0.0, 0.02 if stage_count["write"] == 0 else 0.15)
            stage_count["write"] += 1
        else:
            ev, _ = w.until(lambda e: e.get("id") == f"k{i}" and (e["event"] in ("result", "error") or
                                                                   (e["event"] == "progress" and e["stage"] == stage)))
            assert ev["event"] == "progress", ev
            delay = rng.uniform(0.0, 0.4)
        time.sleep(delay)
        os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait()
        assert half_written(parent) == []
        assert not out.exists() or is_bundle(out), f"kill {i} ({stage} + {delay:.2f} s) left {out} half-written"
        left_behind += temp_folders(parent)
        print(f"kill {i}: {stage} + {delay:.2f} s -> bundle {'complete' if out.exists() else 'absent'}, "
              f"temporary folders now {temp_folders(parent)}")
    assert left_behind, "no kill landed in the write stage: the sweep was not exercised"
    res = cli("reconstruct", PHOTO, "--out", parent / "next", *FAST)
    assert res.returncode == 0, res.stderr
    assert temp_folders(parent) == [] and half_written(parent) == []
    assert is_bundle(parent / "next")

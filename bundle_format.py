"""Result bundle reader for the Blender side (docs/bundle.md, schemas 1 and 2): pure Python and numpy.

No bpy and no torch here, so it is tested without Blender; the importer (operators/importer.py) turns
what this returns into datablocks and does nothing else with the files. Everything a bundle says is
checked before Blender sees it:
- every path in result.json stays inside the bundle folder (no absolute paths, no `..`, no links out);
- mesh arrays are consistent (polygon sizes, corner indices in range, parts, vertex ranges), so no
  Blender call can be handed a mesh that crashes it or a range that costs gigabytes;
- images are PNG files whose header and end chunk are present (a truncated file is refused), and so is
  every file Blender would take as another UDIM tile of a listed image (it scans the folder for them);
- npz members are sized from their headers before any is read (no object arrays, no zip bombs), and
  result.json's sections have the types the importer uses.
Schema 2 keeps the topology, UVs, parts and expression deltas in the face model file named by its
hash: looked up inside the bundle, then in LIKENESS_MODEL_DIR, then in the per-user cache folder that
the backend writes it to; never at a path the bundle names.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

READABLE_SCHEMAS = (1, 2)
RESULT_NAME = "result.json"
MAX_RESULT_BYTES = 16 << 20
MAX_PNG_BYTES = 256 << 20        # a 4096 px RGB map is ~30 MB
MAX_VERTICES = 2_000_000
MAX_EXPRESSIONS = 256
MAX_NPZ_BYTES = 512 << 20          # all arrays of one npz file, uncompressed (the model file is ~40 MB)
COLORSPACES = ("sRGB", "Non-Color", "Linear Rec.709", "Linear", "Raw")
# result.json sections the importer reads: each is an object when present.
OBJECT_SECTIONS = ("input", "model", "material", "metrics", "timings_s", "expression", "camera", "pose")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEX = set("0123456789abcdef")


class BundleError(Exception):
    """A bundle that cannot be imported: code BUNDLE_INVALID (damaged, incomplete, unknown schema),
    BUNDLE_UNSAFE (it points outside itself) or ASSETS_MISSING (its face model file is not here)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _invalid(message: str) -> BundleError:
    return BundleError("BUNDLE_INVALID", message)


def model_dirs() -> list[Path]:
    """Where schema-2 face model files are looked for, after the bundle itself (the backend's cache)."""
    out = []
    if os.environ.get("LIKENESS_MODEL_DIR"):
        out.append(Path(os.environ["LIKENESS_MODEL_DIR"]))
    out.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "likeness" / "models")
    return out


@dataclass
class FileEntry:
    path: Path          # inside the bundle, resolved
    role: str
    tile: int | None
    colorspace: str | None


@dataclass
class MeshArrays:
    vertices: np.ndarray              # (V, 3) float32 cm, identity and expression applied
    basis_vertices: np.ndarray        # (V, 3) float32 identity only
    face_sizes: np.ndarray            # (P,) int64, each >= 3
    face_vertex_indices: np.ndarray   # (C,) int64 in [0, V)
    corner_uvs: np.ndarray            # (C, 2) float32
    face_part: np.ndarray             # (P,) int64 in [0, len(part_names))
    part_names: list[str]
    part_ranges: list[tuple[str, int, int]]   # (name, first, last) inclusive, within [0, V)
    expression_names: list[str]
    expression_deltas: np.ndarray | None      # (E, V, 3) float16/32 or None


@dataclass
class Bundle:
    folder: Path
    result: dict
    schema: int
    entries: list[FileEntry]
    mesh: MeshArrays

    def files(self, role: str) -> list[FileEntry]:
        return [e for e in self.entries if e.role == role]

    def tiles(self, role: str) -> dict[int, Path]:
        """UDIM tile -> image file of one role."""
        return {e.tile if e.tile is not None else 1001: e.path for e in self.files(role)}

    def colorspace(self, role: str, default: str) -> str:
        return next((e.colorspace for e in self.files(role) if e.colorspace), default)

    @property
    def skin_ior(self) -> float:
        return float(((self.result.get("material") or {}).get("skin") or {}).get("ior", 1.4))

    @property
    def specular_level_scale(self) -> float:
        """Factor from the specular map's value to Principled's Specular IOR Level at skin_ior. Schema 1
        maps hold Blender's classic specular (F0 = 0.08 * value): at IOR 1.4 (F0 0.0278 at level 0.5)
        that is level = value * 0.08 / (2 * 0.0278) = 1.44 * value. Schema 2 maps hold the level."""
        if self.schema >= 2:
            return 1.0
        f0 = ((self.skin_ior - 1.0) / (self.skin_ior + 1.0)) ** 2
        return 0.08 / (2.0 * f0)


# ---------------------------------------------------------------------------------------------


def inside(folder: Path, relative) -> Path:
    """The bundle file `relative` as a resolved path; BUNDLE_UNSAFE if it is absolute, climbs out of
    the bundle, or resolves (through links) to anything outside it."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise _invalid(f"a file entry has no usable path ({relative!r})")
    rel = Path(relative)
    if rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise BundleError("BUNDLE_UNSAFE", f"the bundle names a file outside itself: {relative!r}")
    full = (folder / rel).resolve()
    if full != folder and folder not in full.parents:
        raise BundleError("BUNDLE_UNSAFE", f"{relative!r} leads outside the bundle (a link?)")
    return full


def check_png(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG after checking its structure: signature, IHDR first with a sane size,
    every chunk's length and CRC, IEND last (so a truncated or damaged file is refused here; a file
    damaged and given fresh CRCs is caught by the importer, which checks what Blender decoded)."""
    try:
        if path.stat().st_size > MAX_PNG_BYTES:
            raise _invalid(f"{path.name} is larger than {MAX_PNG_BYTES >> 20} MB")
        data = memoryview(path.read_bytes())
    except OSError as ex:
        raise _invalid(f"cannot read {path.name}: {ex.strerror or ex}") from ex
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise _invalid(f"{path.name} is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    if not (0 < width <= 65536 and 0 < height <= 65536):
        raise _invalid(f"{path.name} has an impossible size {width}x{height}")
    depth, colour, interlace = data[24], data[25], data[28]
    pos, kind, idat = 8, b"", []
    while kind != b"IEND":
        if pos + 12 > len(data):
            raise _invalid(f"{path.name} is truncated")
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        end = pos + 12 + length
        if end > len(data):
            raise _invalid(f"{path.name} is truncated")
        kind = bytes(data[pos + 4:pos + 8])
        if zlib.crc32(data[pos + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise _invalid(f"{path.name} is damaged (bad {kind.decode('latin-1')!r} chunk)")
        if kind == b"IDAT":
            idat.append(data[pos + 8:end - 4])
        pos = end
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None or depth not in (1, 2, 4, 8, 16) or not idat:
        raise _invalid(f"{path.name} is not a PNG we can read (colour type {colour}, depth {depth})")
    expected = None if interlace else height * (1 + (width * channels * depth + 7) // 8)
    _check_deflate(path.name, idat, expected)
    return width, height


def _check_deflate(name: str, parts: list, expected: int | None) -> None:
    """The image data must be one whole zlib stream (its Adler-32 checked by zlib) that inflates to
    exactly the rows the header promises. Inflated in bounded pieces and thrown away: no more than a
    megabyte is held whatever the header claims (a damaged stream with fresh chunk CRCs fails here)."""
    inflater = zlib.decompressobj()
    total = 0
    try:
        for part in parts:
            chunk = inflater.decompress(part, 1 << 20)
            while True:
                total += len(chunk)
                if expected is not None and total > expected:
                    raise _invalid(f"{name} holds more image data than its size")
                if not inflater.unconsumed_tail:
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
        rest = inflater.flush()
        total += len(rest)
    except zlib.error as ex:
        raise _invalid(f"{name} is damaged ({ex})") from ex
    if not inflater.eof or (expected is not None and total != expected):
        raise _invalid(f"{name} is damaged (its image data is incomplete)")


def _load_npz(path: Path, keys=None) -> dict[str, np.ndarray]:
    """The arrays of an npz file (only `keys`, when given), after checking every member's npy header:
    plain numeric or string dtypes, and at most MAX_NPZ_BYTES in all, known before anything is read."""
    try:
        with zipfile.ZipFile(path) as zf:
            total = 0
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise _invalid(f"{path.name} holds {info.filename!r}, which is not an array")
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(fh))
                if dtype.hasobject or dtype.kind not in "biufcUS":
                    raise _invalid(f"{path.name}: {info.filename} is not a plain array ({dtype})")
                total += math.prod(shape) * dtype.itemsize
                if total > MAX_NPZ_BYTES:
                    raise _invalid(f"{path.name} holds more than {MAX_NPZ_BYTES >> 20} MB of arrays")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if keys is None or k in keys}
    except BundleError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError) as ex:  # RuntimeError: zlib, NotImplementedError: compression
        raise _invalid(f"cannot read {path.name}: {type(ex).__name__}: {ex}") from ex


def _strings(a) -> list[str]:
    return [str(x) for x in np.asarray(a).reshape(-1)]


def _model_arrays(folder: Path, result: dict, entries: list[FileEntry], keys=None) -> dict[str, np.ndarray]:
    """Schema 2: the face model file, by hash, from the bundle or the model folders."""
    model = result.get("model")
    digest = model.get("hash") if isinstance(model, dict) else None
    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
        raise _invalid("result.json names no face model hash")
    name = f"{digest[:16]}.npz"
    candidates = [e.path for e in entries if e.role == "model" and e.path.name == name]
    candidates += [d / name for d in model_dirs()]
    for path in candidates:
        if path.is_file():
            data = _load_npz(path, None if keys is None else ("model_hash",) + tuple(keys))
            if str(data.get("model_hash", "")) == digest:
                return data
    raise BundleError("ASSETS_MISSING", f"the face model file {name} of this bundle was not found (looked in the "
                      f"bundle and {', '.join(str(d) for d in model_dirs())}); run the backend once on this "
                      "machine, or make the bundle with --embed-model")


def _int_array(d: dict, key: str) -> np.ndarray:
    a = np.asarray(d[key])
    if a.dtype.kind not in "iu":
        raise _invalid(f"{key} is not an integer array")
    return a.astype(np.int64)


def validate_mesh(vertices, basis, topo: dict, want_deltas: bool) -> MeshArrays:
    """Check every array a Blender mesh is built from; BUNDLE_INVALID on the first problem."""
    try:
        v = np.asarray(vertices, dtype=np.float32)
        b = np.asarray(basis, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != 3 or not 0 < len(v) <= MAX_VERTICES or b.shape != v.shape:
            raise _invalid(f"vertices have shape {v.shape}, basis {b.shape}")
        if not (np.isfinite(v).all() and np.isfinite(b).all()):
            raise _invalid("vertices hold NaN or infinite values")
        V = len(v)
        sizes = _int_array(topo, "face_sizes")
        fvi = _int_array(topo, "face_vertex_indices")
        uvs = np.asarray(topo["corner_uvs"], dtype=np.float32)
        part = _int_array(topo, "face_part")
        names = _strings(topo["part_names"])
        if sizes.ndim != 1 or len(sizes) == 0 or sizes.min() < 3 or sizes.max() > 64:
            raise _invalid("face_sizes must be 3..64 corners per polygon")
        if fvi.ndim != 1 or int(sizes.sum()) != len(fvi):
            raise _invalid("face_sizes do not add up to the number of polygon corners")
        if fvi.min() < 0 or fvi.max() >= V:
            raise _invalid("face_vertex_indices point outside the vertices")
        if uvs.shape != (len(fvi), 2) or not np.isfinite(uvs).all():
            raise _invalid("corner_uvs do not match the polygon corners")
        if part.shape != sizes.shape or part.min() < 0 or part.max() >= len(names):
            raise _invalid("face_part does not index part_names")
        ranges = []
        if "part_vertex_ranges" in topo and "part_range_names" in topo:
            r = _int_array(topo, "part_vertex_ranges")
            rn = _strings(topo["part_range_names"])
            if r.ndim != 2 or r.shape[1] != 2 or len(r) != len(rn) or len(r) > 256:
                raise _invalid("part_vertex_ranges do not match part_range_names")
            if len(r) and (r.min() < 0 or r.max() >= V or (r[:, 1] < r[:, 0]).any()):
                raise _invalid("a part vertex range lies outside the vertices")
            order = np.argsort(r[:, 0], kind="stable")
            if len(r) > 1 and (r[order[1:], 0] <= r[order[:-1], 1]).any():
                # Disjoint (as ICT's are), so the vertex groups hold at most V indices in all.
                raise _invalid("part vertex ranges overlap")
            ranges = [(n, int(a), int(z)) for n, (a, z) in zip(rn, r)]
        exp_names = _strings(topo["expression_names"]) if "expression_names" in topo else []
        if len(exp_names) > MAX_EXPRESSIONS:
            raise _invalid(f"{len(exp_names)} expression shapes (at most {MAX_EXPRESSIONS})")
        deltas = None
        if want_deltas and "expression_deltas" in topo:
            deltas = np.asarray(topo["expression_deltas"])
            if deltas.shape != (len(exp_names), V, 3) or not np.isfinite(deltas).all():
                raise _invalid(f"expression_deltas have shape {deltas.shape}")
    except KeyError as ex:
        raise _invalid(f"the mesh lacks the array {ex.args[0]!r}") from ex
    except (ValueError, TypeError, OverflowError) as ex:  # an array of the wrong kind (strings for numbers...)
        raise _invalid(f"the mesh arrays are malformed: {type(ex).__name__}: {ex}") from ex
    return MeshArrays(v, b, sizes, fvi, uvs, part, names, ranges, exp_names, deltas)


TOPOLOGY_KEYS = ("face_sizes", "face_vertex_indices", "corner_uvs", "face_part", "part_names",
                 "part_vertex_ranges", "part_range_names", "expression_names")


def _check_sections(result: dict) -> None:
    """The sections the importer reads have the types it expects (else BUNDLE_INVALID, not a crash)."""
    for key in OBJECT_SECTIONS:
        if key in result and result[key] is not None and not isinstance(result[key], dict):
            raise _invalid(f"result.json {key!r} is not an object")
    name = (result.get("input") or {}).get("name")
    if name is not None and not isinstance(name, str):
        raise _invalid("result.json input.name is not a string")
    skin = ((result.get("material") or {}).get("skin"))
    if skin is not None:
        ior = skin.get("ior") if isinstance(skin, dict) else None
        if not (isinstance(ior, (int, float)) and not isinstance(ior, bool) and 1.0 <= ior <= 3.0):
            raise _invalid("result.json material.skin.ior is not an index of refraction (1..3)")
    expr = result.get("expression") or {}
    names, coeffs = expr.get("names"), expr.get("coefficients")
    if names is not None or coeffs is not None:
        if not (isinstance(names, list) and isinstance(coeffs, list) and len(names) == len(coeffs)
                and all(isinstance(n, str) for n in names)
                and all(isinstance(c, (int, float)) and not isinstance(c, bool) and abs(c) <= 10 for c in coeffs)):
            raise _invalid("result.json expression names and coefficients do not match")


def _check_udim_siblings(folder: Path, entries: list[FileEntry]) -> None:
    """Blender loads a tiled image's other tiles itself: every file in the folder named like a tile of
    a listed image (`diffuse.1003.png` next to `diffuse.1001.png`) must be a PNG inside the bundle
    too, or a link named like that would be read, and packed, from anywhere."""
    patterns = []
    for e in entries:
        if e.tile is not None and str(e.tile) in e.path.name:
            head, _, tail = e.path.name.rpartition(str(e.tile))
            patterns.append(re.compile(re.escape(head) + r"\d{4}" + re.escape(tail), re.IGNORECASE))
    if not patterns:
        return
    try:
        children = sorted(p.name for p in folder.iterdir())
    except OSError as ex:
        raise _invalid(f"cannot list {folder}: {ex.strerror or ex}") from ex
    for name in children:
        if any(p.fullmatch(name) for p in patterns):
            check_png(inside(folder, name))


def read_bundle(path, want_deltas: bool = False) -> Bundle:
    """Read and check a bundle folder; BundleError with a code when it cannot be imported as it is."""
    folder = Path(path).resolve()
    rj = folder / RESULT_NAME
    if not rj.is_file():
        raise _invalid(f"no {RESULT_NAME} in {folder}")
    try:
        if rj.stat().st_size > MAX_RESULT_BYTES:
            raise _invalid(f"{RESULT_NAME} is too large to be a bundle's")
        result = json.loads(rj.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as ex:  # ValueError: JSON, UTF-8, over-long integers
        raise _invalid(f"cannot read {rj}: {ex}") from ex
    if not isinstance(result, dict):
        raise _invalid(f"{RESULT_NAME} is not a JSON object")
    schema = result.get("schema_version")
    if isinstance(schema, bool) or schema not in READABLE_SCHEMAS:
        raise _invalid(f"unsupported bundle schema_version {str(schema)[:40]!r} (this add-on reads {READABLE_SCHEMAS})")
    _check_sections(result)
    files = result.get("files")
    if not isinstance(files, list):
        raise _invalid(f"{RESULT_NAME} has no file list")
    entries = []
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("role"), str):
            raise _invalid(f"a file entry is not an object with a role: {str(f)[:80]}")
        tile = f.get("tile")
        if tile is not None and not (isinstance(tile, int) and not isinstance(tile, bool) and 1001 <= tile <= 1100):
            raise _invalid(f"{str(f.get('path'))[:80]!r} has an invalid UDIM tile {str(tile)[:20]}")
        cs = f.get("colorspace")
        entries.append(FileEntry(inside(folder, f.get("path")), f["role"], tile, cs if cs in COLORSPACES else None))
    for e in entries:
        if e.path.suffix.lower() == ".png":
            if not e.path.is_file():
                raise _invalid(f"{e.path.name} is listed but missing")
            check_png(e.path)
    _check_udim_siblings(folder, entries)
    mesh_entry = next((e for e in entries if e.role == "mesh"), None)
    mesh_path = mesh_entry.path if mesh_entry else inside(folder, "mesh.npz")
    if not mesh_path.is_file():
        raise _invalid(f"mesh file missing: {mesh_path.name}")
    wanted = TOPOLOGY_KEYS + ("expression_deltas",) if want_deltas else TOPOLOGY_KEYS
    per_photo = _load_npz(mesh_path, ("vertices", "basis_vertices") + (wanted if schema == 1 else ()))
    if "vertices" not in per_photo:
        raise _invalid("mesh.npz has no vertices")
    vertices = per_photo["vertices"]
    if vertices.ndim != 2:
        raise _invalid(f"vertices have shape {vertices.shape}")
    topo = per_photo if schema == 1 else _model_arrays(folder, result, entries, wanted)
    if schema == 2:
        nv = (result.get("model") or {}).get("num_vertices")
        if isinstance(nv, int) and nv != len(vertices):
            raise _invalid("mesh.npz does not have the face model's vertex count")
    mesh = validate_mesh(vertices, per_photo.get("basis_vertices", vertices), topo, want_deltas)
    return Bundle(folder, result, int(schema), entries, mesh)


# ---------------------------------------------------------------------------------------------
# What in a results folder is ours (for the preferences' clean-up). The rule is backend/bundle.py's
# `owned_files`, re-implemented here because Blender never imports the backend: a folder is one of our
# bundles when it holds our marker (.likeness-bundle.json, format "likeness-bundle", listing the files
# we wrote) or, for schema-1 bundles that predate the marker, a result.json of schema 1 written by
# "likeness" (the files it lists are ours). Only those files are ever deleted; anything else in the
# folder stays, and so does the folder then.

MARKER_NAME = ".likeness-bundle.json"
MARKER_FORMAT = "likeness-bundle"


def _json_file(path: Path):
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def owned_files(folder) -> set[str] | None:
    """Names of the files in `folder` that the backend wrote, if it is one of our bundles; else None."""
    folder = Path(folder)
    marker = _json_file(folder / MARKER_NAME)
    if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and isinstance(marker.get("files"), list):
        return {str(f) for f in marker["files"] if isinstance(f, str)} | {MARKER_NAME}
    legacy = _json_file(folder / RESULT_NAME)
    if (isinstance(legacy, dict) and legacy.get("schema_version") == 1
            and (legacy.get("software") or {}).get("name") == "likeness" and isinstance(legacy.get("files"), list)):
        return {str(f.get("path")) for f in legacy["files"] if isinstance(f, dict)} | {RESULT_NAME}
    return None


def _owned_paths(folder: Path, names: set[str]) -> list[Path]:
    """The owned names as files directly inside `folder` (a name with a folder part, `..` or a link is
    never ours to delete)."""
    out = []
    for n in names:
        if not n or "/" in n or "\\" in n or n in (".", ".."):
            continue
        p = folder / n
        if p.is_file() and not p.is_symlink():
            out.append(p)
    return out


@dataclass
class ResultBundle:
    folder: Path
    owned_bytes: int
    other_files: int       # files in it that are not ours (kept)


def bundles_in(results_dir) -> list[ResultBundle]:
    """Our bundles directly inside `results_dir`, with the bytes their owned files take."""
    root = Path(results_dir)
    out = []
    try:
        children = [c for c in root.iterdir() if c.is_dir() and not c.is_symlink()]
    except OSError:
        return out
    for c in sorted(children):
        names = owned_files(c)
        if names is None:
            continue
        paths = _owned_paths(c, names)
        try:
            everything = [p for p in c.iterdir()]
        except OSError:
            continue
        out.append(ResultBundle(c, sum(p.stat().st_size for p in paths), len(everything) - len(paths)))
    return out


def remove_bundle(folder) -> int:
    """Delete the files we wrote in `folder` (and the folder when that empties it); bytes freed."""
    folder = Path(folder)
    names = owned_files(folder)
    if names is None:
        return 0
    freed = 0
    for p in _owned_paths(folder, names):
        try:
            size = p.stat().st_size
            p.unlink()
            freed += size
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass
    return freed


def clean_results(results_dir, in_use) -> tuple[int, int, list[Path]]:
    """Remove every bundle of ours in `results_dir` except those in `in_use` (resolved folders).
    Returns (bundles removed, bytes freed, bundles kept because in use)."""
    keep = {Path(p).resolve() for p in in_use}
    removed, freed, kept = 0, 0, []
    for b in bundles_in(results_dir):
        if b.folder.resolve() in keep:
            kept.append(b.folder)
            continue
        freed += remove_bundle(b.folder)
        removed += 1
    return removed, freed, kept

"""Turn upstream ICT-FaceKit (the folder FaceXModel/ of ICT-VGL/ICT-FaceKit) into the packed form
the backend reads (see the asset README and facemodel.py).

Upstream ships one OBJ per shape: the neutral mesh, identity000..identity099 and 57 expressions, all
in one topology. The pack keeps the neutral and stores every other OBJ as its offset from the neutral
in float32, in one shape_modes.npz, next to copies of the neutral OBJ, vertex_indices.json, the
material file and the licence. A manifest.json records the sha256 of every written file and of every
source file, so a pack can be re-checked (`verify_pack`) and re-packing the same source is a no-op.

    python -m backend.ict_pack SRC DST     # SRC: FaceXModel/ or the repository folder that holds it
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import LikenessError
from .paths import ICT_PACK_SHA256

UPSTREAM_REPOSITORY = "ICT-VGL/ICT-FaceKit"
UPSTREAM_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
UPSTREAM_FOLDER = "FaceXModel"

NEUTRAL_OBJ = "generic_neutral_mesh.obj"
INDICES_JSON = "vertex_indices.json"
MATERIAL_MTL = "ICTFaceModelMaterial.mtl"
SHAPE_MODES = "shape_modes.npz"
MANIFEST = "manifest.json"
LICENCE_FILES = ("LICENSE", "CREDITS.md")  # copied when present: MIT asks to keep the notice with copies
NUM_VERTICES = 26719  # ICT Face Model Light at that commit; facemodel.VERTEX_RANGES assume it
# sha256 of the shape_modes.npz that packing the whole FaceXModel/ of UPSTREAM_COMMIT gives (kept in
# paths.py, which imports nothing heavy, so that backend.doctor can check it without numpy).
PACK_SHA256 = ICT_PACK_SHA256

IDENTITY_NAMES = tuple(f"identity{i:03d}" for i in range(100))
# Shapes upstream ships besides the 53 ARKit-named ones of vertex_indices.json["expressions"].
EXTRA_EXPRESSIONS = ("PupilDilate_L", "PupilDilate_R", "cheekRaiser_L", "cheekRaiser_R")

# sha256 of upstream files at UPSTREAM_COMMIT that we have seen byte for byte (the shared sample).
# Only hashes, never ICT data. The manifest says which source files matched these.
KNOWN_UPSTREAM_SHA256 = {
    NEUTRAL_OBJ: "eedbc2576d8e5ea57f55255b8f98263213a1efb5431d8bfceed1d7aef10271f9",
    INDICES_JSON: "4f9b35306299980dd46bee4a6b79bb95dfae1953693b74b35a64f7febfd081a5",
    MATERIAL_MTL: "9c2c6daf384a2d1f5536d330339a897a312f57d89587b9be31bec7fe7b37c297",
    "LICENSE": "b20a78d8fc51657e14f3e00c8abb538d786ad00aa63210328c22565e583167e1",
    "identity000.obj": "918160cf82d541336b4c367cf93199c9827832bde02511b8fbdf9019d6f1a773",
    "identity001.obj": "325115059deb6691cb2d55da07ae38bb08ce36e4ea146982f294a17513155b3b",
    "jawOpen.obj": "8d84355e10f48b05550980cee385bcd426f4797090da76a20de0535bb2f99f4a",
    "eyeBlink_L.obj": "f5ed1c3072a400083b7d4f7f5cb3d73882b7ebb95c3232f957394db8cf7fe19e",
}

Progress = Callable[[str, float], None]   # (stage, fraction of the whole pack 0..1), as pipeline.py
CancelCheck = Callable[[], None]          # raises to stop, as pipeline.py

_READ_SHARE = 0.85  # share of the progress bar for reading the OBJs (writing/compressing is the rest)


def expression_names(indices: dict) -> list[str]:
    """The expression stems in the packed file's order: plain code-point order of the 53 + 4 names
    (which puts PupilDilate_* first), as in the shared shape_modes.npz."""
    return sorted(set(indices["expressions"]) | set(EXTRA_EXPRESSIONS))


def resolve_source(src_dir: str | os.PathLike) -> tuple[Path, Path | None]:
    """(folder with the OBJs, repository root or None). Accepts FaceXModel/ itself or the folder
    holding it (an unpacked archive of the repository); the licence lives at the repository root."""
    src = Path(src_dir)
    if (src / UPSTREAM_FOLDER).is_dir():
        return src / UPSTREAM_FOLDER, src
    return src, (src.parent if src.name == UPSTREAM_FOLDER else None)


def _missing_message(src: Path, missing: list[str]) -> str:
    """Names every missing file, with runs of identity OBJs written as one range (a wrong folder
    misses all 157 mode OBJs: a list of 100 identity names would hide the rest)."""
    items, run = [], []

    def flush():
        if run:
            items.append(f"identity{run[0]:03d}.obj" if len(run) == 1 else
                         f"identity{run[0]:03d}..identity{run[-1]:03d}.obj ({len(run)} files)")
            run.clear()
    for name in missing:
        stem = name[:-4] if name.endswith(".obj") else ""
        if stem in IDENTITY_NAMES and (not run or int(stem[8:]) == run[-1] + 1):
            run.append(int(stem[8:]))
            continue
        flush()
        if stem in IDENTITY_NAMES:
            run.append(int(stem[8:]))
        else:
            items.append(name)
    flush()
    return (f"{len(missing)} ICT-FaceKit file(s) missing in {src}: {', '.join(items)}. Expected the folder "
            f"{UPSTREAM_FOLDER}/ of {UPSTREAM_REPOSITORY} (commit {UPSTREAM_COMMIT[:12]}) with all its files.")


def _missing_error(src: Path, missing: list[str], note: str = "") -> LikenessError:
    err = LikenessError("ASSETS_MISSING", _missing_message(src, missing) + note)
    err.missing = missing  # the whole list, for callers that show it
    return err


def _line_block(text: bytes, tag: bytes) -> bytes:
    """From the first line that starts with `tag` to the end of the last one (text starts with a
    newline). Upstream writes each kind of line in one run, so this is a slice, not a line loop."""
    start = text.find(b"\n" + tag)
    if start < 0:
        return b""
    end = text.find(b"\n", text.rfind(b"\n" + tag) + 1)
    return text[start + 1:end if end >= 0 else len(text)]


def read_obj_vertices(path: Path) -> tuple[np.ndarray, str, str]:
    """(vertices float64 (V, 3), sha256 of the file, sha256 of its face block).

    Only the "v x y z" lines are parsed, in one numpy conversion of all their tokens: about 20 ms
    for an upstream OBJ, of which 14 ms is numpy turning 80,157 numbers into doubles (a float() per
    coordinate in a line loop takes about 40 ms). Float64 first: the stored modes are
    float32(vertices - neutral) computed in float64, which is what the shared pack holds (a float32
    subtraction differs by up to 1.8e-6 cm). The face-block hash is the cheap topology check: the
    bytes from the first to the last "f" line (the usemtl lines between them included, as they
    give the parts their materials) must be the neutral's.
    """
    raw = path.read_bytes()
    file_sha = hashlib.sha256(raw).hexdigest()
    text = b"\n" + (raw.replace(b"\r\n", b"\n") if b"\r" in raw else raw)  # "\r": unpacked on Windows
    faces_sha = hashlib.sha256(_line_block(text, b"f ")).hexdigest()
    block = _line_block(text, b"v ")
    tokens = block.split()
    count = len(tokens) // 4
    if block and len(tokens) == 4 * count and tokens[0::4].count(b"v") == count == block.count(b"\nv ") + 1:
        del tokens[0::4]  # every line of the block is "v x y z": keep the numbers
    else:  # other lines among the v lines, or not three numbers each: the line by line way
        coords = [line[2:] for line in text.split(b"\n") if line[:2] == b"v "]
        tokens = b" ".join(coords).split()
        if len(tokens) != 3 * len(coords):
            raise LikenessError("ASSETS_MISSING", f"{path}: {len(coords)} vertex lines but {len(tokens)} numbers; "
                                                  "expected 'v x y z' lines as upstream writes them")
    try:
        vertices = np.array(tokens, dtype=np.float64).reshape(-1, 3)
    except ValueError as exc:
        raise LikenessError("ASSETS_MISSING", f"{path}: a vertex line that is not numbers ({exc})") from None
    return vertices, file_sha, faces_sha


def _source_files(src: Path, root: Path | None, require_complete: bool):
    """The source inventory: (indices dict, {stem: obj path} for the modes, {name: path} to copy).
    Raises ASSETS_MISSING naming every missing file (only the neutral and the index file when
    `require_complete` is False)."""
    missing = []
    for name in (NEUTRAL_OBJ, INDICES_JSON) + ((MATERIAL_MTL,) if require_complete else ()):
        if not (src / name).is_file():
            missing.append(name)
    indices = None
    if INDICES_JSON not in missing:
        try:
            indices = json.loads((src / INDICES_JSON).read_text(encoding="utf-8"))
            exp_names = expression_names(indices)
        except (ValueError, KeyError, TypeError) as exc:
            raise LikenessError("ASSETS_MISSING", f"{src / INDICES_JSON} is not upstream's index file ({exc!r})") from None
    else:
        exp_names = sorted(EXTRA_EXPRESSIONS)  # the other 53 are named in the missing index file
    wanted = list(IDENTITY_NAMES) + exp_names
    absent = [stem + ".obj" for stem in wanted if not (src / f"{stem}.obj").is_file()]
    if require_complete:
        missing += absent
    if missing:  # without the index file, say why the 53 ARKit-named OBJs are not in the list
        raise _missing_error(src, missing, "" if indices else f" ({INDICES_JSON} names 53 more expression OBJs.)")
    present = {stem: src / f"{stem}.obj" for stem in wanted if (src / f"{stem}.obj").is_file()}
    copies = {name: src / name for name in (NEUTRAL_OBJ, INDICES_JSON, MATERIAL_MTL) if (src / name).is_file()}
    for name in LICENCE_FILES:
        for folder in (src, root):
            if folder is not None and (folder / name).is_file():
                copies[name] = folder / name
                break
    return indices, exp_names, present, copies


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_digest(files: dict[str, str]) -> str:
    """One sha256 for the whole source set: over the sorted 'name sha256' lines."""
    return hashlib.sha256("".join(f"{n} {s}\n" for n, s in sorted(files.items())).encode()).hexdigest()


def _pack_names(dst: Path) -> list[str]:
    """Names pack_ict writes that already exist in dst."""
    names = (SHAPE_MODES, NEUTRAL_OBJ, INDICES_JSON, MATERIAL_MTL, MANIFEST) + LICENCE_FILES
    return [n for n in names if (dst / n).exists()]


def _read_manifest(dst: Path) -> dict | None:
    try:
        return json.loads((dst / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def verify_pack(dst_dir: str | os.PathLike) -> list[str]:
    """Re-check a pack against its manifest: the problems found, [] when every file is as written."""
    dst = Path(dst_dir)
    manifest = _read_manifest(dst)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return [f"{dst / MANIFEST} is missing or not a pack manifest"]
    problems = []
    for name, entry in manifest["files"].items():
        path = dst / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != entry.get("bytes") or _sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name} differs from the manifest (modified or damaged)")
    return problems


def _write_npz(path: Path, arrays: dict[str, np.ndarray], check: CancelCheck) -> None:
    """np.savez_compressed's layout (deflated .npy members, the zip epoch as their date, so the same
    source gives the same bytes), written here so that a cancel can land between members."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            check()
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:  # force_zip64 as numpy (gh-10776)
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def pack_ict(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, progress: Progress | None = None,
             cancel_check: CancelCheck | None = None, *, overwrite: bool = False,
             require_complete: bool = True) -> Path:
    """Pack upstream ICT-FaceKit OBJs from `src_dir` into `dst_dir`; returns dst_dir.

    - ASSETS_MISSING names every missing source file, or says which OBJ has another vertex count or
      topology than the neutral.
    - OUTPUT_EXISTS when dst_dir holds pack files of another source (or of unknown origin) and
      `overwrite` is False. A pack of the same source that still verifies is left as it is.
    - `require_complete=False` packs whatever modes are present (tests on the upstream sample only:
      FaceModel needs all 53 named expressions); the manifest then says "complete": false.
    - Files are written under temporary names in dst_dir and renamed into place; shape_modes.npz is
      renamed last, so an interrupted pack never leaves a shape_modes.npz (nor a folder that
      paths.find_ict_dir takes for a pack).
    """
    check = cancel_check or (lambda: None)
    report = progress or (lambda stage, fraction: None)
    src, root = resolve_source(src_dir)
    dst = Path(dst_dir)
    if not src.is_dir():
        raise LikenessError("ASSETS_MISSING", f"{src} is not a folder; expected {UPSTREAM_FOLDER}/ of {UPSTREAM_REPOSITORY}")
    if dst.exists() and src.resolve() == dst.resolve():
        raise LikenessError("OUTPUT_EXISTS", f"{dst} is the source folder; pack into another folder")
    if dst.exists() and not dst.is_dir():
        raise LikenessError("OUTPUT_EXISTS", f"{dst} exists and is not a folder")
    _, exp_names, modes, copies = _source_files(src, root, require_complete)
    existing = _pack_names(dst) if dst.is_dir() else []
    old_manifest = _read_manifest(dst) if existing else None
    if existing and not overwrite and old_manifest is None:  # fail before the slow part
        raise LikenessError("OUTPUT_EXISTS", f"{dst} already holds {', '.join(existing)} of unknown origin; "
                                             "choose another folder or allow overwrite")

    # Read: the neutral, then each mode against it.
    report("read", 0.0)
    neutral, neutral_sha, neutral_faces = read_obj_vertices(src / NEUTRAL_OBJ)
    if len(neutral) != NUM_VERTICES:
        raise LikenessError("ASSETS_MISSING", f"{src / NEUTRAL_OBJ} has {len(neutral)} vertices, not the "
                                              f"{NUM_VERTICES} of ICT Face Model Light: another model or version")
    source_sha = {NEUTRAL_OBJ: neutral_sha}
    identity_stems = [s for s in IDENTITY_NAMES if s in modes]
    expression_stems = [s for s in exp_names if s in modes]
    stacks = {"identity": np.empty((len(identity_stems), len(neutral), 3), np.float32),
              "expression": np.empty((len(expression_stems), len(neutral), 3), np.float32)}
    order = [("identity", i, s) for i, s in enumerate(identity_stems)] + \
            [("expression", i, s) for i, s in enumerate(expression_stems)]
    for done, (kind, row, stem) in enumerate(order):
        check()
        path = modes[stem]
        vertices, sha, faces = read_obj_vertices(path)
        if len(vertices) != len(neutral):
            raise LikenessError("ASSETS_MISSING", f"{path} has {len(vertices)} vertices but {NEUTRAL_OBJ} has "
                                                  f"{len(neutral)}: not a shape of this model (damaged or another version)")
        if faces != neutral_faces:
            raise LikenessError("ASSETS_MISSING", f"{path} has other faces than {NEUTRAL_OBJ}: "
                                                  "not the same topology (damaged or another version)")
        stacks[kind][row] = vertices - neutral  # float64 difference, stored rounded to float32
        source_sha[path.name] = sha
        report("read", _READ_SHARE * (done + 1) / (len(order) + 1))
    for name, path in copies.items():
        if name != NEUTRAL_OBJ:
            source_sha[name] = _sha256_file(path)
    digest = _source_digest(source_sha)

    if existing and not overwrite:
        same = (old_manifest.get("source", {}).get("sha256") == digest
                and old_manifest.get("complete") == require_complete and not verify_pack(dst))
        if same:  # this source is packed there already and intact: nothing to do
            report("write", 1.0)
            return dst
        raise LikenessError("OUTPUT_EXISTS", f"{dst} holds a pack of another source (or a damaged one); "
                                             "choose another folder or allow overwrite")

    # Write: everything under temporary names first; the renames are the only visible steps.
    check()
    report("write", _READ_SHARE)
    created = not dst.exists()
    dst.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}

    def temp_for(name: str) -> Path:
        fd, tmp = tempfile.mkstemp(dir=dst, prefix=f".{name}.", suffix=".partial")
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the pack is ordinary readable data
        temps[name] = Path(tmp)
        return temps[name]

    ok = False
    try:
        arrays = {"neutral": neutral.astype(np.float32), "identity": stacks["identity"],
                  "expression": stacks["expression"], "identity_names": np.asarray(identity_stems),
                  "expression_names": np.asarray(expression_stems)}
        _write_npz(temp_for(SHAPE_MODES), arrays, check)
        for name, path in copies.items():
            check()
            shutil.copyfile(path, temp_for(name))
        written = {name: {"sha256": _sha256_file(tmp), "bytes": tmp.stat().st_size} for name, tmp in temps.items()}
        manifest = {
            "format": "likeness-ict-pack", "version": 1, "complete": require_complete,
            "source": {"repository": UPSTREAM_REPOSITORY, "commit": UPSTREAM_COMMIT, "folder": UPSTREAM_FOLDER,
                       "sha256": digest, "files": dict(sorted(source_sha.items())),
                       "match_known_upstream": sorted(n for n, s in source_sha.items()
                                                      if KNOWN_UPSTREAM_SHA256.get(n) == s),
                       "differ_from_known_upstream": sorted(n for n, s in source_sha.items()
                                                            if n in KNOWN_UPSTREAM_SHA256
                                                            and KNOWN_UPSTREAM_SHA256[n] != s)},
            "counts": {"vertices": int(len(neutral)), "identity": len(identity_stems),
                       "expression": len(expression_stems)},
            "files": dict(sorted(written.items())),
        }
        temp_for(MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        for tmp in temps.values():
            _fsync(tmp)
        check()
        # Past this point nothing is cancelled. With overwrite, the old npz goes first so that the
        # folder is never an old npz beside new copies; the new npz is the last rename.
        if overwrite and (dst / SHAPE_MODES).exists():
            (dst / SHAPE_MODES).unlink()
        for name in [n for n in temps if n != SHAPE_MODES] + [SHAPE_MODES]:
            os.replace(temps[name], dst / name)
        for name in set(existing) - set(temps):  # e.g. a CREDITS.md the new source does not have
            (dst / name).unlink(missing_ok=True)
        ok = True
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)  # those already renamed are gone; the others must not stay
        if not ok and created:
            shutil.rmtree(dst, ignore_errors=True)  # only our temporaries were ever in it
    report("write", 1.0)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.ict_pack", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--overwrite] [--partial] SRC DST\n       %(prog)s --verify DST")
    parser.add_argument("paths", nargs="+", metavar="SRC DST",
                        help=f"SRC: upstream {UPSTREAM_FOLDER}/ (or the unpacked repository that holds it); "
                             "DST: folder for the pack (point LIKENESS_ICT_DIR at it)")
    parser.add_argument("--overwrite", action="store_true", help="replace a pack of another source in DST")
    parser.add_argument("--partial", action="store_true", help="pack only the OBJs present (for tests only)")
    parser.add_argument("--verify", action="store_true", help="re-check DST against its manifest (exit 1 if not)")
    args = parser.parse_args(argv)
    if len(args.paths) != (1 if args.verify else 2):
        parser.error("--verify takes DST only" if args.verify else "give SRC and DST")
    try:
        if args.verify:
            problems = verify_pack(args.paths[0])
            for p in problems:
                print(f"{args.paths[0]}: {p}", file=sys.stderr)
            return 1 if problems else 0

        def progress(stage: str, fraction: float) -> None:
            print(f"\r{stage} {fraction:6.1%}", end="", file=sys.stderr, flush=True)
        out = pack_ict(*args.paths, progress, overwrite=args.overwrite, require_complete=not args.partial)
        print(file=sys.stderr)
        print(out.absolute())
        return 0
    except LikenessError as err:
        print(f"\n{err.code}: {err.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

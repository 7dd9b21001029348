"""Command line: setup, reconstruct, batch, demo, worker, bench (see README)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import LikenessError
from .signals import Interrupted
from .signals import install as install_signal_handlers

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DEMO_DIR = Path("out/demo")


def _options(args):
    from .pipeline import Options, validate
    texture = args.texture or Options().texture      # one default: the pipeline's
    return validate(Options(device=args.device, texture_size=args.texture_size, texture=texture,
                            overwrite=getattr(args, "overwrite", False),
                            embed_model=getattr(args, "embed_model", False), ict_dir=args.ict_dir))


def _summary(result: dict) -> str:
    m, t = result["metrics"], result["timings_s"]
    return (f"{result['input']['name']}: landmark error {m['landmark_error_px']:.2f} px "
            f"({m['landmark_error_iod']:.2%} of inter-ocular), {t['total']:.2f} s")


def cmd_reconstruct(args) -> int:
    from .pipeline import reconstruct
    result = reconstruct(args.photo, args.out, _options(args))
    print(_summary(result), file=sys.stderr)
    print(Path(args.out).absolute())
    if args.export:  # the Blender side's exporter, through bpy or a Blender binary (export_runner.py)
        from .export_runner import export_bundle
        print(export_bundle(Path(args.out), args.export, blender=args.blender))
    return 0


def list_photos(in_dir: Path) -> list[Path]:
    """The image files of a folder, by extension (`.jpg` counts: Path.suffix would see none)."""
    from .naming import split_name
    return sorted(p for p in in_dir.iterdir() if "." + split_name(p.name)[1] in IMAGE_SUFFIXES and p.is_file())


def cmd_batch(args) -> int:
    from .naming import batch_outputs, bundle_photo_name
    from .pipeline import reconstruct
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    if not in_dir.is_dir():
        raise LikenessError("FILE_NOT_FOUND", f"{in_dir} is not a folder")
    photos = list_photos(in_dir)
    names = batch_outputs(photos, out_dir)   # one safe, unique folder per photo (backend/naming.py)
    done, skipped, failed = [], [], []
    for photo in photos:
        target = out_dir / names[photo]
        if bundle_photo_name(target) == photo.name:
            skipped.append(photo.name)
            continue
        try:
            result = reconstruct(photo, target, _options(args))
            done.append(photo.name)
            print("ok      " + _summary(result), file=sys.stderr)
        except LikenessError as err:
            failed.append({"photo": photo.name, "code": err.code, "message": err.message})
            print(f"FAILED  {photo.name}: {err.code}: {err.message}", file=sys.stderr)
    summary = {"done": done, "skipped": skipped, "failed": failed,
               "bundles": {p.name: names[p] for p in photos}}
    print(json.dumps(summary, indent=1))
    print(f"batch: {len(done)} done, {len(skipped)} skipped (already there), {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


def demo_photo():
    """The embedded default photo: skimage.data.astronaut() (public domain: NASA)."""
    from skimage import data
    from .imageio import photo_from_array
    return photo_from_array(data.astronaut(), "astronaut.png")


def cmd_demo(args) -> int:
    from .bundle import write_png
    from .pipeline import reconstruct
    args.overwrite = True  # the demo folder is ours to refresh
    photo = demo_photo()
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    write_png(DEMO_DIR / "astronaut.png", photo.rgb)
    result = reconstruct(photo, DEMO_DIR / "astronaut", _options(args))
    print(_summary(result), file=sys.stderr)
    print((DEMO_DIR / "astronaut").absolute())
    return 0


def cmd_setup(args) -> int:
    from .setup_assets import setup
    setup(args.ict_dir, args.segmentation_dir)
    return 0


def cmd_worker(args) -> int:
    from .worker import main as worker_main
    return worker_main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Likeness backend: photo -> 3D head bundle")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, out=True):
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--texture-size", type=int, default=1024, help="UDIM tile size: 512, 1024 or 2048")
        p.add_argument("--texture", default=None, help="texture strategy: generated (the default: the photo's "
                       "light divided out, the unseen parts from the UV diffusion generator), delit (the same "
                       "with the albedo model's fill) or projection (v0: the photo as it is)")
        p.add_argument("--embed-model", action="store_true",
                       help="copy the face model file (10 MB) into the bundle, to import it on another machine")
        p.add_argument("--ict-dir", default=None, help="folder of the packed ICT-FaceKit files")

    p = sub.add_parser("reconstruct", help="one photo -> one bundle folder")
    p.add_argument("photo")
    p.add_argument("--out", required=True, help="the bundle folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--export", choices=["glb", "fbx", "obj", "usdz"], default=None,
                   help="also export the head (maps baked to 0-1 UVs, shape keys) to OUT.<format>, textures beside it")
    p.add_argument("--blender", default=None, help="Blender binary for --export when bpy is not installed "
                                                   "(default: $LIKENESS_BLENDER, then blender on the PATH)")
    common(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("batch", help="every photo of a folder -> OUT_DIR/<photo stem>/ (finished ones skipped; "
                       "a stem shared by two photos gets the extension: a_jpg, a_png)")
    p.add_argument("in_dir")
    p.add_argument("out_dir")
    common(p)
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("demo", help=f"reconstruct the embedded default photo into {DEMO_DIR}/astronaut")
    common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("setup", help="fetch MediaPipe's model and find ICT-FaceKit (idempotent)")
    p.add_argument("--ict-dir", default=None)
    p.add_argument("--segmentation-dir", default=None,
                   help="folder of MediaPipe's hair_segmentation.tflite and selfie_segmentation.tflite")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("worker", help="JSON-lines worker for Blender (docs/worker-protocol.md)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("bench", help="speed, memory and fidelity (python -m backend bench --help)", add_help=False)
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    # SIGTERM/SIGINT/SIGHUP raise Interrupted: a job stopped by one cleans up like a failed one.
    install_signal_handlers()
    try:
        return args.func(args)
    except LikenessError as err:
        print(f"error {err.code}: {err.message}", file=sys.stderr)
        return 2
    except Interrupted as it:
        print(f"{it}: stopped; nothing half-written was left", file=sys.stderr)
        return it.exit_code
    finally:
        if args.command != "worker":
            print(f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

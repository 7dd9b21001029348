"""Import one result bundle into a fresh scene, light it, save a .blend and render a PNG (Cycles CPU).

    .venv/bin/python scripts/render_bundle.py BUNDLE_OR_FOLDER [--blend OUT.blend] [--png OUT.png]
    blender -b --python scripts/render_bundle.py -- BUNDLE_OR_FOLDER [options]

BUNDLE_OR_FOLDER is a bundle (a folder with result.json) or a folder holding bundles (the newest
is used, e.g. out/demo). Used by `make blender-demo` and for the README render.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parents[1]


def load_likeness():
    """The extension's modules, imported from this checkout as the package `likeness`."""
    if "likeness" in sys.modules:
        return sys.modules["likeness"]
    spec = importlib.util.spec_from_file_location("likeness", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["likeness"] = mod
    spec.loader.exec_module(mod)
    return mod


def script_args() -> list[str]:
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]


def main() -> int:
    load_likeness()
    from likeness.operators import relight, render
    ap = argparse.ArgumentParser(prog="render_bundle.py", description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--blend", help="save the scene here")
    ap.add_argument("--png", help="render a PNG here")
    ap.add_argument("--preset", default="STUDIO", choices=["NONE", *relight.PRESETS])
    ap.add_argument("--resolution", type=int, default=384)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--denoise", action="store_true")
    ap.add_argument("--yaw", type=float, default=0.0, help="camera yaw in degrees (0 = frontal)")
    ap.add_argument("--pitch", type=float, default=0.0)
    ap.add_argument("--shape-keys", action="store_true")
    ap.add_argument("--pack", action="store_true", help="pack the textures into the .blend")
    ap.add_argument("--transparent", action="store_true", help="transparent film (RGBA PNG)")
    a = ap.parse_args(script_args())
    bundle = render.find_bundle(a.bundle)
    t = time.perf_counter()
    obj = render.build_preview_scene(bundle, preset=a.preset, shape_keys=a.shape_keys, pack_images=a.pack,
                                     resolution=a.resolution, samples=a.samples, denoise=a.denoise,
                                     yaw_deg=a.yaw, pitch_deg=a.pitch, film_transparent=a.transparent)
    print(f"imported {bundle} as {obj.name!r} in {obj['likeness_import_s']:.3f} s "
          f"(scene ready in {time.perf_counter() - t:.2f} s)")
    if a.blend:
        Path(a.blend).parent.mkdir(parents=True, exist_ok=True)
        bpy.ops.wm.save_as_mainfile(filepath=str(Path(a.blend).resolve()))
        print(f"saved {a.blend}")
    if a.png:
        t = time.perf_counter()
        render.render_png(bpy.context.scene, a.png)
        print(f"rendered {a.png} in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

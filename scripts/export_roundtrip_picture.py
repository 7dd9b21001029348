"""The imported bundle and its .glb export imported again, side by side (docs/img/export_roundtrip.png).

    .venv/bin/python scripts/export_roundtrip_picture.py BUNDLE [--out docs/img/export_roundtrip.png]

Both halves: Studio preset, the same framed camera (yaw 20, pitch 5), Cycles on the CPU (320 px, 32 samples,
denoised when the build has a denoiser). The right half is what another tool gets from the .glb: Blender's
own glTF importer, no Likeness material.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from render_bundle import load_likeness  # noqa: E402

SIDE, SAMPLES, YAW, PITCH = 320, 32, 20.0, 5.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "export_roundtrip.png")
    a = ap.parse_args()
    load_likeness()
    import bpy
    from likeness.operators import export, relight, render
    work = Path(tempfile.mkdtemp(prefix="likeness-roundtrip-"))
    head = render.build_preview_scene(a.bundle, preset="STUDIO", resolution=SIDE, samples=SAMPLES, denoise=True,
                                      yaw_deg=YAW, pitch_deg=PITCH)
    render.render_png(bpy.context.scene, work / "imported.png")
    rep = export.export_head(head, work / "head.glb", "GLB")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(rep.path))
    scene = bpy.context.scene
    objs = [o for o in scene.objects if o.type == "MESH"]
    for o in objs:
        o["likeness_head"] = True      # what the presets and the framing look for
    relight.apply_preset("STUDIO", scene, objs)
    bpy.context.view_layer.update()
    render.frame_camera(scene, objs, yaw_deg=YAW, pitch_deg=PITCH)
    render.setup_cycles(scene, resolution=SIDE, samples=SAMPLES, denoise=render.denoiser_available())
    render.render_png(scene, work / "roundtrip.png")
    cells = [np.asarray(Image.open(work / n).convert("RGB")) for n in ("imported.png", "roundtrip.png")]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(cells, axis=1)).save(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

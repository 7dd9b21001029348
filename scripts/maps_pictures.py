"""Pictures of the measured maps for docs/maps.md: a close-up under a grazing light with flat against
measured detail normals, and the head under the Rim preset with constant specular and roughness (0.5,
0.5) against the bundle's measured ones, both with the detail normals (docs/img/maps_grazing.png,
docs/img/maps_rim.png).

    .venv/bin/python scripts/maps_pictures.py --photo PHOTO [--samples 16] [--out docs/img]

One de-lit bundle of the photo (the default texture strategy, which writes the measured maps), imported
with its photo camera and rendered with Cycles on the CPU. The "flat" and "constant" halves are the same
import with the Normal Map node and/or the specular and roughness maps unlinked (the sockets at the
bundle's neutral values: flat normal, Specular IOR Level 0.5, Roughness 0.5), so that nothing else
differs between the two halves.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from relight_pictures import label as labelled  # noqa: E402
from render_bundle import load_likeness  # noqa: E402

GRAZING = {"label": "Grazing", "description": "one sun from the side, 6 degrees above the horizon",
           "world": (1.0, 1.0, 1.0), "world_strength": 0.01,
           "lights": [{"name": "Graze", "type": "SUN", "az": 84, "el": 6, "dist": 4.0, "irradiance": 5.0,
                       "angle_deg": 0.5, "color": (1.0, 1.0, 1.0)}]}


def _skin_bsdf(obj):
    mat = obj.data.materials[0]
    return mat.node_tree, next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")


def _unlink(nt, socket, value) -> None:
    for link in list(socket.links):
        nt.links.remove(link)
    socket.default_value = value


def render(bundle: Path, photo: Path, preset: str, variant: str, size: int, samples: int, zoom: float) -> np.ndarray:
    import bpy
    from likeness.operators import importer, relight, render as rd
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = importer.import_bundle(bundle, scene=scene, location=(0.0, 0.0, 0.0), photo_camera_for=str(photo),
                                 make_scene_camera=True)
    nt, bsdf = _skin_bsdf(obj)
    if variant in ("flat", "v0"):
        _unlink(nt, bsdf.inputs["Normal"], (0.0, 0.0, 0.0))
    if variant in ("constant", "v0"):
        _unlink(nt, bsdf.inputs["Specular IOR Level"], 0.5)
        _unlink(nt, bsdf.inputs["Roughness"], 0.5)
    relight.apply_preset(preset, scene, [obj])
    rd.setup_cycles(scene, resolution=size, samples=samples, denoise=rd.denoiser_available(), film_transparent=True)
    scene.camera.data.lens *= zoom
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    with tempfile.TemporaryDirectory() as tmp:
        png = rd.render_png(scene, Path(tmp) / "cell.png")
        rgba = np.asarray(Image.open(png).convert("RGBA"), np.float32) / 255.0
    a = rgba[..., 3:4]
    return np.clip((rgba[..., :3] * a + 0.12 * (1 - a)) * 255 + 0.5, 0, 255).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, help="an existing de-lit bundle of the photo (else one is made)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    a = ap.parse_args()
    load_likeness()
    from likeness.operators import relight
    relight.PRESETS["GRAZING"] = GRAZING
    bundle = a.bundle
    if bundle is None:
        bundle = Path(tempfile.gettempdir()) / f"likeness-maps-{a.photo.stem}"
        subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(a.photo), "--out", str(bundle),
                        "--texture", "delit", "--overwrite"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    a.out.mkdir(parents=True, exist_ok=True)
    for preset, name, variants, zoom in (("GRAZING", "maps_grazing.png", (("flat", "flat normal map"),
                                                                         ("measured", "measured detail normals")), 5.0),
                                         ("RIM", "maps_rim.png", (("constant", "specular 0.5, rough 0.5"),
                                                                  ("measured", "measured specular, rough")), 1.0)):
        cells = [labelled(render(bundle, a.photo, preset, v, a.size, a.samples, zoom),
                          f"{relight.PRESETS[preset]['label']}: {title}") for v, title in variants]
        # where the two differ, brightened
        diff = np.abs(cells[0].astype(np.int16) - cells[1].astype(np.int16)) * 4
        diff = np.clip(diff, 0, 255).astype(np.uint8)
        diff[:18] = 0                                       # not the labels' difference
        cells.append(labelled(diff, "difference x 4"))
        Image.fromarray(np.concatenate(cells, axis=1)).save(a.out / name, optimize=True)
        print(a.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preview camera and Cycles render helpers (batch, demo, tests, docs)."""

from __future__ import annotations

import math
from pathlib import Path

import bpy
from mathutils import Vector

from .importer import deep_enough_for_lashes
from .relight import head_bounds

PROP_CAMERA = "likeness_camera"


def frame_camera(scene, objects=None, *, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                 lens_mm: float = 70.0, margin: float = 1.15, collection=None) -> bpy.types.Object:
    """A camera looking at the head's face (front = -Y), orbiting by yaw (around Z) and pitch.
    Reuses the camera the add-on made before in this scene; becomes the scene camera."""
    centre, _ = head_bounds(objects, scene)
    objs = objects or [o for o in scene.objects if o.get("likeness_head")] or \
        [o for o in scene.objects if o.type == "MESH"]
    pts = [o.matrix_world @ Vector(c) for o in objs for c in o.bound_box]
    if pts:
        w = max(p.x for p in pts) - min(p.x for p in pts)
        h = max(p.z for p in pts) - min(p.z for p in pts)
        depth = max(p.y for p in pts) - min(p.y for p in pts)
    else:
        w = h = depth = 0.3
    cam_obj = next((o for o in scene.objects if o.get(PROP_CAMERA)), None)
    if cam_obj is None:
        cam = bpy.data.cameras.new("Likeness Camera")
        cam_obj = bpy.data.objects.new("Likeness Camera", cam)
        cam_obj[PROP_CAMERA] = True
        (collection or scene.collection).objects.link(cam_obj)
    cam = cam_obj.data
    cam.lens = lens_mm
    cam.sensor_fit = "AUTO"
    half_fov = math.atan(cam.sensor_width / 2.0 / lens_mm)
    r = max(w, h) / 2.0 * margin
    dist = r / math.tan(half_fov) + depth / 2.0
    cam.clip_start = max(0.001, dist / 100.0)
    cam.clip_end = dist * 10.0 + 10.0
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    direction = Vector((math.sin(yaw) * math.cos(pitch), -math.cos(yaw) * math.cos(pitch), math.sin(pitch)))
    cam_obj.location = centre + direction * dist
    cam_obj.rotation_euler = (-direction).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam_obj
    return cam_obj


def setup_cycles(scene, *, resolution: int = 256, samples: int = 16, denoise: bool = False,
                 film_transparent: bool = False, threads: int = 0) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = denoise
    scene.cycles.max_bounces = 4
    deep_enough_for_lashes(scene)
    scene.render.resolution_x = resolution
    scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = film_transparent
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA" if film_transparent else "RGB"
    if threads:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = threads


def render_png(scene, path: str | Path) -> str:
    path = str(Path(path).resolve())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    old = scene.render.filepath
    scene.render.filepath = path
    try:
        with bpy.context.temp_override(scene=scene):
            bpy.ops.render.render(write_still=True, scene=scene.name)
    finally:
        scene.render.filepath = old
    return path


def denoiser_available() -> bool:
    try:
        import _cycles
        return bool(getattr(_cycles, "with_openimagedenoise", False))
    except ImportError:
        return False


def find_bundle(path: str | Path) -> Path:
    """`path` itself when it holds result.json, else the newest bundle folder directly inside it."""
    p = Path(path)
    if (p / "result.json").is_file():
        return p
    found = sorted((d for d in p.iterdir() if (d / "result.json").is_file()),
                   key=lambda d: (d / "result.json").stat().st_mtime) if p.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no result bundle (result.json) in {p} or its sub-folders")
    return found[-1]


def build_preview_scene(bundle_dir, *, name=None, preset="STUDIO", shape_keys=False, pack_images=False,
                        resolution=256, samples=16, denoise=False, yaw_deg=0.0, pitch_deg=0.0,
                        film_transparent=False, empty=True):
    """Fresh scene (optional) + imported head + preset + framed camera + Cycles CPU settings."""
    from . import importer, relight
    if empty:
        bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = importer.import_bundle(bundle_dir, name=name, scene=scene, shape_keys=shape_keys,
                                 pack_images=pack_images)
    if preset and preset != "NONE":
        relight.apply_preset(preset, scene, [obj])
    bpy.context.view_layer.update()
    frame_camera(scene, [obj], yaw_deg=yaw_deg, pitch_deg=pitch_deg)
    setup_cycles(scene, resolution=resolution, samples=samples,
                 denoise=denoise and denoiser_available(), film_transparent=film_transparent)
    return obj

"""Property groups: the user's inputs live on the Scene (saved with the .blend), the running job's
status lives on the WindowManager (never saved, never part of undo)."""

from __future__ import annotations

import bpy

from .relight import PRESET_ITEMS

PHOTO_SOURCES = [
    ("FILE", "File", "A photo file on disk"),
    ("IMAGE", "Image", "An image already loaded in Blender"),
]

STATE_ITEMS = [
    ("IDLE", "Idle", ""), ("RUNNING", "Running", ""), ("CANCELLING", "Cancelling", ""),
    ("DONE", "Done", ""), ("FAILED", "Failed", ""), ("CANCELLED", "Cancelled", ""),
]


def _photo_chosen(self, context) -> None:
    # In the UI, choosing a photo starts the backend (generate.start_early). Batch and scripts
    # (background mode) run their generations blocking: nothing to overlap, no process to leave behind.
    if bpy.app.background or not (self.photo_path or self.photo_image):
        return
    from . import generate
    generate.start_early(context)


class LikenessSceneSettings(bpy.types.PropertyGroup):
    photo_source: bpy.props.EnumProperty(name="Photo Source", items=PHOTO_SOURCES, default="FILE")
    photo_path: bpy.props.StringProperty(name="Photo", subtype="FILE_PATH", update=_photo_chosen,
                                         description="Photo of one face (JPEG, PNG, ...)")
    photo_image: bpy.props.PointerProperty(name="Image", type=bpy.types.Image, update=_photo_chosen,
                                           description="An image already loaded in Blender")
    shape_keys: bpy.props.BoolProperty(
        name="ARKit Shape Keys", default=False,
        description="Add ARKit's 52 shape keys (all at 0) and the fitted expression as its own key")
    pack_images: bpy.props.BoolProperty(name="Pack Images", default=False,
                                        description="Pack the textures into the .blend file")
    preset: bpy.props.EnumProperty(
        name="Lighting", items=[("NONE", "None", "Keep the scene's lighting")] + PRESET_ITEMS,
        default="STUDIO", description="Relight preset applied after the import")


class LikenessJobStatus(bpy.types.PropertyGroup):
    state: bpy.props.EnumProperty(items=STATE_ITEMS, default="IDLE")
    stage: bpy.props.StringProperty()
    message: bpy.props.StringProperty()
    fraction: bpy.props.FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    photo: bpy.props.StringProperty()
    error_code: bpy.props.StringProperty()
    error_message: bpy.props.StringProperty()
    object_name: bpy.props.StringProperty()
    bundle: bpy.props.StringProperty()
    landmark_error_px: bpy.props.FloatProperty(default=-1.0)
    landmark_error_iod: bpy.props.FloatProperty(default=-1.0)
    backend_s: bpy.props.FloatProperty(default=-1.0)
    import_s: bpy.props.FloatProperty(default=-1.0)
    total_s: bpy.props.FloatProperty(default=-1.0)
    warnings: bpy.props.StringProperty()


class LikenessInstallStatus(bpy.types.PropertyGroup):
    state: bpy.props.EnumProperty(items=[(k, k.capitalize(), "") for k in
                                         ("IDLE", "RUNNING", "DONE", "FAILED", "CANCELLED")], default="IDLE")
    stage: bpy.props.StringProperty()
    fraction: bpy.props.FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    message: bpy.props.StringProperty()
    error_code: bpy.props.StringProperty()


classes = (LikenessSceneSettings, LikenessJobStatus, LikenessInstallStatus)


def register_props():
    bpy.types.Scene.likeness = bpy.props.PointerProperty(type=LikenessSceneSettings)
    bpy.types.WindowManager.likeness_job = bpy.props.PointerProperty(type=LikenessJobStatus)
    bpy.types.WindowManager.likeness_install = bpy.props.PointerProperty(type=LikenessInstallStatus)


def unregister_props():
    del bpy.types.WindowManager.likeness_install
    del bpy.types.WindowManager.likeness_job
    del bpy.types.Scene.likeness

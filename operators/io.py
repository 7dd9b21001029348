"""File > Import > Likeness Bundle and File > Export > Likeness Head (and the panel's Export Head)."""
from __future__ import annotations

import os
from pathlib import Path

import bpy
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import export, importer, relight
from .worker_client import WorkerError


class LIKENESS_OT_import_bundle(bpy.types.Operator, ImportHelper):
    """Import a result bundle made by the command line or a batch (choose its result.json or its folder):
    the head at the 3D cursor, and a camera matched to the photo"""
    bl_idname = "likeness.import_bundle"
    bl_label = "Import Likeness Bundle"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".json"
    filter_glob: bpy.props.StringProperty(default="result.json", options={"HIDDEN"})
    shape_keys: bpy.props.BoolProperty(name="ARKit Shape Keys", default=True,
                                       description="The 52 ARKit shape keys plus the fitted expression")
    pack_images: bpy.props.BoolProperty(name="Pack Images", default=False)
    photo_camera: bpy.props.BoolProperty(name="Photo Camera", default=True,
                                         description="A camera matched to the fitted one, with the photo as background")
    photo: bpy.props.StringProperty(name="Photo", subtype="FILE_PATH", default="",
                                    description="The photo for the camera background (empty: found next to the bundle, "
                                                "else its preview)")
    preset: bpy.props.EnumProperty(name="Lighting", items=[("NONE", "None", "")] + relight.PRESET_ITEMS, default="NONE")

    def execute(self, context):
        path = Path(bpy.path.abspath(self.filepath))
        folder = path.parent if path.name == "result.json" or path.is_file() else path
        try:
            obj = importer.import_bundle(folder, scene=context.scene, shape_keys=self.shape_keys,
                                         pack_images=self.pack_images,
                                         photo_camera_for=self.photo if self.photo_camera else None,
                                         make_scene_camera=context.scene.camera is None)
        except WorkerError as ex:
            self.report({"ERROR"}, f"Likeness: {ex.code}: {ex.message}")
            return {"CANCELLED"}
        if self.preset != "NONE":
            relight.apply_preset(self.preset, context.scene, [obj])
        for o in context.view_layer.objects:
            o.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        self.report({"INFO"}, f"Likeness: imported {obj.name}")
        return {"FINISHED"}


def _head(context):
    ob = context.active_object
    return ob if ob is not None and ob.get(importer.PROP_HEAD) else None


class LIKENESS_OT_export_head(bpy.types.Operator, ExportHelper):
    """Export the active Likeness head with its maps (UDIM tiles baked into one 0-1 atlas per material,
    textures written next to the file), eyes and shape keys"""
    bl_idname = "likeness.export_head"
    bl_label = "Export Likeness Head"
    bl_options = {"REGISTER"}

    filename_ext = ".glb"
    check_extension = True
    filter_glob: bpy.props.StringProperty(default="*.glb;*.fbx;*.obj;*.usdz;*.usdc", options={"HIDDEN"})
    format: bpy.props.EnumProperty(
        name="Format", default="GLB",
        items=[(k, label, "") for k, (_, label) in export.FORMATS.items()],
        update=lambda self, ctx: setattr(self, "filepath", str(Path(self.filepath).with_suffix(
            export.FORMATS[self.format][0]))) if self.filepath else None)
    shape_keys: bpy.props.BoolProperty(name="Shape Keys", default=True)

    @classmethod
    def poll(cls, context):
        return _head(context) is not None

    def invoke(self, context, event):
        self.filename_ext = export.FORMATS[self.format][0]
        if not self.filepath:
            self.filepath = _head(context).name + self.filename_ext
        return ExportHelper.invoke(self, context, event)

    def check(self, context):
        self.filename_ext = export.FORMATS[self.format][0]
        return ExportHelper.check(self, context)

    def execute(self, context):
        try:
            rep = export.export_head(_head(context), self.filepath, self.format, shape_keys=self.shape_keys)
        except WorkerError as ex:
            self.report({"ERROR"}, f"Likeness: {ex.code}: {ex.message}")
            return {"CANCELLED"}
        for w in rep.warnings:
            self.report({"WARNING"}, f"Likeness: {w}")
        self.report({"INFO"}, f"Likeness: exported {os.path.basename(rep.path)} and {len(rep.textures)} textures")
        return {"FINISHED"}


class LIKENESS_OT_view_photo_camera(bpy.types.Operator):
    """Make the head's photo camera the scene camera (render size = the photo's aspect) and look through it:
    the head over the photo"""
    bl_idname = "likeness.view_photo_camera"
    bl_label = "View Through Photo Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        head = _head(context)
        return head is not None and head.get("likeness_photo_camera") in bpy.data.objects

    def execute(self, context):
        cam = bpy.data.objects[_head(context)["likeness_photo_camera"]]
        scene = context.scene
        scene.camera = cam
        w, h = cam.get("likeness_photo_size", (scene.render.resolution_x, scene.render.resolution_y))
        scale = min(1.0, 1920 / max(w, h))
        scene.render.resolution_x, scene.render.resolution_y = max(4, round(w * scale)), max(4, round(h * scale))
        area = context.area if context.area is not None and context.area.type == "VIEW_3D" else None
        if area is not None:
            area.spaces.active.region_3d.view_perspective = "CAMERA"
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(LIKENESS_OT_import_bundle.bl_idname, text="Likeness Bundle (result.json)")


def menu_export(self, context):
    self.layout.operator(LIKENESS_OT_export_head.bl_idname, text="Likeness Head (.glb, .fbx, .obj, .usdz)")


classes = (LIKENESS_OT_import_bundle, LIKENESS_OT_export_head, LIKENESS_OT_view_photo_camera)


def register_menus() -> None:
    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister_menus() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)

"""Add-on preferences: backend Python, device, texture size, results folder, worker timeout."""

import bpy

from ..operators import common


class LikenessPreferences(bpy.types.AddonPreferences):
    bl_idname = common.ADDON_PACKAGE

    backend_python: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Python interpreter with torch and the backend's requirements "
                    "(empty: the project's .venv next to the extension, when there is one)")
    device: bpy.props.EnumProperty(
        name="Device", default="AUTO",
        items=[("AUTO", "Auto", "CUDA when available, else CPU"),
               ("CPU", "CPU", "Always run on the CPU"),
               ("CUDA", "CUDA", "Run on an NVIDIA GPU")])
    texture_size: bpy.props.EnumProperty(
        name="Texture Size", default="1024",
        items=[(s, f"{s} px", f"UDIM tiles of {s} x {s} pixels") for s in ("512", "1024", "2048", "4096")])
    results_dir: bpy.props.StringProperty(
        name="Results Folder", subtype="DIR_PATH", default="",
        description="Where result bundles are stored (empty: the extension's user folder)")
    worker_timeout: bpy.props.FloatProperty(
        name="Worker Timeout", default=common.DEFAULT_TIMEOUT_S, min=5.0, max=3600.0, unit="TIME_ABSOLUTE",
        description="A backend that sends no event for this long is considered hung and is stopped")
    check_result: bpy.props.StringProperty(name="Check", default="", options={"SKIP_SAVE"})

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        col = layout.column()
        col.prop(self, "backend_python")
        if not self.backend_python:
            auto = common.default_backend_python()
            col.label(text=f"Using: {auto}" if auto else "No project .venv found: set the backend Python",
                      icon="INFO" if auto else "ERROR")
        row = col.row()
        row.operator("likeness.check_backend", icon="CHECKMARK")
        if self.check_result:
            col.label(text=self.check_result)
        col.separator()
        col.prop(self, "device")
        col.prop(self, "texture_size")
        col.prop(self, "results_dir")
        if not self.results_dir:
            col.label(text=f"Using: {common.default_results_dir()}", icon="INFO")
        col.prop(self, "worker_timeout")


classes = (LikenessPreferences,)

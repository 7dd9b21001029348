"""Add-on preferences: the backend (install, check, where it and its assets are), generation settings,
and the results folder (its size and a clean-up)."""

import bpy

from ..operators import common, install


def _texture_size_items(self, context):
    # Only sizes the backend allows (the worker announces them; 4096 is refused by its memory estimate).
    # Each item's number is the size itself, so a stored choice survives a change of the list.
    return [(str(s), f"{s} px", f"UDIM tiles of {s} x {s} pixels", s) for s in common.allowed_texture_sizes(self)]


class LikenessPreferences(bpy.types.AddonPreferences):
    bl_idname = common.ADDON_PACKAGE

    backend_python: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Python interpreter with torch and the backend's packages (empty: the one Install "
                    "Backend made, else a project .venv next to the extension)")
    base_python: bpy.props.StringProperty(
        name="Base Python", subtype="FILE_PATH", default="",
        description="The Python 3.11 that Install Backend makes its environment from (empty: Blender's own)")
    ict_dir: bpy.props.StringProperty(
        name="ICT-FaceKit", subtype="DIR_PATH", default="",
        description="Folder of the packed ICT-FaceKit (set by Install Backend)")
    landmarker: bpy.props.StringProperty(
        name="Face Landmarker", subtype="FILE_PATH", default="",
        description="MediaPipe's face_landmarker.task (set by Install Backend)")
    device: bpy.props.EnumProperty(
        name="Device", default="AUTO",
        items=[("AUTO", "Auto", "CUDA when available, else CPU"),
               ("CPU", "CPU", "Always run on the CPU"),
               ("CUDA", "CUDA", "Run on an NVIDIA GPU")])
    texture: bpy.props.EnumProperty(
        name="Texture", default="DEFAULT",
        description="How the diffuse map is made where the photo does not show the head",
        items=[("DEFAULT", "Default", "The backend's default strategy (the one its bench measures best)"),
               ("DELIT", "De-lit, Albedo Model Fill", "The photo divided by its fitted light; unseen parts from "
                                                      "the mirror side and the skin albedo model"),
               ("GENERATED", "De-lit, Diffusion Fill", "The photo divided by its fitted light; unseen parts from "
                                                      "the UV diffusion generator (its steps preview in the panel)"),
               ("PROJECTION", "Photo as Is (v0)", "The photo projected with its light, shadows and hair")])
    texture_size: bpy.props.EnumProperty(name="Texture Size", items=_texture_size_items, default=1024)
    texture_sizes_allowed: bpy.props.StringProperty(default="", options={"HIDDEN"})
    results_dir: bpy.props.StringProperty(
        name="Results Folder", subtype="DIR_PATH", default="",
        description="Where result bundles are stored (empty: the extension's user folder)")
    worker_timeout: bpy.props.FloatProperty(
        name="Worker Timeout", default=common.DEFAULT_TIMEOUT_S, min=5.0, max=3600.0, unit="TIME_ABSOLUTE",
        description="A backend that sends no event for this long is considered hung and is stopped")
    start_backend_early: bpy.props.BoolProperty(
        name="Start Backend Early", default=True,
        description="Start the backend (Python, torch, the face models: seconds) as soon as a photo is "
                    "chosen in the panel, so that Generate does not wait for it")
    check_result: bpy.props.StringProperty(name="Check", default="", options={"SKIP_SAVE"})

    def draw(self, context):
        layout = self.layout
        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        ist = context.window_manager.likeness_install
        if install.is_running():
            box.progress(factor=ist.fraction, type="BAR", text=ist.message or "Installing...")
            box.operator("likeness.cancel_install", icon="CANCEL")
        else:
            row = box.row(align=True)
            row.scale_y = 1.3
            row.operator("likeness.install_backend", icon="IMPORT")
            row.operator("likeness.install_from_folder", icon="FILE_FOLDER")
            if ist.state in ("FAILED", "CANCELLED") and ist.message:
                for line in ist.message.splitlines()[:4]:
                    box.label(text=line[:120], icon="ERROR" if ist.state == "FAILED" else "INFO")
            elif ist.state == "DONE":
                box.label(text="Backend installed", icon="CHECKMARK")
        col = box.column()
        col.use_property_split = True
        col.prop(self, "backend_python")
        if not self.backend_python:
            auto = common.default_backend_python()
            col.label(text=f"Using: {auto}" if auto else "No backend yet: press Install Backend",
                      icon="INFO" if auto else "ERROR")
        col.prop(self, "base_python")
        col.prop(self, "ict_dir")
        col.prop(self, "landmarker")
        row = box.row()
        row.operator("likeness.check_backend", icon="CHECKMARK")
        for line in self.check_result.splitlines()[:8]:
            box.label(text=line[:140], icon="ERROR" if line.startswith(("Missing", "BACKEND", "WORKER")) else "NONE")

        col = layout.column()
        col.use_property_split = True
        col.prop(self, "device")
        col.prop(self, "texture")
        col.prop(self, "texture_size")
        col.prop(self, "worker_timeout")
        col.prop(self, "start_backend_early")
        col.prop(self, "results_dir")
        results = common.settings(context).results_dir
        n, size = install.results_size(results)
        row = col.row()
        row.label(text=f"{n} result bundle(s), {install.mb(size)} in {results}", icon="FILE_FOLDER")
        row.operator("likeness.clean_results", icon="TRASH")
        col.label(text="Batch: blender -b --python " + str(common.EXTENSION_DIR / "commands" / "batch.py")
                  + " -- IN_DIR OUT_DIR", icon="CONSOLE")


classes = (LikenessPreferences,)

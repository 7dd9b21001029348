"""The 3D viewport sidebar panel (N panel, tab "Likeness")."""

import os

import bpy
import bpy.utils.previews

from ..operators import generate, importer, relight

_previews = None


def _photo_icon(layout, st) -> int:
    """Icon id of a thumbnail of the chosen photo (0 when there is none)."""
    if st.photo_source == "IMAGE":
        return layout.icon(st.photo_image) if st.photo_image is not None else 0
    if not st.photo_path:
        return 0
    return _file_icon(os.path.abspath(bpy.path.abspath(st.photo_path)))


def _file_icon(path: str) -> int:
    """Icon id of a thumbnail of an image file (0 when it is not there)."""
    global _previews
    if not os.path.isfile(path):
        return 0
    if _previews is None:
        _previews = bpy.utils.previews.new()
    key = f"{path}:{os.path.getmtime(path)}"
    prev = _previews.get(key) or _previews.load(key, path, "IMAGE")
    return prev.icon_id


def free_previews() -> None:
    global _previews
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None


class LIKENESS_PT_generate(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Likeness"
    bl_label = "Generate Face from Photo"

    def draw(self, context):
        layout = self.layout
        st = context.scene.likeness
        js = context.window_manager.likeness_job
        running = generate.is_running()

        col = layout.column()
        col.enabled = not running
        col.row().prop(st, "photo_source", expand=True)
        if st.photo_source == "FILE":
            row = col.row(align=True)
            row.prop(st, "photo_path", text="")
            row.operator("likeness.choose_photo", text="", icon="FILEBROWSER")
        else:
            col.template_ID(st, "photo_image", open="image.open")
        icon = _photo_icon(layout, st)
        if icon:
            col.template_icon(icon_value=icon, scale=7.0)

        col.prop(st, "shape_keys")
        col.prop(st, "pack_images")
        col.prop(st, "preset")

        if running:
            layout.progress(factor=js.fraction, type="BAR", text=js.message or "Working...")
            g = generate.active()
            icon = _file_icon(g.preview_path) if g is not None and g.preview_path else 0
            if icon:
                layout.template_icon(icon_value=icon, scale=7.0)
            layout.operator("likeness.cancel", icon="CANCEL")
        else:
            row = layout.row()
            row.scale_y = 1.5
            row.operator("likeness.generate", icon="USER")

        if js.state == "FAILED" and js.error_code:
            box = layout.box()
            box.label(text=js.error_code, icon="ERROR")
            for line in _wrap(js.error_message, 40)[:6]:
                box.label(text=line)
        elif js.state == "CANCELLED":
            layout.label(text="Cancelled: nothing was imported", icon="INFO")
        elif js.state == "DONE" and js.object_name:
            box = layout.box()
            box.label(text=f"{js.object_name}", icon="CHECKMARK")
            if js.landmark_error_px >= 0:
                box.label(text=f"Landmark error: {js.landmark_error_px:.2f} px"
                          + (f" ({js.landmark_error_iod * 100:.1f}% IOD)" if js.landmark_error_iod >= 0 else ""))
            if js.total_s >= 0:
                box.label(text=f"Time: {js.total_s:.1f} s (backend {js.backend_s:.1f} s, "
                               f"import {js.import_s:.2f} s)")
            if js.warnings:
                for line in _wrap(js.warnings, 40)[:4]:
                    box.label(text=line, icon="ERROR")


class LIKENESS_PT_lighting(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Likeness"
    bl_label = "Relight"

    @classmethod
    def poll(cls, context):
        return bool(importer.find_heads(context.scene))

    def draw(self, context):
        layout = self.layout
        cur = relight.current_preset(context.scene)
        col = layout.column(align=True)
        for key, spec in relight.PRESETS.items():
            op = col.operator("likeness.relight", text=spec["label"],
                              icon="RADIOBUT_ON" if key == cur else "LIGHT")
            op.preset = key
        layout.operator("likeness.clear_lighting", icon="X")
        ob = context.active_object
        if ob is not None and ob.get("likeness_head"):
            box = layout.box()
            box.label(text=ob.name, icon="OUTLINER_OB_MESH")
            if "likeness_landmark_error_px" in ob:
                box.label(text=f"Landmark error: {ob['likeness_landmark_error_px']:.2f} px")
            if "likeness_backend_s" in ob:
                box.label(text=f"Backend time: {ob['likeness_backend_s']:.1f} s")
            box.operator("likeness.view_photo_camera", icon="CAMERA_DATA", text="View Through Photo Camera")
            box.operator("likeness.export_head", icon="EXPORT", text="Export Head")


def _wrap(text: str, width: int) -> list:
    words, lines, cur = (text or "").split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return lines


classes = (LIKENESS_PT_generate, LIKENESS_PT_lighting)

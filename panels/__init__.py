"""Blender UI: the add-on preferences and the 3D viewport sidebar panel (tab "Likeness")."""

import bpy

from . import preferences, view3d

_classes = (*preferences.classes, *view3d.classes)


def register():
    for c in _classes:
        bpy.utils.register_class(c)


def unregister():
    view3d.free_previews()
    for c in reversed(_classes):
        bpy.utils.unregister_class(c)

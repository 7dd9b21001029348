"""Blender-side operators: worker client, generate, installer, importer and exporter, relight presets."""

import bpy

from . import generate, install, io, props, relight

_classes = (*props.classes, *relight.classes, *generate.classes, *install.classes, *io.classes)


def register():
    for c in _classes:
        bpy.utils.register_class(c)
    props.register_props()
    generate.register_runtime()
    io.register_menus()


def unregister():
    io.unregister_menus()
    install.unregister_runtime()
    generate.unregister_runtime()
    props.unregister_props()
    for c in reversed(_classes):
        bpy.utils.unregister_class(c)

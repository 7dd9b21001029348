"""Blender-side operators: worker client, generate operator, importer, relight presets."""

import bpy

from . import generate, props, relight

_classes = (*props.classes, *relight.classes, *generate.classes)


def register():
    for c in _classes:
        bpy.utils.register_class(c)
    props.register_props()
    generate.register_runtime()


def unregister():
    generate.unregister_runtime()
    props.unregister_props()
    for c in reversed(_classes):
        bpy.utils.unregister_class(c)

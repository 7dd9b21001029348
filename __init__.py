# SPDX-License-Identifier: GPL-3.0-or-later
"""Likeness: generate a textured, relightable 3D head from one photo of a face.

Blender extension entry point. This package never imports torch or the `backend/` package that
ships next to it: the backend runs as a separate process (`<backend python> -m backend worker`)
and hands results over as a bundle on disk (docs/worker-protocol.md, docs/bundle.md).
"""

from . import operators, panels

_modules = (operators, panels)


def register():
    for m in _modules:
        m.register()


def unregister():
    for m in reversed(_modules):
        m.unregister()

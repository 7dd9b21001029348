"""Scripts a user runs from the installed extension (they ship in the zip):

    blender -b --python <extension folder>/commands/batch.py -- IN_DIR OUT_DIR [options]
    blender -b --python <extension folder>/commands/export_head.py -- BUNDLE OUT.glb [GLB|FBX|OBJ|USDZ]

Each also runs with a Python that has the bpy module instead of `blender -b --python`.
"""

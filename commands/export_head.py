"""Export the head of a result bundle with its maps and shape keys (operators/export.py).

    blender -b --python commands/export_head.py -- BUNDLE OUT_FILE [GLB|FBX|OBJ|USDZ|USD]
    python commands/export_head.py BUNDLE OUT_FILE [FORMAT]        (a Python with the bpy module)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import load_extension, script_args  # noqa: E402


def main() -> int:
    import bpy
    load_extension()
    from likeness.operators import export, importer
    from likeness.operators.worker_client import WorkerError
    args = script_args()
    if len(args) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    bpy.ops.wm.read_factory_settings(use_empty=True)
    try:
        obj = importer.import_bundle(args[0], shape_keys=True, location=(0.0, 0.0, 0.0))
        rep = export.export_head(obj, args[1], args[2] if len(args) == 3 else None)
    except WorkerError as ex:
        print(f"error {ex.code}: {ex.message}", file=sys.stderr)
        return 1
    print(f"exported {rep.path} ({rep.format}, {rep.shape_keys} shape keys, textures: "
          f"{', '.join(Path(t).name for t in rep.textures)})")
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)

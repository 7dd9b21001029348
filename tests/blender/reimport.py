"""Re-import an exported head into a fresh scene and say what came back (tests and the docs' table)."""
from __future__ import annotations

from pathlib import Path

import bpy

IMPORTERS = {
    ".glb": lambda p: bpy.ops.import_scene.gltf(filepath=p, files=[{"name": Path(p).name}], directory=str(Path(p).parent)),
    ".fbx": lambda p: bpy.ops.import_scene.fbx(filepath=p),
    ".obj": lambda p: bpy.ops.wm.obj_import(filepath=p),
    ".usdz": lambda p: bpy.ops.wm.usd_import(filepath=p),
    ".usdc": lambda p: bpy.ops.wm.usd_import(filepath=p),
}


def upstream_images(socket):
    """Image nodes that feed `socket` (through any chain of nodes)."""
    found, todo, seen = [], [link.from_node for link in socket.links], set()
    while todo:
        n = todo.pop()
        if n.as_pointer() in seen:
            continue
        seen.add(n.as_pointer())
        if n.type == "TEX_IMAGE" and n.image is not None:
            found.append(n.image)
        for i in n.inputs:
            todo.extend(link.from_node for link in i.links)
    return found


def _socket_maps(mat) -> dict:
    if mat is None or mat.node_tree is None:
        return {}
    bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return {}
    out = {}
    for key, sock in (("base_color", "Base Color"), ("normal", "Normal"), ("specular", "Specular IOR Level")):
        imgs = upstream_images(bsdf.inputs[sock])
        if imgs:
            img = imgs[0]
            px = tuple(img.size)
            out[key] = {"image": img.name, "colorspace": img.colorspace_settings.name, "size": px,
                        "has_pixels": px[0] > 0 and px[1] > 0}
    return out


def reimport(path: str | Path) -> dict:
    """Fresh scene, import the file, and report the head's skin and eye maps and shape keys."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    path = Path(path)
    IMPORTERS[path.suffix.lower()](str(path))
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    head = max(meshes, key=lambda o: len(o.data.vertices))
    mats = {m.name.split(".")[0]: m for m in head.data.materials if m is not None}

    def find(part):
        return next((m for n, m in mats.items() if n.endswith("_" + part)), None)
    keys = [k.name for k in head.data.shape_keys.key_blocks[1:]] if head.data.shape_keys else []
    return {"vertices": len(head.data.vertices), "materials": sorted(mats), "skin": _socket_maps(find("skin")),
            "eyes": _socket_maps(find("eyes")), "shape_keys": keys}

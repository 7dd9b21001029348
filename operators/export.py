"""Export a Likeness head to glTF (.glb), FBX, OBJ or USD(Z) with its maps: the one export implementation,
used by File > Export > Likeness Head, the panel's Export Head button and `python -m backend reconstruct
... --export FORMAT` (which runs commands/export_head.py with bpy).

Exporters do not expand `<UDIM>` and read UVs in 0..1, so the export is made from a temporary copy of
the head whose materials are rebuilt for the exporters (export_layout.py has the maths):
- one 0..1 UV set: the skin's UDIM tiles side by side in one atlas image per map, every other part in
  its own tile's 0..1;
- per material only nodes the exporters follow: Image -> Base Color, Image -> Normal Map -> Normal,
  and the specular map as the format wants it (below); the eyes' image (iris) as their Base Color;
- glTF reads KHR_materials_specular's `specularTexture` from the alpha channel and means 1.0 = the
  IOR's own F0 (Blender's Specular IOR Level 0.5). So for glTF the map is written as 2 x level (clipped
  at 1) and wired Image -> Separate Color (R) -> x 0.5 -> Specular IOR Level: Blender's exporter then
  moves the red channel into alpha, and its importer gives back level = 0.5 x alpha;
- FBX, OBJ and USD take the level map straight into Specular IOR Level (their exporters look for an
  image node on the socket);
- the textures are written as PNG next to the exported file (`<name>_skin_diffuse.png`, ...); FBX and
  OBJ refer to them by relative path, glb and usdz carry copies inside.
The copy is placed at the world origin (the head's own origin), keeps every shape key, and is removed
afterwards with everything made for it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..bundle_format import BundleError, read_bundle
from ..export_layout import atlas, export_uvs
from .importer import UV_NAME
from .worker_client import WorkerError

FORMATS = {  # key -> (extension, label)
    "GLB": (".glb", "glTF Binary (.glb)"),
    "FBX": (".fbx", "FBX (.fbx)"),
    "OBJ": (".obj", "Wavefront OBJ (.obj)"),
    "USDZ": (".usdz", "USDZ (.usdz)"),
    "USD": (".usdc", "USD (.usdc)"),
}
MAP_COLORSPACE = {"diffuse": "sRGB", "specular": "Non-Color", "normal": "Non-Color", "roughness": "Non-Color"}


@dataclass
class ExportReport:
    path: str
    format: str
    textures: list[str] = field(default_factory=list)
    shape_keys: int = 0
    warnings: list[str] = field(default_factory=list)


def format_for(path: str, fmt: str | None = None) -> str:
    if fmt:
        fmt = fmt.upper()
        if fmt == "GLTF":
            fmt = "GLB"
        if fmt not in FORMATS:
            raise WorkerError("BAD_REQUEST", f"unknown export format {fmt!r} ({', '.join(FORMATS)})")
        return fmt
    ext = Path(path).suffix.lower()
    for key, (e, _) in FORMATS.items():
        if e == ext or (key == "USD" and ext in (".usd", ".usda")):
            return key
    raise WorkerError("BAD_REQUEST", f"cannot tell the export format from {path!r} ({', '.join(FORMATS)})")


# ------------------------------------------------------------------------------------------
# pixels


def _read_pixels(path: Path) -> np.ndarray:
    """(H, W, 4) float32 of an image file as stored (no colour conversion), rows bottom-up as Blender's."""
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        img.colorspace_settings.name = "Non-Color"  # the stored values, whatever the file says
        w, h = img.size
        if w == 0 or h == 0:
            raise WorkerError("BUNDLE_INVALID", f"Blender cannot read {path.name}")
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(h, w, 4)
    finally:
        bpy.data.images.remove(img)


def _image_pixels(img: bpy.types.Image) -> np.ndarray:
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    return px.reshape(h, w, 4)


def _save_png(pixels: np.ndarray, path: Path, colorspace: str, made: list, alpha: bool = False) -> bpy.types.Image:
    """Write (H, W, 4) values as an 8-bit PNG (RGBA with `alpha`, else RGB) and return a Blender image of it
    (for the export material)."""
    h, w = pixels.shape[:2]
    img = bpy.data.images.new(path.stem, w, h, alpha=alpha)
    made.append(img)
    if alpha:
        img.alpha_mode = "STRAIGHT"
    img.colorspace_settings.name = colorspace
    img.pixels.foreach_set(np.ascontiguousarray(pixels, dtype=np.float32).ravel())
    img.filepath_raw = str(path)
    img.file_format = "PNG"
    img.save()
    img.filepath = str(path)  # refer to the written file (FBX and OBJ write this path)
    img.source = "FILE"
    img.reload()
    img.colorspace_settings.name = colorspace
    return img


# ------------------------------------------------------------------------------------------
# the export copy


def _skin_maps(bundle, stem: str, folder: Path, fmt: str, made: list, report: ExportReport):
    """{role: Blender image} of the skin's atlases written into `folder`, and the tile order."""
    tiles = sorted(bundle.tiles("diffuse"))
    images = {}
    for role, colorspace in MAP_COLORSPACE.items():
        files = bundle.tiles(role)
        if not files:
            continue
        per_tile = []
        for t in tiles:
            if t in files:
                per_tile.append(_read_pixels(files[t]))
            else:  # a map that lacks a tile: its neutral value there (as the importer's tile mask)
                ref = per_tile[0] if per_tile else _read_pixels(next(iter(files.values())))
                neutral = {"specular": (0.5, 0.5, 0.5, 1), "normal": (0.5, 0.5, 1.0, 1),
                           "roughness": (0.5, 0.5, 0.5, 1)}.get(role, (0.5, 0.5, 0.5, 1))
                per_tile.append(np.broadcast_to(np.asarray(neutral, np.float32), ref.shape).copy())
        px = atlas(per_tile)
        if role == "specular" and fmt == "GLB":
            level = px[..., 0]
            if (level > 0.5 + 1 / 255).any():
                report.warnings.append(f"specular level above 0.5 on {(level > 0.5).mean():.1%} of the skin "
                                       "is clipped for glTF (its specular is at most the IOR's own F0)")
            px = px.copy()
            px[..., :3] = np.clip(level * 2.0, 0.0, 1.0)[..., None]
            name = f"{stem}_skin_specular_gltf.png"
        else:
            name = f"{stem}_skin_{role}.png"
        path = folder / name
        images[role] = _save_png(px, path, colorspace, made)
        report.textures.append(str(path))
    return images, tiles


def _principled_material(name: str, made: list):
    mat = bpy.data.materials.new(name)
    made.append(mat)
    if mat.node_tree is None:
        mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    return mat, nt, bsdf


def _image_node(nt, img, location):
    node = nt.nodes.new("ShaderNodeTexImage")
    node.image = img
    node.location = location
    return node


def _skin_export_material(name: str, src_mat, images: dict, fmt: str, made: list):
    mat, nt, bsdf = _principled_material(name, made)
    links = nt.links
    src = next((n for n in src_mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None) if src_mat else None
    for sock in ("Roughness", "IOR", "Subsurface Weight", "Subsurface Radius", "Subsurface Scale"):
        if src is not None and sock in src.inputs and sock in bsdf.inputs:
            bsdf.inputs[sock].default_value = src.inputs[sock].default_value
    if "diffuse" in images:
        tex = _image_node(nt, images["diffuse"], (-500, 300))
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if "specular" in images:
        tex = _image_node(nt, images["specular"], (-700, 0))
        if fmt == "GLB":
            sep = nt.nodes.new("ShaderNodeSeparateColor")
            sep.location = (-450, 0)
            half = nt.nodes.new("ShaderNodeMath")
            half.operation = "MULTIPLY"
            half.inputs[1].default_value = 0.5
            half.location = (-250, 0)
            links.new(tex.outputs["Color"], sep.inputs["Color"])
            links.new(sep.outputs["Red"], half.inputs[0])
            links.new(half.outputs[0], bsdf.inputs["Specular IOR Level"])
        else:
            links.new(tex.outputs["Color"], bsdf.inputs["Specular IOR Level"])
    if "roughness" in images:
        _roughness_export(nt, bsdf, images["roughness"], fmt)
    if "normal" in images:
        tex = _image_node(nt, images["normal"], (-700, -300))
        nmap = nt.nodes.new("ShaderNodeNormalMap")
        nmap.uv_map = UV_NAME
        nmap.location = (-300, -300)
        links.new(tex.outputs["Color"], nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    return mat


def _roughness_export(nt, bsdf, img, fmt: str) -> None:
    """The roughness atlas into Roughness. glTF carries it in the green channel of its metallic-roughness
    texture: wired Image -> Separate Color (Green) -> Roughness, the layout Blender's glTF exporter
    packs (and its importer makes); the other formats take the image straight into the socket."""
    tex = _image_node(nt, img, (-700, -600))
    if fmt == "GLB":
        sep = nt.nodes.new("ShaderNodeSeparateColor")
        sep.location = (-450, -600)
        nt.links.new(tex.outputs["Color"], sep.inputs["Color"])
        nt.links.new(sep.outputs["Green"], bsdf.inputs["Roughness"])
    else:
        nt.links.new(tex.outputs["Color"], bsdf.inputs["Roughness"])


def _first_image(mat):
    if mat is None or mat.node_tree is None:
        return None
    return next((n.image for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image is not None), None)


def _plain_export_material(name: str, src_mat, stem: str, part: str, folder: Path, made: list,
                           report: ExportReport):
    """A part without UDIM maps: its Principled values, and its one image (the eyes' iris, the lashes'
    strands with their alpha) if it has one."""
    mat, nt, bsdf = _principled_material(name, made)
    src = next((n for n in src_mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None) \
        if src_mat is not None and src_mat.node_tree is not None else None
    if src is not None:
        for sock in bsdf.inputs:
            if sock.name in src.inputs and hasattr(sock, "default_value") and not sock.is_linked:
                try:
                    sock.default_value = src.inputs[sock.name].default_value
                except (TypeError, AttributeError, ValueError):
                    pass
    else:  # e.g. the transparent tear-film shells: a clear, glossy Principled
        bsdf.inputs["Alpha"].default_value = 0.0 if part == "eye_wet" else 1.0
        bsdf.inputs["Roughness"].default_value = 0.05
    if src_mat is not None:
        mat.diffuse_color = src_mat.diffuse_color
    img = _first_image(src_mat)
    if img is not None and src is not None and src.inputs["Base Color"].is_linked:
        path = folder / f"{stem}_{part}_color.png"
        with_alpha = src.inputs["Alpha"].is_linked
        saved = _save_png(_image_pixels(img), path, img.colorspace_settings.name or "sRGB", made, with_alpha)
        report.textures.append(str(path))
        tex = _image_node(nt, saved, (-400, 300))
        nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        if with_alpha:
            nt.links.new(tex.outputs["Alpha"], bsdf.inputs["Alpha"])
    if part in ("eye_wet", "lashes") and hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "BLENDED"
    return mat


def _export_copy(obj, bundle, stem: str, folder: Path, fmt: str, made: list, report: ExportReport):
    me = obj.data.copy()
    made.append(me)
    mesh = bundle.mesh
    part_names = mesh.part_names
    skin = part_names.index("skin") if "skin" in part_names else None
    images, tiles = _skin_maps(bundle, stem, folder, fmt, made, report) if skin is not None else ({}, [])
    loops = len(me.loops)
    uv = np.empty(loops * 2, np.float32)
    me.uv_layers[UV_NAME].data.foreach_get("uv", uv)
    sizes = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", sizes)
    mat_index = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mat_index)
    flat = export_uvs(uv.reshape(-1, 2), sizes, mat_index, {skin: tiles} if skin is not None else {})
    # the export copy has one UV layer, of the same name (the Normal Map nodes name it)
    for layer in list(me.uv_layers):
        me.uv_layers.remove(layer)
    layer = me.uv_layers.new(name=UV_NAME)
    layer.data.foreach_set("uv", flat.ravel())
    mats = []
    for i, part in enumerate(part_names):
        src = obj.data.materials[i] if i < len(obj.data.materials) else None
        name = f"{stem}_{part}"
        if i == skin:
            mats.append(_skin_export_material(name, src, images, fmt, made))
        else:
            mats.append(_plain_export_material(name, src, stem, part, folder, made, report))
    for i, m in enumerate(mats):  # replace slot by slot: clear() would reset every polygon to slot 0
        if i < len(me.materials):
            me.materials[i] = m
        else:
            me.materials.append(m)
    copy = bpy.data.objects.new(stem, me)
    made.append(copy)
    copy.matrix_world = Matrix.Identity(4)
    report.shape_keys = len(me.shape_keys.key_blocks) - 1 if me.shape_keys else 0
    return copy


# ------------------------------------------------------------------------------------------
# the exporters


def _run_exporter(fmt: str, path: Path, shape_keys: bool) -> None:
    p = str(path)
    if fmt == "GLB":
        bpy.ops.export_scene.gltf(filepath=p, export_format="GLB", use_selection=True, export_apply=False,
                                  export_morph=shape_keys, export_morph_normal=False, export_yup=True,
                                  export_materials="EXPORT", export_image_format="AUTO", export_animations=False)
    elif fmt == "FBX":
        bpy.ops.export_scene.fbx(filepath=p, use_selection=True, object_types={"MESH"}, use_mesh_modifiers=False,
                                 path_mode="RELATIVE", embed_textures=False, add_leaf_bones=False,
                                 bake_anim=False, mesh_smooth_type="FACE")
    elif fmt == "OBJ":
        bpy.ops.wm.obj_export(filepath=p, export_selected_objects=True, export_materials=True, export_uv=True,
                              export_normals=True, apply_modifiers=False, path_mode="RELATIVE",
                              export_animation=False)
    else:  # USD, USDZ
        kw = dict(filepath=p, selected_objects_only=True, export_materials=True, export_uvmaps=True,
                  export_normals=True, generate_preview_surface=True, relative_paths=True,
                  export_animation=False)
        props = bpy.ops.wm.usd_export.get_rna_type().properties
        if "export_shapekeys" in props:
            kw["export_shapekeys"] = shape_keys
        if "export_textures_mode" in props:
            kw["export_textures_mode"] = "NEW"  # copies into textures/ next to the file (and into a .usdz)
            if "overwrite_textures" in props:
                kw["overwrite_textures"] = True
        elif "export_textures" in props:
            kw["export_textures"] = False
        bpy.ops.wm.usd_export(**kw)


def export_head(obj, filepath: str | os.PathLike, fmt: str | None = None, *, shape_keys: bool = True,
                scene=None) -> ExportReport:
    """Export one imported Likeness head; returns what was written. Raises WorkerError."""
    if obj is None or not obj.get("likeness_head") or obj.type != "MESH":
        raise WorkerError("BAD_REQUEST", "select a Likeness head to export")
    path = Path(bpy.path.abspath(str(filepath))).resolve()
    fmt = format_for(str(path), fmt)
    if path.suffix.lower() != FORMATS[fmt][0] and not (fmt == "USD" and path.suffix.lower() in (".usd", ".usda")):
        path = path.with_suffix(FORMATS[fmt][0])
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        bundle = read_bundle(obj.get("likeness_bundle", ""))
    except BundleError as ex:
        raise WorkerError(ex.code, f"the head's bundle is needed for its maps: {ex.message}") from ex
    scene = scene or bpy.context.scene
    report = ExportReport(str(path), fmt)
    made: list = []
    coll = bpy.data.collections.new("Likeness Export (temporary)")
    made.append(coll)
    view_layer = bpy.context.view_layer
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    try:
        copy = _export_copy(obj, bundle, path.stem, path.parent, fmt, made, report)
        scene.collection.children.link(coll)
        coll.objects.link(copy)
        for o in selected:
            o.select_set(False)
        view_layer.update()
        copy.select_set(True)
        view_layer.objects.active = copy
        _run_exporter(fmt, path, shape_keys)
    except RuntimeError as ex:
        raise WorkerError("EXPORT_FAILED", f"the {fmt} exporter failed: {ex}") from ex
    finally:
        for idb in reversed(made):
            try:
                coll_ = {bpy.types.Object: bpy.data.objects, bpy.types.Mesh: bpy.data.meshes,
                         bpy.types.Material: bpy.data.materials, bpy.types.Image: bpy.data.images,
                         bpy.types.Collection: bpy.data.collections}
                for t, c in coll_.items():
                    if isinstance(idb, t):
                        c.remove(idb, do_unlink=True)
                        break
            except ReferenceError:
                pass
        for o in selected:
            try:
                o.select_set(True)
            except (ReferenceError, RuntimeError):
                pass
        if active is not None:
            try:
                view_layer.objects.active = active
            except (ReferenceError, RuntimeError):
                pass
    if not path.is_file():
        raise WorkerError("EXPORT_FAILED", f"the {fmt} exporter wrote no {path.name}")
    return report

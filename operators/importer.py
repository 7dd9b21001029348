"""Result bundle (docs/bundle.md, schemas 1 and 2) -> one Blender object. bpy + numpy, no torch.

The bundle is read and checked by `bundle_format` (pure, tested without Blender): this module only
turns its arrays and files into datablocks. Everything is built with vectorised `foreach_set`; nothing
loops over vertices in Python. On any failure every datablock created so far is removed again, so
nothing half-imported stays.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path

import bpy
import numpy as np

from mathutils import Matrix

from .. import arkit, photo_camera
from ..bundle_format import Bundle, BundleError, MeshArrays, read_bundle
from ..export_layout import eye_image, lash_image
from .worker_client import WorkerError

UV_NAME = "UVMap"
CM_TO_M = 0.01

# Custom properties that mark what the add-on created.
PROP_HEAD = "likeness_head"
PROP_LIGHTING = "likeness_lighting"        # the photo's fitted SH shading (27 floats, camera space)
PROP_POSE = "likeness_pose_rotation"       # the fitted pose R (9 floats): camera = R @ model
PROP_PHOTO_CAMERA = "likeness_photo_camera"
EYE_IMAGE_SIZE = 512
LASH_IMAGE_SIZE = 1024


def ict_to_blender(v: np.ndarray) -> np.ndarray:
    """ICT model space in cm (+Y up, face looks down +Z) -> Blender metres (+Z up, face looks down -Y).
    (x, y, z)_ict -> (x, -z, y) * 0.01."""
    v = np.asarray(v, dtype=np.float32)
    out = np.empty_like(v)
    out[..., 0] = v[..., 0]
    out[..., 1] = -v[..., 2]
    out[..., 2] = v[..., 1]
    out *= CM_TO_M
    return out


def arkit_name(name: str) -> str:
    """ICT/ARKit-style `eyeBlink_L` -> ARKit `eyeBlinkLeft` (names without a side are kept)."""
    if name.endswith("_L"):
        return name[:-2] + "Left"
    if name.endswith("_R"):
        return name[:-2] + "Right"
    return name


# ------------------------------------------------------------------------------------------
# creation bookkeeping (for the all-or-nothing import)
# ------------------------------------------------------------------------------------------

class _Created:
    def __init__(self):
        self.items: list = []

    def add(self, idb):
        self.items.append(idb)
        return idb

    def rollback(self):
        # Objects first (they use meshes/materials), then the rest, in reverse order.
        for kind in (bpy.types.Object, None):
            for idb in reversed(self.items):
                try:
                    if kind is not None and not isinstance(idb, kind):
                        continue
                    if kind is None and isinstance(idb, bpy.types.Object):
                        continue
                    _remove_id(idb)
                except ReferenceError:
                    pass
        self.items.clear()


def _remove_id(idb) -> None:
    coll = {
        bpy.types.Object: bpy.data.objects, bpy.types.Mesh: bpy.data.meshes,
        bpy.types.Material: bpy.data.materials, bpy.types.Image: bpy.data.images,
        bpy.types.Collection: bpy.data.collections, bpy.types.Light: bpy.data.lights,
        bpy.types.World: bpy.data.worlds, bpy.types.Camera: bpy.data.cameras,
        bpy.types.ShaderNodeTree: bpy.data.node_groups,
    }
    for t, c in coll.items():
        if isinstance(idb, t):
            c.remove(idb, do_unlink=True)
            return


# ------------------------------------------------------------------------------------------
# mesh
# ------------------------------------------------------------------------------------------

def _build_mesh(name: str, verts_bl: np.ndarray, mesh: MeshArrays) -> bpy.types.Mesh:
    """A Blender mesh from arrays that bundle_format.validate_mesh has checked (sizes, ranges)."""
    sizes, fvi = mesh.face_sizes, mesh.face_vertex_indices
    nv, nf, nl = len(verts_bl), len(sizes), len(fvi)
    me = bpy.data.meshes.new(name)
    me.vertices.add(nv)
    me.vertices.foreach_set("co", np.ascontiguousarray(verts_bl, dtype=np.float32).ravel())
    me.loops.add(nl)
    me.loops.foreach_set("vertex_index", np.ascontiguousarray(fvi, dtype=np.int32))
    me.polygons.add(nf)
    starts = np.zeros(nf, dtype=np.int32)
    np.cumsum(sizes[:-1], out=starts[1:])
    me.polygons.foreach_set("loop_start", starts)
    me.polygons.foreach_set("material_index", np.ascontiguousarray(mesh.face_part, dtype=np.int32))
    uv = me.uv_layers.new(name=UV_NAME)
    uv.data.foreach_set("uv", np.ascontiguousarray(mesh.corner_uvs, dtype=np.float32).ravel())
    me.update()
    me.shade_smooth()
    return me


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------

def _load_image(path: Path, name: str, colorspace: str, tiled: bool, created: _Created,
                pack: bool) -> bpy.types.Image:
    # check_existing=False: never reuse (or overwrite) an image that is already loaded.
    img = created.add(bpy.data.images.load(str(path), check_existing=False))
    img.name = name  # Blender makes it unique (".001") when the name is taken
    if tiled:
        img.source = "TILED"
    img.colorspace_settings.name = colorspace
    # Blender's loader failed on a file whose structure bundle_format checked (e.g. damaged pixel data
    # under fresh CRCs): it would show as magenta. Every UDIM tile counts, not only the first.
    if tuple(img.size) == (0, 0):
        raise WorkerError("BUNDLE_INVALID", f"Blender cannot read {path.name}")
    if tiled:
        bad = [t.number for t in img.tiles if tuple(t.size) == (0, 0)]
        if bad:
            raise WorkerError("BUNDLE_INVALID", f"Blender cannot read UDIM tile(s) {bad} of {path.name}")
    if pack:
        img.pack()
    return img


def _sock(sockets, identifier: str):
    """A node socket by identifier (ShaderNodeMix has several sockets named "A", "B", "Result")."""
    for s in sockets:
        if s.identifier == identifier:
            return s
    raise KeyError(identifier)


def _udim_texture(nt: bpy.types.NodeTree, uv_socket, bundle, role: str, default_colorspace: str, tiles,
                  stem: str, created: _Created, pack: bool, location):
    """An image node on the UV map showing the bundle's `role` maps as one tiled (UDIM) image."""
    node = nt.nodes.new("ShaderNodeTexImage")
    node.name = node.label = f"{role.capitalize()} (UDIM)"
    node.image = _load_image(tiles[1001], f"{stem} {role}", bundle.colorspace(role, default_colorspace),
                             True, created, pack)
    node.location = location
    nt.links.new(uv_socket, node.inputs["Vector"])
    return node


def _on_mapped_tiles(nt: bpy.types.NodeTree, uv_socket, value_socket, tiles, all_tiles, label: str,
                     data_type: str, neutral, location):
    """`value_socket` on the UV tiles the map has, `neutral` on the other tiles of `all_tiles`."""
    if all(t in tiles for t in all_tiles):
        return value_socket
    kind = {"FLOAT": "Float", "RGBA": "Color"}[data_type]
    x, y = location
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = data_type
    mix.name = mix.label = f"{label} on mapped tiles"
    mix.location = location
    nt.links.new(_tile_mask(nt, uv_socket, list(tiles), x - 1100, y - 450), _sock(mix.inputs, "Factor_Float"))
    _sock(mix.inputs, f"A_{kind}").default_value = neutral
    nt.links.new(value_socket, _sock(mix.inputs, f"B_{kind}"))
    return _sock(mix.outputs, f"Result_{kind}")


def _tile_mask(nt: bpy.types.NodeTree, uv_socket, tiles: list[int], x: float, y: float):
    """A float socket that is 1 on the UV tiles in `tiles` and 0 elsewhere (u only: v0 tiles are a row)."""
    nodes, links = nt.nodes, nt.links
    sep = nodes.new("ShaderNodeSeparateXYZ")
    sep.location = (x, y)
    links.new(uv_socket, sep.inputs[0])
    fl = nodes.new("ShaderNodeMath")
    fl.operation = "FLOOR"
    fl.location = (x + 160, y)
    links.new(sep.outputs[0], fl.inputs[0])
    acc = None
    for i, t in enumerate(sorted(tiles)):
        cmp_ = nodes.new("ShaderNodeMath")
        cmp_.operation = "COMPARE"
        cmp_.inputs[1].default_value = float(t - 1001)
        cmp_.inputs[2].default_value = 0.5
        cmp_.location = (x + 320, y - 60 * i)
        links.new(fl.outputs[0], cmp_.inputs[0])
        if acc is None:
            acc = cmp_.outputs[0]
        else:
            add = nodes.new("ShaderNodeMath")
            add.operation = "MAXIMUM"
            add.location = (x + 480, y - 60 * i)
            links.new(acc, add.inputs[0])
            links.new(cmp_.outputs[0], add.inputs[1])
            acc = add.outputs[0]
    return acc


# ------------------------------------------------------------------------------------------
# materials
# ------------------------------------------------------------------------------------------

def _node_tree(mat: bpy.types.Material):
    # Blender 5 materials always have nodes (use_nodes is deprecated); 4.x needs the switch.
    if mat.node_tree is None:
        mat.use_nodes = True
    return mat.node_tree


def _principled(mat: bpy.types.Material):
    nt = _node_tree(mat)
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    out = next(n for n in nt.nodes if n.type == "OUTPUT_MATERIAL")
    return nt, bsdf, out


def _skin_material(name: str, bundle: Bundle, stem: str, created: _Created, pack: bool,
                   skin_tiles: list[int]) -> bpy.types.Material:
    mat = created.add(bpy.data.materials.new(name))
    nt, bsdf, out = _principled(mat)
    nodes, links = nt.nodes, nt.links
    bsdf.location = (600, 300)
    out.location = (950, 300)
    uvn = nodes.new("ShaderNodeUVMap")
    uvn.uv_map = UV_NAME
    uvn.location = (-700, 0)

    diffuse_tiles = bundle.tiles("diffuse")
    if 1001 not in diffuse_tiles:
        raise WorkerError("BUNDLE_INVALID", "the bundle has no diffuse.1001.png")
    tex = _udim_texture(nt, uvn.outputs["UV"], bundle, "diffuse", "sRGB", diffuse_tiles, stem, created, pack,
                        (-100, 450))
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])

    bsdf.inputs["Roughness"].default_value = 0.5
    bsdf.inputs["Subsurface Weight"].default_value = 0.1
    bsdf.inputs["Subsurface Radius"].default_value = (1.0, 0.35, 0.2)
    bsdf.inputs["Subsurface Scale"].default_value = 0.005  # metres
    # The one specular convention (docs/bundle.md, "Material"): IOR from the bundle (skin 1.4), and the
    # specular map is Principled's Specular IOR Level at that IOR (0.5 = the IOR's own F0, 0.028).
    bsdf.inputs["IOR"].default_value = bundle.skin_ior

    # Specular and normal maps exist for some tiles only (v0: 1001). Each is loaded as a tiled
    # image too; on tiles it lacks, a UV-tile mask blends in the neutral value (so Cycles never
    # samples a missing tile, which it would show as magenta).
    spec_tiles = bundle.tiles("specular")
    if 1001 in spec_tiles:
        stex = _udim_texture(nt, uvn.outputs["UV"], bundle, "specular", "Non-Color", spec_tiles, stem, created,
                             pack, (-100, 150))
        # specular map -> Specular IOR Level (schema 2: the map is the level; schema 1: a rescale)
        level = nodes.new("ShaderNodeMapRange")
        level.name = level.label = "Specular -> IOR Level"
        level.inputs["To Min"].default_value = 0.0
        level.inputs["To Max"].default_value = bundle.specular_level_scale
        level.location = (200, 150)
        links.new(stex.outputs["Color"], level.inputs["Value"])
        spec_out = _on_mapped_tiles(nt, uvn.outputs["UV"], level.outputs["Result"], spec_tiles, skin_tiles,
                                    "Specular", "FLOAT", 0.5, (400, 150))
        links.new(spec_out, bsdf.inputs["Specular IOR Level"])

    norm_tiles = bundle.tiles("normal")
    if 1001 in norm_tiles:
        ntex = _udim_texture(nt, uvn.outputs["UV"], bundle, "normal", "Non-Color", norm_tiles, stem, created,
                             pack, (-100, -200))
        col = _on_mapped_tiles(nt, uvn.outputs["UV"], ntex.outputs["Color"], norm_tiles, skin_tiles,
                               "Normal", "RGBA", (0.5, 0.5, 1.0, 1.0), (200, -200))  # flat tangent-space normal
        nmap = nodes.new("ShaderNodeNormalMap")
        nmap.space = "TANGENT"
        nmap.uv_map = UV_NAME
        nmap.location = (400, -200)
        links.new(col, nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    _roughness_map(nt, uvn.outputs["UV"], bsdf, bundle, stem, created, pack, skin_tiles)
    return mat


def _roughness_map(nt, uv_socket, bsdf, bundle: Bundle, stem: str, created: _Created, pack: bool,
                   skin_tiles: list[int]) -> None:
    """The bundle's roughness map (role "roughness": Principled Roughness itself, Non-Color) into
    Roughness; the neutral 0.5 on tiles it lacks. Bundles without one keep the constant 0.5."""
    tiles = bundle.tiles("roughness")
    if 1001 not in tiles:
        return
    rtex = _udim_texture(nt, uv_socket, bundle, "roughness", "Non-Color", tiles, stem, created, pack, (-100, -550))
    out = _on_mapped_tiles(nt, uv_socket, rtex.outputs["Color"], tiles, skin_tiles, "Roughness", "FLOAT", 0.5,
                           (200, -550))
    nt.links.new(out, bsdf.inputs["Roughness"])


def _plain_material(name: str, created: _Created, color, roughness: float, **extra):
    mat = created.add(bpy.data.materials.new(name))
    nt, bsdf, out = _principled(mat)
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    for k, v in extra.items():
        bsdf.inputs[k].default_value = v
    mat.diffuse_color = (*color, 1.0)  # solid viewport colour
    return mat


def _eye_image(bundle: Bundle, stem: str, created: _Created, pack: bool) -> bpy.types.Image:
    """The eyeball's colour image: the bundle's own (role "eyes", e.g. a per-photo iris) when it has
    one, else the default iris drawn by export_layout.eye_image, packed into the .blend (nothing is
    written into the bundle folder, which holds only what the backend wrote)."""
    own = bundle.files("eyes")
    if own:
        return _load_image(own[0].path, f"{stem} eyes", own[0].colorspace or "sRGB", False, created, pack)
    return _drawn_image(f"{stem} eyes", EYE_IMAGE_SIZE, eye_image(EYE_IMAGE_SIZE).ravel(), created)


def _drawn_image(name: str, size: int, pixels: np.ndarray, created: _Created, alpha: bool = False) -> bpy.types.Image:
    """A size x size sRGB image of `pixels` (flat RGBA, as export_layout draws them), packed into the .blend
    (a generated image is lost on save unless packed); with `alpha`, straight alpha."""
    img = created.add(bpy.data.images.new(name, size, size, alpha=alpha))
    img.colorspace_settings.name = "sRGB"
    if alpha:
        img.alpha_mode = "STRAIGHT"
    img.pixels.foreach_set(pixels)
    img.update()
    img.pack()
    return img


def _image_on_uvs(nt, bsdf, img: bpy.types.Image, label: str):
    """An image texture on the UV map, repeating (a part's UVs sit on its own UDIM tile: the local
    coordinates are what the image covers), into Base Color; returns the image node."""
    uvn = nt.nodes.new("ShaderNodeUVMap")
    uvn.uv_map = UV_NAME
    uvn.location = (-700, 200)
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.name = tex.label = label
    tex.image = img
    tex.extension = "REPEAT"
    tex.location = (-450, 200)
    nt.links.new(uvn.outputs["UV"], tex.inputs["Vector"])
    nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return tex


def _eye_material(name: str, bundle: Bundle, stem: str, created: _Created, pack: bool):
    """Eyeball: an image texture on the ICT eyeball's planar UV (front pole at the local (0.5, 0.5)
    of its UDIM tile; the image repeats, so the tile does not matter), under a glossy coat. An image,
    not a procedural tree, so that every exporter takes the iris along."""
    mat = created.add(bpy.data.materials.new(name))
    nt, bsdf, _ = _principled(mat)
    _image_on_uvs(nt, bsdf, _eye_image(bundle, stem, created, pack), "Eyes")
    bsdf.inputs["Roughness"].default_value = 0.35
    bsdf.inputs["Coat Weight"].default_value = 1.0
    bsdf.inputs["Coat Roughness"].default_value = 0.03
    bsdf.inputs["Coat IOR"].default_value = 1.376
    mat.diffuse_color = (0.8, 0.78, 0.74, 1.0)
    return mat


@functools.lru_cache(maxsize=1)
def _lash_pixels() -> np.ndarray:
    """The strands, drawn once per Blender session (the same for every head; read-only)."""
    px = lash_image(LASH_IMAGE_SIZE).ravel()
    px.flags.writeable = False
    return px


def _lash_material(name: str, created: _Created):
    """The eyelash cards: individual strands (export_layout.lash_image: colour and alpha) on the cards' UVs,
    packed into the .blend. A card of one uniform alpha draws a grey band across the eye instead."""
    mat = created.add(bpy.data.materials.new(name))
    nt, bsdf, _ = _principled(mat)
    img = _drawn_image(f"{name} strands", LASH_IMAGE_SIZE, _lash_pixels(), created, alpha=True)
    tex = _image_on_uvs(nt, bsdf, img, "Lash strands")   # the cards' UVs are on tile 1007 (u 6..7)
    nt.links.new(tex.outputs["Alpha"], bsdf.inputs["Alpha"])
    bsdf.inputs["Roughness"].default_value = 0.55
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "DITHERED"
    mat.diffuse_color = (0.03, 0.022, 0.017, 1.0)
    return mat


def _wet_material(name: str, created: _Created):
    """Tear film / eye blend / occlusion shells: transparent with a faint glossy reflection."""
    mat = created.add(bpy.data.materials.new(name))
    nt = _node_tree(mat)
    nodes, links = nt.nodes, nt.links
    for n in list(nodes):
        if n.type == "BSDF_PRINCIPLED":
            nodes.remove(n)
    out = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
    tr = nodes.new("ShaderNodeBsdfTransparent")
    gl = nodes.new("ShaderNodeBsdfGlossy")
    gl.inputs["Roughness"].default_value = 0.05
    fr = nodes.new("ShaderNodeFresnel")
    fr.inputs["IOR"].default_value = 1.33
    weak = nodes.new("ShaderNodeMath")  # only a hint of reflection: the shells cover skin too
    weak.operation = "MULTIPLY"
    weak.inputs[1].default_value = 0.15
    links.new(fr.outputs[0], weak.inputs[0])
    weak.location = (-150, 250)
    mix = nodes.new("ShaderNodeMixShader")
    links.new(weak.outputs[0], mix.inputs[0])
    links.new(tr.outputs[0], mix.inputs[1])
    links.new(gl.outputs[0], mix.inputs[2])
    links.new(mix.outputs[0], out.inputs["Surface"])
    tr.location, gl.location, fr.location, mix.location = (-300, 100), (-300, -50), (-300, 250), (0, 100)
    if hasattr(mat, "surface_render_method"):
        mat.surface_render_method = "DITHERED"
    mat.diffuse_color = (1.0, 1.0, 1.0, 0.05)
    return mat


def _part_material(part: str, stem: str, bundle: Bundle, created: _Created, pack: bool,
                   skin_tiles: list[int]):
    name = f"{stem} {part}"
    if part == "skin":
        return _skin_material(name, bundle, stem, created, pack, skin_tiles)
    if part == "eyes":
        return _eye_material(name, bundle, stem, created, pack)
    if part == "teeth":
        return _plain_material(name, created, (0.80, 0.76, 0.66), 0.25,
                               **{"Subsurface Weight": 0.1, "Subsurface Scale": 0.002})
    if part == "mouth":
        return _plain_material(name, created, (0.42, 0.10, 0.11), 0.35,
                               **{"Subsurface Weight": 0.2, "Subsurface Scale": 0.003})
    if part == "lashes":
        return _lash_material(name, created)
    if part == "eye_wet":
        return _wet_material(name, created)
    return _plain_material(name, created, (0.6, 0.6, 0.6), 0.5)


# ------------------------------------------------------------------------------------------
# the import
# ------------------------------------------------------------------------------------------

def import_bundle(bundle_dir: str | os.PathLike, *, name: str | None = None, scene=None,
                  shape_keys: bool = False, pack_images: bool = False,
                  parent_collection=None, location=None, photo_camera_for: str | None = None,
                  make_scene_camera: bool = False) -> bpy.types.Object:
    """Import a result bundle as one new object in a new collection "Likeness <name>".

    `name` defaults to the photo's stem (result.json input.name). The head is placed at `location`
    (default: the scene's 3D cursor). `photo_camera_for`: also add a camera matched to the fitted
    camera, with that photo (a path; "" = find it, see find_photo) as its background; with
    `make_scene_camera` it becomes the scene camera and sets the render size to the photo's.
    Never reuses or overwrites existing datablocks; on failure removes whatever it created and
    raises WorkerError.
    """
    t0 = time.perf_counter()
    try:
        bundle = read_bundle(bundle_dir, want_deltas=shape_keys)
    except BundleError as ex:
        raise WorkerError(ex.code, ex.message) from ex
    res, mesh = bundle.result, bundle.mesh
    stem = name or Path(str((res.get("input") or {}).get("name") or bundle.folder.name)).stem
    scene = scene or bpy.context.scene
    created = _Created()
    try:
        use_keys = bool(shape_keys) and mesh.expression_deltas is not None
        base = mesh.basis_vertices if use_keys else mesh.vertices
        me = created.add(_build_mesh(stem, ict_to_blender(base), mesh))

        # UDIM tiles that the skin part uses (for the missing-tile masks).
        skin_tiles = [1001, 1002]
        if "skin" in mesh.part_names:
            loop_face = np.repeat(np.arange(len(mesh.face_sizes)), mesh.face_sizes)
            skin_loops = mesh.face_part[loop_face] == mesh.part_names.index("skin")
            if skin_loops.any():
                skin_tiles = sorted(set((1001 + np.floor(mesh.corner_uvs[skin_loops, 0])).astype(int).tolist()))

        for part in mesh.part_names:
            me.materials.append(_part_material(part, stem, bundle, created, pack_images, skin_tiles))

        obj = created.add(bpy.data.objects.new(stem, me))
        coll = created.add(bpy.data.collections.new(f"Likeness {stem}"))
        (parent_collection or scene.collection).children.link(coll)
        coll.objects.link(obj)
        # matrix_world too, not only location: presets and cameras read it before the next depsgraph update
        obj.matrix_world = Matrix.Translation(scene.cursor.location if location is None else location)

        # Parts as vertex groups too (ICT vertex ranges, inclusive; checked to lie within the mesh).
        for rname, first, last in mesh.part_ranges:
            vg = obj.vertex_groups.new(name=rname)
            vg.add(list(range(first, last + 1)), 1.0, "REPLACE")

        if use_keys:
            _add_shape_keys(obj, mesh, res)

        metrics = res.get("metrics") if isinstance(res.get("metrics"), dict) else {}
        timings = res.get("timings_s") if isinstance(res.get("timings_s"), dict) else {}
        obj[PROP_HEAD] = True
        obj["likeness_bundle"] = str(bundle.folder)
        obj["likeness_photo"] = str((res.get("input") or {}).get("name", ""))
        for key in ("landmark_error_px", "landmark_error_iod"):
            if isinstance(metrics.get(key), (int, float)):
                obj[f"likeness_{key}"] = float(metrics[key])
        if isinstance(timings.get("total"), (int, float)):
            obj["likeness_backend_s"] = float(timings["total"])
        _store_lighting(obj, res)
        if photo_camera_for is not None:
            add_photo_camera(obj, bundle, photo_camera_for, scene, coll, created, make_scene_camera)
        deep_enough_for_lashes(scene)
        obj["likeness_import_s"] = time.perf_counter() - t0
        return obj
    except WorkerError:
        created.rollback()
        raise
    except Exception as ex:  # a bug or a broken file: report it with a code, keep the scene clean
        created.rollback()
        raise WorkerError("IMPORT_FAILED", f"{type(ex).__name__}: {ex}") from ex


# A view ray through a lid margin crosses several transparent surfaces (three lash cards, the tear-film,
# eye-blend and occlusion shells); Cycles stops at transparent_max_bounces and draws black there (its
# default of 8 gave a black line along the lids and a tick at the eye corners; 12 measured clean).
LASH_TRANSPARENT_BOUNCES = 16


def deep_enough_for_lashes(scene) -> None:
    """Raise the scene's Cycles transparent bounce limit to LASH_TRANSPARENT_BOUNCES (never lower it)."""
    cycles = getattr(scene, "cycles", None)
    if cycles is not None and cycles.transparent_max_bounces < LASH_TRANSPARENT_BOUNCES:
        cycles.transparent_max_bounces = LASH_TRANSPARENT_BOUNCES


def _store_lighting(obj, res: dict) -> None:
    """The fitted photo lighting and pose, for the "As Photographed" preset (relight.py)."""
    light = res.get("lighting") if isinstance(res.get("lighting"), dict) else None
    pose = res.get("pose") if isinstance(res.get("pose"), dict) else None
    try:
        sh = np.asarray(light["coefficients"], dtype=np.float64) if light else None
        rot = np.asarray(pose["rotation"], dtype=np.float64) if pose else None
    except (KeyError, TypeError, ValueError):
        return
    if sh is not None and rot is not None and sh.shape == (9, 3) and rot.shape == (3, 3) \
            and np.isfinite(sh).all() and np.isfinite(rot).all():
        obj[PROP_LIGHTING] = sh.ravel().tolist()
        obj[PROP_POSE] = rot.ravel().tolist()


def _add_shape_keys(obj, mesh: MeshArrays, res) -> None:
    """ARKit's 52 shape keys with ARKit's names, all at 0 (see arkit.py: browInnerUp and cheekPuff are
    ICT's halves together, tongueOut moves nothing), and the fitted expression as its own key at 1, so
    the head still looks as in the photo and the 52 stay free for animation. The fitted values as
    ARKit weights are kept on the object (`likeness_arkit_fit`) for retargeting."""
    basis = mesh.basis_vertices
    names = mesh.expression_names
    expr = res.get("expression") if isinstance(res.get("expression"), dict) else {}
    coeffs = expr.get("coefficients") if isinstance(expr.get("coefficients"), list) else [0.0] * len(names)
    coeffs = dict(zip(expr.get("names") or names, coeffs))
    w = np.array([float(coeffs.get(n, 0.0)) for n in names], np.float32)
    kb = obj.shape_key_add(name="Basis", from_mix=False)
    kb.data.foreach_set("co", ict_to_blender(basis).ravel())
    deltas = arkit.arkit_deltas(names, mesh.expression_deltas)
    for name, d in zip(arkit.ARKIT_NAMES, deltas):
        key = obj.shape_key_add(name=name, from_mix=False)
        key.data.foreach_set("co", ict_to_blender(basis + d).ravel())
        key.slider_min, key.slider_max, key.value = 0.0, 1.0, 0.0
    fitted = obj.shape_key_add(name=arkit.FITTED_KEY, from_mix=False)
    fitted.data.foreach_set("co", ict_to_blender(mesh.vertices).ravel())  # exactly the fitted mesh
    fitted.value = 1.0
    obj.data.shape_keys.use_relative = True
    obj["likeness_arkit_fit"] = arkit.arkit_values(names, w)


def find_photo(bundle: Bundle, photo: str = "") -> str:
    """The photo for the camera's background: `photo` when it exists, else a file of the input's name
    next to the bundle or in its parent folder (batch layouts), else the bundle's preview.png (the
    photo with the fit drawn on it, the photo's aspect; the background is fitted to the frame, so its
    size does not matter); "" when none is there."""
    if photo and os.path.isfile(photo):
        return os.path.abspath(photo)
    name = str((bundle.result.get("input") or {}).get("name") or "")
    if name and Path(name).name == name:
        for folder in (bundle.folder, bundle.folder.parent, bundle.folder.parent.parent):
            if (folder / name).is_file():
                return str(folder / name)
    previews = bundle.files("preview")
    return str(previews[0].path) if previews and previews[0].path.is_file() else ""


def add_photo_camera(obj, bundle: Bundle, photo: str, scene, collection, created: _Created,
                     make_scene_camera: bool = False):
    """A camera that sees the head as the photo did (focal length, sensor, principal point, pose:
    photo_camera.py), with the photo as its background image. None when the bundle has no camera."""
    try:
        setup = photo_camera.camera_setup(bundle.result, tuple(obj.matrix_world.translation))
    except (KeyError, TypeError, ValueError):
        return None
    cam = created.add(bpy.data.cameras.new(f"{obj.name} Photo Camera"))
    cam.sensor_fit = "HORIZONTAL"
    cam.sensor_width = setup.sensor_width_mm
    cam.lens = setup.lens_mm
    cam.shift_x, cam.shift_y = setup.shift_x, setup.shift_y
    cam.clip_start, cam.clip_end = setup.clip_start, setup.clip_end
    cam_obj = created.add(bpy.data.objects.new(cam.name, cam))
    cam_obj.matrix_world = Matrix([list(row) for row in setup.matrix_world])
    cam_obj[PROP_PHOTO_CAMERA] = True
    cam_obj["likeness_photo_size"] = [setup.width, setup.height]
    collection.objects.link(cam_obj)
    path = find_photo(bundle, photo)
    if path:
        img = created.add(bpy.data.images.load(path, check_existing=False))
        img.name = f"{obj.name} photo"
        bg = cam.background_images.new()
        bg.image = img
        bg.alpha = 1.0
        bg.display_depth = "BACK"
        bg.frame_method = "FIT"
        cam.show_background_images = True
    if make_scene_camera:
        scene.camera = cam_obj
        side = max(setup.width, setup.height)
        scale = min(1.0, 1920 / side)  # the photo's aspect, at most 1920 px on the long side
        scene.render.resolution_x = max(4, round(setup.width * scale))
        scene.render.resolution_y = max(4, round(setup.height * scale))
        scene.render.resolution_percentage = 100
    obj["likeness_photo_camera"] = cam_obj.name
    return cam_obj


def find_heads(scene=None) -> list:
    scene = scene or bpy.context.scene
    return [o for o in scene.objects if o.get(PROP_HEAD)]

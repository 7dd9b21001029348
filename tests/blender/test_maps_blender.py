"""The measured maps' conventions, checked against Blender itself (bpy, Cycles on the CPU):
- the tangent-space normal map of a known height bump, as backend/skin_maps.py computes it for the ICT UV
  map, equals what Cycles bakes from the same bump (Bump node, tangent-space normal bake, this UV map):
  OpenGL convention, +X along +u, +Y along +v;
- the 16-bit PNG the bundle writer makes, read back through the importer's own skin material (Image ->
  Normal Map node, tangent space), bakes back to the same normals (so nothing flips or loses precision
  between writer, reader and material), and flat stays flat;
- the importer wires the roughness map into Principled Roughness and the bundle's eyes.png into the eyes;
  a glb export carries the roughness in the green channel of its metallic-roughness texture, and the
  bundle's eyes image."""
from __future__ import annotations

import sys
from pathlib import Path

import bpy
import numpy as np
import pytest

from .conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

S = 256                      # bake size
AMP_M, FU, FV = 0.0005, 24.0, 17.0   # the bump: 0.5 mm * sin(2 pi 24 u) * cos(2 pi 17 v), metres


@pytest.fixture(scope="module")
def model():
    from backend.facemodel import load_face_model
    return load_face_model()


def _blender_vertices(model) -> np.ndarray:
    """ICT cm (+Y up) -> Blender m (+Z up), as the importer (importer.ict_to_blender)."""
    v = model.neutral.numpy().astype(np.float64)
    return np.c_[v[:, 0], -v[:, 2], v[:, 1]] * 0.01


def _bump(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return AMP_M * np.sin(2 * np.pi * FU * u) * np.cos(2 * np.pi * FV * v)


def _tile_mesh(model, name: str = "bake"):
    """The skin polygons of UDIM tile 1001 as a Blender object (the bake target: nothing else in 0..1)."""
    from backend.facemodel import PART_NAMES
    topo = model.topology
    sizes, fvi, uv = topo.face_sizes, topo.face_vertex_indices, topo.corner_uvs
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    corner_poly = np.repeat(np.arange(len(sizes)), sizes)
    keep = ((topo.polygon_part == PART_NAMES.index("skin")) & (np.minimum.reduceat(uv[:, 0], starts) >= 0)
            & (np.maximum.reduceat(uv[:, 0], starts) <= 1))
    corners = keep[corner_poly]
    vb = _blender_vertices(model)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(vb))
    me.vertices.foreach_set("co", vb.astype(np.float32).ravel())
    me.loops.add(int(corners.sum()))
    me.loops.foreach_set("vertex_index", fvi[corners].astype(np.int32))
    ks = sizes[keep]
    me.polygons.add(len(ks))
    me.polygons.foreach_set("loop_start", np.r_[0, np.cumsum(ks)[:-1]].astype(np.int32))
    me.uv_layers.new(name="UVMap").data.foreach_set("uv", uv[corners].astype(np.float32).ravel())
    me.update()
    me.shade_smooth()
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _bake_normals(obj, mat) -> np.ndarray:
    """Cycles' tangent-space normal bake of `mat` on `obj` (OpenGL: POS_X, POS_Y, POS_Z) -> (S, S, 3)
    vectors, rows top first, NaN where no polygon was baked."""
    obj.data.materials.clear()
    obj.data.materials.append(mat)
    img = bpy.data.images.new("bake target", S, S, alpha=False, float_buffer=True)
    img.colorspace_settings.name = "Non-Color"
    img.generated_color = (0.0, 0.0, 0.0, 1.0)
    node = mat.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = img
    mat.node_tree.nodes.active = node
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    scene.render.bake.margin = 0
    for o in scene.objects:
        o.select_set(o == obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.bake(type="NORMAL", normal_space="TANGENT", normal_r="POS_X", normal_g="POS_Y",
                        normal_b="POS_Z", margin=0, uv_layer="UVMap", use_clear=True, target="IMAGE_TEXTURES")
    px = np.empty(S * S * 4, np.float32)
    img.pixels.foreach_get(px)
    n = px.reshape(S, S, 4)[::-1, :, :3].astype(np.float64) * 2 - 1
    n[np.linalg.norm(n, axis=2) < 0.5] = np.nan
    mat.node_tree.nodes.remove(node)
    return n


def _bump_material():
    """Principled with Normal <- Bump(Height = the bump of UV), Strength 1, Distance 1 (metres)."""
    mat = bpy.data.materials.new("bump")
    nt = mat.node_tree
    nodes, links = nt.nodes, nt.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    uvn = nodes.new("ShaderNodeUVMap")
    uvn.uv_map = "UVMap"
    sep = nodes.new("ShaderNodeSeparateXYZ")
    links.new(uvn.outputs["UV"], sep.inputs[0])

    def op(name, a, b):
        m = nodes.new("ShaderNodeMath")
        m.operation = name
        for i, x in enumerate((a, b)):
            if x is None:
                continue
            if isinstance(x, float):
                m.inputs[i].default_value = x
            else:
                links.new(x, m.inputs[i])
        return m.outputs[0]
    su = op("SINE", op("MULTIPLY", sep.outputs[0], 2 * np.pi * FU), None)
    cv = op("COSINE", op("MULTIPLY", sep.outputs[1], 2 * np.pi * FV), None)
    height = op("MULTIPLY", op("MULTIPLY", su, cv), AMP_M)
    bump = nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 1.0
    bump.inputs["Distance"].default_value = 1.0
    links.new(height, bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return mat


def _ours(model) -> tuple[np.ndarray, np.ndarray]:
    """skin_maps' normal map of the bump on tile 1001 (S x S) and the mask of its skin texels."""
    from backend import skin_maps
    frames = skin_maps.texel_frames(model, _blender_vertices(model), S, tiles=(1001,))[1001]
    u = (np.arange(S) + 0.5) / S
    v = 1.0 - (np.arange(S) + 0.5) / S
    normals = skin_maps.height_to_normal(_bump(u[None, :], v[:, None]), frames)
    return normals, frames.image(np.ones(len(frames.texel), bool), fill=False)


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, -1), -1, 1)))


@pytest.fixture(scope="module")
def baked(likeness, model):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = _tile_mesh(model)
    return obj, _bake_normals(obj, _bump_material())


def test_normal_map_convention_matches_a_cycles_bump_bake(model, baked):
    _, cycles = baked
    ours, mask = _ours(model)
    ok = mask & np.isfinite(cycles).all(-1)
    assert ok.sum() > 0.8 * mask.sum() > 40000
    a, b = ours[ok], cycles[ok]
    tilt = np.degrees(np.arccos(np.clip(b[:, 2] / np.linalg.norm(b, axis=1), -1, 1)))
    err = _angles(a, b)
    print(f"ours vs Cycles: median {np.median(err):.2f} deg, p90 {np.percentile(err, 90):.2f}; the bump tilts "
          f"{np.median(tilt):.1f} deg")
    assert np.median(tilt) > 5.0                   # a real bump, not a flat map agreeing with a flat map
    assert np.median(err) < 1.0 and np.percentile(err, 90) < 2.0
    assert np.corrcoef(a[:, 0], b[:, 0])[0, 1] > 0.99 and np.corrcoef(a[:, 1], b[:, 1])[0, 1] > 0.98
    # The test can tell the conventions apart: DirectX (green down) or swapped axes are far off.
    assert np.median(_angles(a * [1, -1, 1], b)) > 5.0
    assert np.median(_angles(a[:, [1, 0, 2]], b)) > 5.0


@pytest.fixture(scope="module")
def bundle(likeness, model, tmp_path_factory):
    """A bundle written by backend.bundle.write_bundle with known maps: the bump's normals (16-bit), a
    roughness ramp, a specular constant, an eyes image."""
    from PIL import Image  # noqa: F401  (the writer uses cv2; PIL reads back in the tests)
    from backend import skin_maps
    from backend.bundle import write_bundle
    from backend.scene import Hooks, TextureResult
    from tests.test_maps import blank_scene
    out = tmp_path_factory.mktemp("maps") / "bundle"
    obs, fit = blank_scene(model, 128, "maps.png")
    frames = skin_maps.texel_frames(model, _blender_vertices(model), S, tiles=(1001, 1002))
    u = (np.arange(S) + 0.5) / S
    vv = 1.0 - (np.arange(S) + 0.5) / S
    normal = {1001: skin_maps.height_to_normal(_bump(u[None, :], vv[:, None]), frames[1001]),
              1002: np.broadcast_to(np.array([0, 0, 1], np.float32), (S, S, 3))}
    ramp = np.tile(np.linspace(0.2, 0.8, S, dtype=np.float32)[None, :], (S, 1))
    tex = TextureResult("test", S, {
        "diffuse": {t: np.full((S, S, 3), 0.4, np.float32) for t in (1001, 1002)},
        "visibility": {t: np.ones((S, S), np.float32) for t in (1001, 1002)},
        "specular": {t: np.full((S, S), 0.6, np.float32) for t in (1001, 1002)},
        "roughness": {1001: ramp, 1002: np.full((S, S), 0.5, np.float32)},
        "normal": normal}, images={"eyes": np.full((64, 64, 3), (40, 90, 160), np.uint8)})
    write_bundle(out, obs, fit, tex, model, {}, Hooks(), embed_model=True)
    return out, normal[1001]


def test_bundle_normal_png_is_16_bit_and_flat_is_flat(bundle):
    import cv2
    out, _ = bundle
    img = cv2.imread(str(out / "normal.1002.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    n = img[..., ::-1].astype(np.float64) / 65535 * 2 - 1          # what Blender's Normal Map node reads
    assert np.abs(n[..., :2]).max() < 2e-5 and np.all(n[..., 2] == 1.0)


def test_16_bit_normal_map_through_the_importers_material_bakes_back(likeness, model, bundle, baked):
    """The bundle's map, imported (importer.import_bundle: UDIM image, Normal Map node in tangent space) and
    baked by Cycles as a normal map again, gives back the normals the writer was given."""
    from likeness.operators import importer
    out, ours = bundle
    obj, _ = baked
    head = importer.import_bundle(out, name="maps_head")
    skin = head.data.materials[0]
    assert skin.name == "maps_head skin"
    rebaked = _bake_normals(obj, skin)
    _, mask = _ours(model)
    ok = mask & np.isfinite(rebaked).all(-1)
    err = _angles(ours[ok], rebaked[ok])
    print(f"written -> imported -> baked: median {np.median(err):.3f} deg, max {err.max():.3f} deg")
    assert ok.sum() > 0.8 * mask.sum() and np.median(err) < 0.3 and np.percentile(err, 99) < 1.0


def test_importer_wires_roughness_and_the_bundles_eyes(likeness, bundle):
    from likeness.operators import importer
    out, _ = bundle
    bpy.ops.wm.read_factory_settings(use_empty=True)
    head = importer.import_bundle(out, name="wired")
    skin = head.data.materials[0]
    bsdf = next(n for n in skin.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    sock = bsdf.inputs["Roughness"]
    assert sock.is_linked
    from .reimport import upstream_images
    imgs = upstream_images(sock)
    assert len(imgs) == 1 and imgs[0].source == "TILED" and imgs[0].colorspace_settings.name == "Non-Color"
    assert Path(imgs[0].filepath).name.startswith("roughness.")
    eyes = head.data.materials[[m.name for m in head.data.materials].index("wired eyes")]
    ebsdf = next(n for n in eyes.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    eimg = upstream_images(ebsdf.inputs["Base Color"])[0]
    assert Path(eimg.filepath).name == "eyes.png" and eimg.colorspace_settings.name == "sRGB"


def test_gltf_export_carries_roughness_in_green_and_the_bundles_eyes(likeness, bundle, tmp_path):
    from likeness.operators import export, importer

    from .reimport import reimport, upstream_images
    out, _ = bundle
    bpy.ops.wm.read_factory_settings(use_empty=True)
    head = importer.import_bundle(out, name="rough")
    rep = export.export_head(head, tmp_path / "rough.glb", "GLB")
    assert any(Path(t).name == "rough_skin_roughness.png" for t in rep.textures)
    reimport(rep.path)
    mat = next(m for m in bpy.data.materials if m.name.startswith("rough_skin"))
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Roughness"].links[0]
    assert link.from_node.type == "SEPARATE_COLOR" and link.from_socket.name == "Green"
    img = upstream_images(bsdf.inputs["Roughness"])[0]
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    green = px.reshape(img.size[1], img.size[0], 4)[::-1, :S, 1]      # atlas: tile 1001 on the left
    np.testing.assert_allclose(green.mean(axis=0), np.linspace(0.2, 0.8, S), atol=0.01)
    # the eyes keep the bundle's own image (the photo's iris), not the importer's default drawing
    eyes = next(m for m in bpy.data.materials if m.name.startswith("rough_eyes"))
    ebsdf = next(n for n in eyes.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    eimg = upstream_images(ebsdf.inputs["Base Color"])[0]
    epx = np.empty(eimg.size[0] * eimg.size[1] * 4, np.float32)
    eimg.pixels.foreach_get(epx)
    np.testing.assert_allclose(epx.reshape(-1, 4)[:, :3].mean(0), np.array([40, 90, 160]) / 255.0, atol=0.01)

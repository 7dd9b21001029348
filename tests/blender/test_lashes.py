"""The eyelashes in Blender: cards that carry strands (export_layout.lash_image) instead of one half-transparent
sheet, which drew a grey band across each eye; Cycles deep enough to see through every layer at the lids
(its default transparent bounce limit drew a black line along them); a glb export that keeps the strands."""
from __future__ import annotations

import bpy
import numpy as np
import pytest

from .test_maps_blender import bundle, model  # noqa: F401  (module fixtures: a written bundle, the face model)


def _lash_bsdf(head):
    mat = next(m for m in head.data.materials if m.name.endswith(" lashes"))
    return mat, next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")


def _eye_border(scene, head) -> tuple[float, float, float, float]:
    """(min x, max x, min y, max y) of both eyeballs in the camera's frame (0..1), widened to take in the lids."""
    eyes = [m.name for m in head.data.materials].index(next(m.name for m in head.data.materials
                                                              if m.name.endswith(" eyes")))
    me = head.data
    mat_index = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mat_index)
    loops = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("loop_total", loops)
    verts = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", verts)
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    ids = np.unique(verts[np.repeat(mat_index == eyes, loops)])
    pts = np.c_[co.reshape(-1, 3)[ids], np.ones(len(ids))] @ np.asarray(head.matrix_world).T
    cam = scene.camera
    proj = np.asarray(cam.calc_matrix_camera(bpy.context.evaluated_depsgraph_get(),
                                             x=scene.render.resolution_x, y=scene.render.resolution_y))
    clip = pts @ (proj @ np.asarray(cam.matrix_world.inverted())).T
    xy = clip[:, :2] / clip[:, 3:4] * 0.5 + 0.5
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    w, h = x1 - x0, y1 - y0
    return x0 - 0.05 * w, x1 + 0.05 * w, y0 - 0.4 * h, y1 + 0.4 * h


def _render(scene, path) -> np.ndarray:
    from likeness.operators import render
    render.render_png(scene, path)
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(img.size[1], img.size[0], 4)[..., :3]
    finally:
        bpy.data.images.remove(img)


@pytest.mark.slow
def test_lashes_are_strands_and_do_not_darken_the_eyes(likeness, bundle, tmp_path):  # noqa: F811
    from likeness.operators import render
    out, _ = bundle
    head = render.build_preview_scene(out, name="lashes", preset="STUDIO", resolution=640, samples=8)
    scene = bpy.context.scene
    assert scene.cycles.transparent_max_bounces >= 16
    mat, bsdf = _lash_bsdf(head)
    alpha_link = bsdf.inputs["Alpha"].links[0] if bsdf.inputs["Alpha"].is_linked else None
    source = (alpha_link.from_node.type, alpha_link.from_socket.name) if alpha_link is not None else None
    img = alpha_link.from_node.image if alpha_link is not None else None

    scene.render.use_border = scene.render.use_crop_to_border = True
    (scene.render.border_min_x, scene.render.border_max_x,
     scene.render.border_min_y, scene.render.border_max_y) = np.clip(_eye_border(scene, head), 0, 1)
    with_lashes = _render(scene, tmp_path / "with.png")
    if alpha_link is not None:
        mat.node_tree.links.remove(alpha_link)
    bsdf.inputs["Alpha"].default_value = 0.0
    without = _render(scene, tmp_path / "without.png")
    assert with_lashes.shape[0] > 20 and with_lashes.shape[1] > 60
    lum = lambda x: x @ np.array([0.2126, 0.7152, 0.0722])  # noqa: E731
    darkening = 1.0 - lum(with_lashes).mean() / lum(without).mean()
    # per image row: the worst band (the old cards: a grey band under each iris, a black line at the lids)
    rows = 1.0 - lum(with_lashes).mean(1) / np.maximum(lum(without).mean(1), 1e-6)
    print(f"lashes darken the eye region by {darkening:.1%} (worst row {rows.max():.1%})")
    assert 0.002 < darkening < 0.04 and rows.max() < 0.15
    assert source == ("TEX_IMAGE", "Alpha")
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    a = px.reshape(-1, 4)[:, 3]
    assert img.packed_file is not None and a.max() > 0.9 and (a < 0.05).mean() > 0.8


def test_gltf_export_keeps_the_lash_strands(likeness, bundle, tmp_path):  # noqa: F811
    from likeness.operators import export, importer

    from .reimport import reimport, upstream_images
    out, _ = bundle
    bpy.ops.wm.read_factory_settings(use_empty=True)
    head = importer.import_bundle(out, name="lashx")
    rep = export.export_head(head, tmp_path / "lashx.glb", "GLB")
    assert any(t.endswith("lashx_lashes_color.png") for t in rep.textures)
    reimport(rep.path)
    mat = next(m for m in bpy.data.materials if m.name.startswith("lashx_lashes"))
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Alpha"].is_linked
    img = upstream_images(bsdf.inputs["Base Color"])[0]
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    a = px.reshape(-1, 4)[:, 3]
    assert a.max() > 0.9 and (a < 0.05).mean() > 0.8

"""End to end with the real backend (`python -m backend worker`) on real photos from
../shared/data/faces: the operator, the importer, a Cycles render, cancel, bad photos."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import bpy
import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, VENV_PY, drive, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_bundle(likeness, photos, tmp_path_factory):
    """One bundle made by the real worker (the add-on's cached worker, shared with later tests)."""
    from likeness.operators import common, generate
    from likeness.operators.worker_client import ReconstructJob
    s = common.Settings(backend_python=str(VENV_PY), backend_cwd=str(REPO), device="cpu", texture_size=512)
    out = tmp_path_factory.mktemp("bundles") / photos[1].stem
    job = ReconstructJob(generate.get_worker(s), str(photos[1]), str(out), s.request_options(),
                         timeout_s=180).run_blocking()
    assert job.state == "done", (job.error_code, job.error_message)
    return Path(job.result["bundle"])


def _npz(bundle):
    """The bundle's arrays as the add-on's reader returns them (mesh.npz plus the face model file)."""
    import bundle_format
    m = bundle_format.read_bundle(bundle, want_deltas=True).mesh
    return {"vertices": m.vertices, "basis_vertices": m.basis_vertices, "face_sizes": m.face_sizes,
            "face_vertex_indices": m.face_vertex_indices, "corner_uvs": m.corner_uvs, "face_part": m.face_part,
            "part_names": m.part_names, "expression_names": m.expression_names}


def _linked_from(sock):
    assert sock.is_linked, f"{sock.node.name}.{sock.name} is not linked"
    return sock.links[0].from_node


def _upstream_images(node):
    """Every image texture node feeding `node` (through any chain)."""
    found, todo, seen = [], [node], set()
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.type == "TEX_IMAGE":
            found.append(n)
        for i in n.inputs:
            todo.extend(link.from_node for link in i.links)
    return found


def _check_head(obj, bundle, stem):
    npz = _npz(bundle)
    me = obj.data
    assert obj.name == stem and obj.type == "MESH"
    assert [c.name for c in obj.users_collection] == [f"Likeness {stem}"]
    assert len(me.vertices) == 26719 and len(me.polygons) == 26384
    assert len(me.loops) == int(npz["face_sizes"].sum())
    # positions: cm, +Y up, face +Z  ->  m, +Z up, face -Y
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    v = npz["vertices"]
    np.testing.assert_allclose(co.reshape(-1, 3), np.c_[v[:, 0], -v[:, 2], v[:, 1]] * 0.01, atol=1e-6)
    face, back = co.reshape(-1, 3)[:9409], co.reshape(-1, 3)[9409:11248]
    assert face[:, 1].min() < back[:, 1].min(), "the face must look down -Y"
    # topology and per-corner UDIM UVs
    fvi = np.empty(len(me.loops), np.int32)
    me.loops.foreach_get("vertex_index", fvi)
    np.testing.assert_array_equal(fvi, npz["face_vertex_indices"])
    uv = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), npz["corner_uvs"], atol=1e-6)
    assert 0.0 <= uv[0::2].min() and uv[0::2].max() < 7.0, "u spans UDIM tiles 1001..1007"
    # parts as material slots
    parts = [str(p) for p in npz["part_names"]]
    assert [m.name for m in me.materials] == [f"{stem} {p}" for p in parts]
    mi = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mi)
    np.testing.assert_array_equal(mi, npz["face_part"])
    smooth = np.empty(len(me.polygons), bool)
    me.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()
    # the skin material's links and colour spaces
    skin = me.materials[parts.index("skin")]
    bsdf = next(n for n in skin.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    tex = _linked_from(bsdf.inputs["Base Color"])
    assert tex.type == "TEX_IMAGE"
    img = tex.image
    assert img.source == "TILED" and {1001, 1002} <= {t.number for t in img.tiles}
    assert img.colorspace_settings.name == "sRGB"
    assert Path(bpy.path.abspath(img.filepath.replace("<UDIM>", "1001"))).resolve() == \
        (Path(bundle) / "diffuse.1001.png").resolve()
    nmap = _linked_from(bsdf.inputs["Normal"])
    assert nmap.type == "NORMAL_MAP" and nmap.space == "TANGENT"
    nimgs = _upstream_images(nmap)
    assert len(nimgs) == 1 and nimgs[0].image.colorspace_settings.name == "Non-Color"
    assert Path(nimgs[0].image.filepath).name.startswith("normal.")
    simgs = _upstream_images(_linked_from(bsdf.inputs["Specular IOR Level"]))
    assert len(simgs) == 1 and simgs[0].image.colorspace_settings.name == "Non-Color"
    assert Path(simgs[0].image.filepath).name.startswith("specular.")
    for p in ("teeth", "lashes"):
        if p in parts:
            m = me.materials[parts.index(p)]
            imgs = _upstream_images(next(n for n in m.node_tree.nodes if n.type == "OUTPUT_MATERIAL"))
            if p == "teeth":
                assert not imgs
            else:  # the lash strands: drawn by the add-on and packed, nothing read from the bundle
                assert len(imgs) == 1 and imgs[0].image.packed_file is not None and not imgs[0].image.filepath
    return npz


def test_operator_end_to_end(empty_scene, settings, photos):
    from likeness.operators import generate, relight
    photo = photos[0]
    st = bpy.context.scene.likeness
    st.photo_source, st.photo_path, st.preset = "FILE", str(photo), "STUDIO"
    assert bpy.ops.likeness.generate(run_mode="ASYNC") == {"FINISHED"}
    assert generate.is_running(), "async mode must return before the backend is done"
    ticks = drive(generate, timeout=300)
    g = generate.active()
    assert g.state == "DONE", (g.error_code, g.error_message)
    assert ticks > 3
    # The worker's preview (the fit over the photo) was written for the panel while it ran.
    assert g.preview_serial >= 1 and Path(g.preview_path).is_file()
    assert Path(g.preview_path).read_bytes()[:4] == b"\x89PNG"
    obj = bpy.data.objects[photo.stem]
    bundle = Path(obj["likeness_bundle"])
    assert bundle.parent == Path(settings.results_dir)
    _check_head(obj, bundle, photo.stem)
    assert obj.data.shape_keys is None
    assert bpy.context.view_layer.objects.active == obj
    js = bpy.context.window_manager.likeness_job
    assert js.state == "DONE" and js.object_name == photo.stem and js.error_code == ""
    assert 0 < js.landmark_error_px < 50 and js.total_s > 0 and 0 <= js.import_s < 2.0
    assert relight.current_preset() == "STUDIO" and len(relight.preset_lights()) == 3
    assert "UNDO" in bpy.types.LIKENESS_OT_generate.bl_options  # one undo step in the UI


def test_render_is_not_trivial(empty_scene, real_bundle, tmp_path):
    from likeness.operators import render
    obj = render.build_preview_scene(real_bundle, preset="STUDIO", resolution=128, samples=8,
                                     empty=False)
    png = render.render_png(bpy.context.scene, tmp_path / "head.png")
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255.0
    h, w, _ = rgb.shape
    background = np.median(np.concatenate([rgb[:8, :8].reshape(-1, 3), rgb[:8, -8:].reshape(-1, 3)]), axis=0)
    face = rgb[int(h * 0.3):int(h * 0.6), int(w * 0.4):int(w * 0.6)].reshape(-1, 3)
    diff = np.abs(face - background).sum(axis=1)
    assert (diff > 0.15).mean() > 0.9, f"face region looks like the background {background}"
    assert face.std(axis=0).mean() > 0.01, "face region is flat"
    assert face[:, 0].mean() > face[:, 2].mean(), "skin should be redder than blue"
    magenta = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.2) & (rgb[..., 2] > 0.8)
    assert magenta.mean() < 0.001, "missing textures render magenta"
    assert obj.name in bpy.context.scene.objects


def test_arkit_shape_keys_at_zero_and_the_fit_as_its_own_key(empty_scene, likeness, real_bundle):
    import arkit
    from likeness.operators import importer
    obj = importer.import_bundle(real_bundle, shape_keys=True)
    npz = _npz(real_bundle)
    res = json.loads((real_bundle / "result.json").read_text())
    keys = obj.data.shape_keys.key_blocks
    names = [k.name for k in keys]
    assert names == ["Basis", *arkit.ARKIT_NAMES, arkit.FITTED_KEY]  # ARKit's 52, exact names
    assert all(k.value == 0.0 for k in keys[1:53]) and keys[arkit.FITTED_KEY].value == 1.0
    basis = np.empty(len(obj.data.vertices) * 3, np.float32)
    keys[0].data.foreach_get("co", basis)
    b = npz["basis_vertices"]
    np.testing.assert_allclose(basis.reshape(-1, 3), np.c_[b[:, 0], -b[:, 2], b[:, 1]] * 0.01, atol=1e-6)
    # browInnerUp is both halves of ICT's: its offset is their sum
    import bundle_format
    m = bundle_format.read_bundle(real_bundle, want_deltas=True).mesh
    i_l, i_r = m.expression_names.index("browInnerUp_L"), m.expression_names.index("browInnerUp_R")
    brow = np.empty(len(obj.data.vertices) * 3, np.float32)
    keys["browInnerUp"].data.foreach_get("co", brow)
    d = (m.expression_deltas[i_l].astype(np.float32) + m.expression_deltas[i_r].astype(np.float32))
    np.testing.assert_allclose(brow.reshape(-1, 3) - basis.reshape(-1, 3), np.c_[d[:, 0], -d[:, 2], d[:, 1]] * 0.01,
                               atol=1e-6)
    tongue = np.empty(len(obj.data.vertices) * 3, np.float32)
    keys["tongueOut"].data.foreach_get("co", tongue)
    assert np.array_equal(tongue, basis), "tongueOut moves nothing (ICT has no tongue shape)"
    # at import the evaluated mesh is exactly the fitted face
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
    co = np.empty(len(ev.vertices) * 3, np.float32)
    ev.vertices.foreach_get("co", co)
    v = npz["vertices"]
    np.testing.assert_allclose(co.reshape(-1, 3), np.c_[v[:, 0], -v[:, 2], v[:, 1]] * 0.01, atol=2e-5)
    fit = obj["likeness_arkit_fit"]
    coeffs = dict(zip(res["expression"]["names"], res["expression"]["coefficients"]))
    assert abs(fit["jawOpen"] - coeffs["jawOpen"]) < 1e-6
    assert abs(fit["browInnerUp"] - (coeffs["browInnerUp_L"] + coeffs["browInnerUp_R"]) / 2) < 1e-6


def test_head_at_cursor_and_camera_sees_it_as_the_photo(empty_scene, likeness, real_bundle):
    """The camera matched to the fit projects the head's vertices where the fit says they are in the photo
    (Blender's own projection, bpy_extras.world_to_camera_view), and shows the photo behind it."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector
    from likeness.operators import importer
    scene = bpy.context.scene
    scene.cursor.location = (0.7, -1.2, 0.4)
    obj = importer.import_bundle(real_bundle, photo_camera_for="", make_scene_camera=True)
    assert tuple(obj.location) == pytest.approx((0.7, -1.2, 0.4))
    cam = scene.camera
    assert cam is not None and cam.get("likeness_photo_camera") and cam.users_collection == obj.users_collection
    res = json.loads((real_bundle / "result.json").read_text())
    c, pose = res["camera"], res["pose"]
    assert (scene.render.resolution_x / scene.render.resolution_y) == pytest.approx(c["width"] / c["height"], rel=1e-3)
    bg = cam.data.background_images
    assert cam.data.show_background_images and len(bg) == 1 and bg[0].image is not None
    w, h = bg[0].image.size  # here the bundle's preview (no photo beside it), the photo's aspect
    assert w / h == pytest.approx(c["width"] / c["height"], rel=1e-2) and bg[0].frame_method == "FIT"
    bpy.context.view_layer.update()
    v = _npz(real_bundle)["vertices"][::500]
    r, t = np.array(pose["rotation"]), np.array(pose["translation_cm"])
    xc = v @ r.T + t
    want = np.c_[c["cx"] + c["focal_px"] * xc[:, 0] / -xc[:, 2], c["cy"] - c["focal_px"] * xc[:, 1] / -xc[:, 2]]
    me = obj.data
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    pts = [world_to_camera_view(scene, cam, obj.matrix_world @ Vector(p)) for p in co.reshape(-1, 3)[::500]]
    got = np.array([(p.x * c["width"], (1 - p.y) * c["height"]) for p in pts])
    assert np.abs(got - want).max() < 0.05, "pixels"
    # a scene that had a camera keeps it; the panel's button switches to the photo camera
    other = importer.import_bundle(real_bundle, name="second", photo_camera_for="", make_scene_camera=False)
    assert scene.camera == cam
    bpy.context.view_layer.objects.active = other
    assert bpy.ops.likeness.view_photo_camera() == {"FINISHED"}
    assert scene.camera.name == other["likeness_photo_camera"] != cam.name


def test_eyes_are_an_image_and_a_bundle_eyes_file_wins(empty_scene, likeness, real_bundle, tmp_path):
    """The de-lit bundle carries the photo's eyes (eyes.png, docs/maps.md): the importer uses that file; a
    bundle without one gets the default iris drawn and packed; the bundle's file is what decides."""
    from likeness.operators import importer
    obj = importer.import_bundle(real_bundle)
    eyes = obj.data.materials[[m.name for m in obj.data.materials].index(f"{obj.name} eyes")]
    bsdf = next(n for n in eyes.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    tex = _linked_from(bsdf.inputs["Base Color"])
    assert tex.type == "TEX_IMAGE" and Path(tex.image.filepath).name == "eyes.png" and tex.image.size[0] == 512
    # without a file of role "eyes": the default iris, drawn and packed
    b0 = tmp_path / "no_eyes"
    shutil.copytree(real_bundle, b0)
    res = json.loads((b0 / "result.json").read_text())
    res["files"] = [f for f in res["files"] if f.get("role") != "eyes"]
    (b0 / "result.json").write_text(json.dumps(res))
    obj0 = importer.import_bundle(b0, name="plain")
    tex0 = _linked_from(next(n for n in obj0.data.materials["plain eyes"].node_tree.nodes
                             if n.type == "BSDF_PRINCIPLED").inputs["Base Color"])
    assert tex0.image.packed_file is not None and tex0.image.size[0] == 512
    # the bundle's own file is what is shown
    b = tmp_path / "bundle"
    shutil.copytree(real_bundle, b)
    Image.fromarray(np.full((64, 64, 3), (20, 90, 200), np.uint8)).save(b / "eyes.png")
    obj2 = importer.import_bundle(b, name="blue")
    m2 = obj2.data.materials["blue eyes"]
    tex2 = _linked_from(next(n for n in m2.node_tree.nodes if n.type == "BSDF_PRINCIPLED").inputs["Base Color"])
    assert Path(tex2.image.filepath).name == "eyes.png" and tex2.image.size[0] == 64


def test_import_never_overwrites_and_packs(empty_scene, likeness, real_bundle):
    from likeness.operators import importer
    a = importer.import_bundle(real_bundle, name="face")
    a_mats = [m.name for m in a.data.materials]
    a_img = a.data.materials[0].node_tree.nodes["Diffuse (UDIM)"].image
    b = importer.import_bundle(real_bundle, name="face", pack_images=True)
    assert (a.name, b.name) == ("face", "face.001")
    assert b.users_collection[0].name == "Likeness face.001"
    assert not set(a_mats) & {m.name for m in b.data.materials}
    assert [m.name for m in a.data.materials] == a_mats
    b_imgs = [n.image for m in b.data.materials for n in m.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert b_imgs and a_img not in b_imgs
    assert all(len(i.packed_files) == len(i.tiles) for i in b_imgs), "every tile packed"
    assert a_img.packed_file is None and len(a_img.packed_files) == 0


@pytest.mark.parametrize("damage", ["schema", "mesh", "diffuse", "no_result"])
def test_damaged_bundle_imports_nothing(empty_scene, likeness, real_bundle, tmp_path, damage):
    from likeness.operators import importer
    from likeness.operators.worker_client import WorkerError
    b = tmp_path / "bundle"
    shutil.copytree(real_bundle, b)
    if damage == "schema":
        rj = json.loads((b / "result.json").read_text())
        rj["schema_version"] = 99
        (b / "result.json").write_text(json.dumps(rj))
    elif damage == "mesh":
        data = (b / "mesh.npz").read_bytes()
        (b / "mesh.npz").write_bytes(data[: len(data) // 3])
    elif damage == "diffuse":
        (b / "diffuse.1001.png").unlink()
    else:
        (b / "result.json").unlink()
    before = snapshot()
    with pytest.raises(WorkerError) as ei:
        importer.import_bundle(b)
    assert ei.value.code in ("BUNDLE_INVALID", "IMPORT_FAILED")
    assert snapshot() == before, "a failed import must leave nothing behind"


def test_cancel_leaves_scene_unchanged(empty_scene, settings, photos):
    from likeness.operators import generate
    bpy.ops.mesh.primitive_monkey_add()
    before = snapshot()
    bpy.ops.likeness.generate(photo=str(photos[2]), run_mode="ASYNC")
    g = generate.active()
    import time
    t0 = time.monotonic()
    while g.job.state != "running" or g.job.fraction <= 0.0:  # the backend is at work
        assert generate.tick() is not None, (g.state, g.error_code, g.error_message)
        assert time.monotonic() - t0 < 120
        time.sleep(0.02)
    assert bpy.ops.likeness.cancel() == {"FINISHED"}
    drive(generate, timeout=30)
    assert g.state == "CANCELLED", (g.state, g.error_code, g.error_message)
    assert bpy.context.window_manager.likeness_job.state == "CANCELLED"
    assert snapshot() == before
    assert not Path(g.job.out).exists()
    assert not list(Path(settings.results_dir).glob(".*tmp*")), "no temporary folder left"
    assert g.job.client.usable(), "a protocol cancel keeps the worker for the next request"


@pytest.mark.parametrize("kind,codes", [("text", {"NOT_AN_IMAGE", "CORRUPT_IMAGE"}),
                                        ("noface", {"NO_FACE"})])
def test_bad_photo_reports_code(empty_scene, settings, tmp_path, kind, codes):
    from likeness.operators import generate
    bad = tmp_path / ("notes.jpg" if kind == "text" else "wall.png")
    if kind == "text":
        bad.write_text("this is not a photo\n" * 20)
    else:
        Image.fromarray(np.full((512, 512, 3), 128, np.uint8)).save(bad)
    bpy.ops.mesh.primitive_cube_add()
    before = snapshot()
    with pytest.raises(RuntimeError) as ei:  # background mode: blocking, ERROR report raises
        bpy.ops.likeness.generate(photo=str(bad))
    g = generate.active()
    assert g.state == "FAILED" and g.error_code in codes, (g.error_code, g.error_message)
    assert g.error_code in str(ei.value)
    js = bpy.context.window_manager.likeness_job
    assert js.state == "FAILED" and js.error_code == g.error_code
    assert snapshot() == before
    assert not list(Path(settings.results_dir).iterdir()), "no bundle or temp folder for a failed photo"


def test_saved_blend_finds_its_textures(empty_scene, likeness, real_bundle, tmp_path, monkeypatch):
    """A bundle given by a relative path still has working image paths after saving the .blend."""
    from likeness.operators import importer
    monkeypatch.chdir(real_bundle.parent)
    obj = importer.import_bundle(real_bundle.name)
    blend = tmp_path / "elsewhere" / "head.blend"
    blend.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    monkeypatch.chdir(tmp_path)
    imgs = {n.image for m in obj.data.materials for n in m.node_tree.nodes if n.type == "TEX_IMAGE"
            and n.image.packed_file is None}
    assert len(imgs) == 5  # the four UDIM maps (diffuse, specular, normal, roughness) and the photo's eyes.png
    for img in imgs:
        path = bpy.path.abspath(img.filepath.replace("<UDIM>", "1001"))
        assert Path(path).is_file(), (img.name, img.filepath, path)


def test_photo_from_a_packed_blender_image(empty_scene, settings, photos):
    """Photo source 'Image': an image loaded (and packed) in Blender, run blocking (background)."""
    from likeness.operators import generate
    img = bpy.data.images.load(str(photos[3]))
    img.pack()
    st = bpy.context.scene.likeness
    st.photo_source, st.photo_image, st.preset = "IMAGE", img, "NEUTRAL"
    assert bpy.ops.likeness.generate() == {"FINISHED"}
    g = generate.active()
    assert g.state == "DONE" and g.object_name == photos[3].stem
    assert Path(g.photo).parent == Path(settings.results_dir) / "_photos"  # packed bytes written out
    assert Path(g.photo).read_bytes() == photos[3].read_bytes()
    assert bpy.context.scene.world.get("likeness_preset") == "NEUTRAL"


def test_maps_missing_a_tile_fall_back_to_neutral_there(empty_scene, likeness, real_bundle, tmp_path):
    from likeness.operators import importer
    full = importer.import_bundle(real_bundle, name="full")
    assert not [n for n in full.data.materials[0].node_tree.nodes if n.name.endswith("on mapped tiles")]

    b = tmp_path / "bundle"
    shutil.copytree(real_bundle, b)
    res = json.loads((b / "result.json").read_text())
    for role in ("specular", "normal"):
        (b / f"{role}.1002.png").unlink()
    res["files"] = [f for f in res["files"] if not (f["role"] in ("specular", "normal") and f.get("tile") == 1002)]
    (b / "result.json").write_text(json.dumps(res))
    obj = importer.import_bundle(b, name="partial")
    nodes = obj.data.materials[0].node_tree.nodes
    spec, norm = nodes["Specular on mapped tiles"], nodes["Normal on mapped tiles"]
    assert any(o.links and o.links[0].to_node.type == "BSDF_PRINCIPLED" for o in spec.outputs)
    assert any(o.links and o.links[0].to_node.type == "NORMAL_MAP" for o in norm.outputs)
    assert all(i.is_linked for i in (spec.inputs[0], norm.inputs[0]))  # the tile mask drives the factor

"""backend.pipeline end to end on real photos: the bundle contract, error codes, nothing left behind."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

import bundle_format
from backend.bundle import MARKER_NAME, load_bundle, read_result
from backend.errors import LikenessError
from backend.pipeline import Options, reconstruct

from tests.conftest import LONDON_NEUTRAL
from tests.test_imageio import png_with_size

PHOTO = LONDON_NEUTRAL / "001_03.jpg"


def leftovers(folder):
    """Temporary or half-written folders the pipeline may have left next to its output."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, faces_dir):
    out = tmp_path_factory.mktemp("bundle") / "001_03"
    events = []
    result = reconstruct(PHOTO, out, Options(device="cpu"), progress=lambda s, f: events.append((s, f)))
    return out, result, events


def test_result_json_schema(bundle):
    out, result, _ = bundle
    on_disk = read_result(out)
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["schema_version"] == 2
    assert on_disk["input"]["name"] == "001_03.jpg" and len(on_disk["input"]["sha256"]) == 64
    assert (on_disk["input"]["width"], on_disk["input"]["height"]) == (1350, 1350)
    assert len(on_disk["identity"]["names"]) == len(on_disk["identity"]["coefficients"]) == 100
    assert len(on_disk["expression"]["names"]) == len(on_disk["expression"]["coefficients"]) == 53
    assert all(0.0 <= w <= 1.0 for w in on_disk["expression"]["coefficients"])
    assert np.allclose(np.asarray(on_disk["pose"]["rotation"]) @ np.asarray(on_disk["pose"]["rotation"]).T, np.eye(3), atol=1e-5)
    assert on_disk["camera"]["focal_px"] > 0 and on_disk["pose"]["translation_cm"][2] < 0  # in front of the camera
    assert set(on_disk["timings_s"]) >= {"load", "detect", "fit", "texture", "write", "total"}
    assert on_disk["metrics"]["landmark_error_iod"] < 0.05
    assert on_disk["detection"]["num_faces"] == 1
    # Provenance: what was detected, which model and correspondence, with which settings.
    assert np.asarray(on_disk["detection"]["landmarks_px"]).shape == (478, 2)
    assert len(on_disk["model"]["hash"]) == 64 and len(on_disk["fit"]["correspondence_sha256"]) == 64
    assert on_disk["fit"]["settings"]["identity_prior"] > 0 and "landmarks" in on_disk["fit"]["terms"]
    assert on_disk["texture"]["strategy"] == "generated" and on_disk["options"]["texture_size"] == 1024
    # The photometric fit's lighting: 27 SH coefficients, a plausible studio light (bright from the front).
    sh = np.asarray(on_disk["lighting"]["coefficients"])
    assert on_disk["lighting"]["model"] == "sh2-shading" and sh.shape == (9, 3)
    assert (sh[0] > 0).all() and on_disk["fit"]["settings"]["method"] == "landmarks+photometric"
    assert on_disk["metrics"]["photometric_rms"] < 0.1
    assert on_disk["material"]["skin"]["ior"] == 1.4


def test_fitted_light_is_not_negative_in_any_direction(bundle):
    """Light is never negative: the fitted shading does not go below zero for any normal, the back of the
    head included (photometric.light_positive_term, a penalty: a few percent of the mean shading remain;
    measured -5 %). Unconstrained, the fit of a face seen from the front trades the constant term for the
    camera-facing one, and its shading behind the head reaches -90 % of the mean."""
    from backend import render
    from backend.photometric import sphere_directions
    out, result, _ = bundle
    sh = torch.tensor(read_result(out)["lighting"]["coefficients"], dtype=torch.float32)
    shading = render.sh_shading(sphere_directions(256), sh)                        # (256, 3)
    assert float(shading.min()) > -0.1 * float(shading.mean()), shading.min(0).values


def test_every_listed_file_exists_with_its_format(bundle):
    out, result, _ = bundle
    roles = {}
    for entry in result["files"]:
        assert (out / entry["path"]).is_file(), entry
        roles.setdefault(entry["role"], []).append(entry)
    assert {e["tile"] for e in roles["diffuse"]} == {1001, 1002}
    assert {"mesh", "diffuse", "specular", "normal", "visibility", "preview", "photometric_preview"} <= set(roles)
    for entry in result["files"]:
        if entry["path"].endswith(".png") and "tile" in entry:
            img = cv2.imread(str(out / entry["path"]), cv2.IMREAD_UNCHANGED)
            assert img.shape[:2] == (1024, 1024)
            assert img.dtype == (np.uint16 if entry["role"] == "normal" else np.uint8)   # 16-bit: flat stays flat
            assert entry["colorspace"] == ("sRGB" if entry["role"] == "diffuse" else "Non-Color")
    # the de-lit default measures the detail normals (docs/maps.md): unit vectors about +Z, not all flat
    n = cv2.imread(str(out / "normal.1001.png"), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64) / 65535 * 2 - 1
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-3)
    assert np.abs(n.reshape(-1, 3).mean(0) - [0, 0, 1]).max() < 0.03
    assert (n[..., 2] < np.cos(np.radians(2.0))).mean() > 0.01
    assert {"roughness", "eyes"} <= set(roles)


def test_diffuse_has_no_holes_and_skin_colour(bundle):
    out, _, _ = bundle
    for tile in (1001, 1002):
        img = cv2.imread(str(out / f"diffuse.{tile}.png"))[..., ::-1].astype(float)
        assert (img.sum(-1) < 30).mean() < 0.001, f"black texels in tile {tile}"
    face = cv2.imread(str(out / "diffuse.1001.png"))[..., ::-1].astype(float)
    centre = face[400:624, 400:624].reshape(-1, 3).mean(0)
    assert centre[0] > centre[2], "skin should be redder than blue"
    vis = cv2.imread(str(out / "visibility.1001.png"), cv2.IMREAD_GRAYSCALE)
    assert vis.mean() > 40, "a frontal photo sees most of the face tile"


def test_mesh_npz_matches_the_contract(bundle):
    """Per photo only the fitted vertices; topology, UVs and expression deltas come from the model file."""
    out, result, _ = bundle
    m = np.load(out / "mesh.npz")
    assert sorted(m.files) == ["basis_vertices", "vertices"]
    b = load_bundle(out)
    t = b.topology
    v, basis, deltas = b.vertices, b.basis_vertices, t["expression_deltas"].astype(np.float32)
    assert v.shape == basis.shape == (26719, 3) and deltas.shape == (53, 26719, 3)
    w = np.asarray(result["expression"]["coefficients"], dtype=np.float32)
    assert np.abs(basis + np.einsum("k,kvc->vc", w, deltas) - v).max() < 0.01  # cm; float16 deltas
    assert list(t["expression_names"]) == result["expression"]["names"]
    assert t["face_sizes"].sum() == len(t["face_vertex_indices"]) == len(t["corner_uvs"])
    assert t["face_vertex_indices"].max() == 26718 and set(np.unique(t["face_sizes"])) == {3, 4}
    assert len(t["face_part"]) == len(t["face_sizes"]) and t["face_part"].max() < len(t["part_names"])
    assert set(t["part_names"]) >= {"skin", "eyes", "teeth", "lashes"}
    assert np.floor(t["corner_uvs"][:, 0]).min() == 0 and t["corner_uvs"][:, 1].min() >= 0


def test_non_image_files_are_at_most_1_mb(bundle):
    out, _, _ = bundle
    sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.suffix != ".png"}
    assert set(sizes) == {"mesh.npz", "result.json", MARKER_NAME}
    assert sum(sizes.values()) <= 1_000_000, sizes


def test_both_readers_read_the_same_bundle(bundle):
    """The backend's reader (bench) and the Blender side's (bundle_format) agree on every array."""
    out, _, _ = bundle
    b, e = load_bundle(out), bundle_format.read_bundle(out, want_deltas=True)
    assert np.array_equal(b.vertices, e.mesh.vertices) and np.array_equal(b.basis_vertices, e.mesh.basis_vertices)
    for key in ("face_sizes", "face_vertex_indices", "corner_uvs", "face_part", "expression_deltas"):
        ours = {"face_sizes": e.mesh.face_sizes, "face_vertex_indices": e.mesh.face_vertex_indices,
                "corner_uvs": e.mesh.corner_uvs, "face_part": e.mesh.face_part,
                "expression_deltas": e.mesh.expression_deltas}[key]
        assert np.array_equal(np.asarray(b.topology[key]), ours), key
    assert [str(x) for x in b.topology["part_names"]] == e.mesh.part_names
    assert {t: p.name for t, p in e.tiles("diffuse").items()} == {1001: "diffuse.1001.png", 1002: "diffuse.1002.png"}
    assert e.skin_ior == 1.4 and e.specular_level_scale == 1.0


def test_progress_is_monotonic_and_named(bundle):
    _, _, events = bundle
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [s for s, _ in events if True][0] == "load"
    assert {s for s, _ in events} == {"load", "detect", "fit", "texture", "write"}


def test_no_temporary_folders_left(bundle):
    out, _, _ = bundle
    assert leftovers(out.parent) == []


def make_bad_inputs(folder):
    good = PHOTO.read_bytes()
    files = {
        "text.jpg": ("NOT_AN_IMAGE", b"this is a text file, not a photo\n" * 20),
        "truncated.jpg": ("CORRUPT_IMAGE", good[: len(good) // 2]),
        "empty.jpg": ("EMPTY_FILE", b""),
        "tiny.png": ("IMAGE_TOO_SMALL", cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()),
        "huge.png": ("IMAGE_TOO_LARGE", png_with_size(20000, 20000)),
        "coffee.png": ("NO_FACE", cv2.imencode(".png", skdata.coffee()[..., ::-1])[1].tobytes()),
    }
    out = {}
    for name, (code, content) in files.items():
        (folder / name).write_bytes(content)
        out[name] = code
    return out


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, faces_dir):
    folder = tmp_path_factory.mktemp("bad")
    return folder, make_bad_inputs(folder)


@pytest.mark.parametrize("name", ["text.jpg", "truncated.jpg", "empty.jpg", "tiny.png", "huge.png", "coffee.png", "missing.jpg"])
def test_bad_input_gets_its_code_and_leaves_nothing(bad_inputs, tmp_path, name):
    folder, codes = bad_inputs
    expected = codes.get(name, "FILE_NOT_FOUND")
    with pytest.raises(LikenessError) as info:
        reconstruct(folder / name, tmp_path / "out", Options(device="cpu"))
    assert info.value.code == expected
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_folder_is_never_overwritten(tmp_path, faces_dir):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(LikenessError) as info:
        reconstruct(PHOTO, precious, Options(device="cpu"))
    assert info.value.code == "OUTPUT_EXISTS"
    with pytest.raises(LikenessError):  # not even with overwrite: it is not a bundle
        reconstruct(PHOTO, precious, Options(device="cpu", overwrite=True))
    assert (precious / "notes.txt").read_text() == "keep me" and len(list(precious.iterdir())) == 1


def test_cancel_during_texture_leaves_nothing(tmp_path, faces_dir):
    state = {"stage": None}

    def progress(stage, fraction):
        state["stage"] = stage

    def cancel_check():
        if state["stage"] == "texture":
            raise LikenessError("CANCELLED", "test cancel")

    with pytest.raises(LikenessError) as info:
        reconstruct(PHOTO, tmp_path / "out", Options(device="cpu"), progress, cancel_check)
    assert info.value.code == "CANCELLED"
    assert list(tmp_path.iterdir()) == []


def test_missing_face_model_is_a_clear_error(tmp_path, faces_dir):
    empty = tmp_path / "no-ict"
    empty.mkdir()
    with pytest.raises(LikenessError) as info:
        reconstruct(PHOTO, tmp_path / "out", Options(device="cpu", ict_dir=str(empty)))
    assert info.value.code == "ASSETS_MISSING" and str(empty) in info.value.message
    assert not (tmp_path / "out").exists()


def test_after_the_warm_up_a_first_request_loads_and_computes_nothing(tmp_path, faces_dir, monkeypatch):
    """The worker warms up before it says `ready`: the models are loaded and the UV layouts and skin rasters
    of its texture size computed already, so the first request (the one an artist waits for) pays none of
    it. The warm-up runs on two threads: MediaPipe's graphs made there serve a request on another."""
    from backend import albedo, dlib_dnn, face_descriptor, landmarks, pipeline, segmentation, skin_maps, texture
    texture._LAYOUTS.clear()
    face_descriptor._CACHE.clear()
    skin_maps._RASTERS.clear()
    albedo._MODELS.clear()
    landmarks._close_analyzers()
    segmentation._close_segmenters()
    pipeline.warm_up(Options(device="cpu", texture_size=512))

    def computed_in_the_request(*args, **kwargs):
        raise AssertionError("computed during the request, not by the warm-up")
    monkeypatch.setattr(texture, "_compute_uv_layout", computed_in_the_request)
    monkeypatch.setattr(skin_maps, "vertex_regions", computed_in_the_request)
    monkeypatch.setattr(landmarks, "FaceAnalyzer", computed_in_the_request)
    monkeypatch.setattr(segmentation, "Segmenter", computed_in_the_request)
    monkeypatch.setattr(dlib_dnn, "read_network", computed_in_the_request)
    monkeypatch.setattr(albedo, "AlbedoModel", computed_in_the_request)
    result = reconstruct(PHOTO, tmp_path / "out", Options(device="cpu", texture_size=512))
    assert result["texture"]["size"] == 512 and (tmp_path / "out" / "result.json").is_file()


def test_png_writes_keep_their_order_and_stop_at_a_cancel(tmp_path):
    """The bundle's PNGs are compressed on two threads: each file still holds its own image, they are written
    in order, and a cancel once the second is written stops the rest (the staged bundle is then removed whole)."""
    from backend.bundle import write_pngs
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    seen = []

    def cancel_check():
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        if len(seen[-1]) == 2:
            raise LikenessError("CANCELLED", "cancelled")
    with pytest.raises(LikenessError):
        write_pngs(tmp_path, [(f"{i}.png", lambda im=im: im) for i, im in enumerate(images)], cancel_check)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png"]
    assert ["0.png"] in seen   # checked between the two writes too
    for i in range(2):
        back = cv2.cvtColor(cv2.imread(str(tmp_path / f"{i}.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(back, images[i])

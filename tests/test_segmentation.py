"""Segmentation models set-up (backend/setup_assets.ensure_segmentation, segmentation_models.py)
and the per-photo masks of backend/segmentation.py on real London photos."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from backend import face_regions as fr
from backend.errors import LikenessError
from backend.imageio import load_photo
from backend.paths import segmentation_source_candidates
from backend.segmentation import SURE
from backend.segmentation_models import HAIR, MODELS, PERSON, SOURCE_COMMIT, find_prepared
from backend.setup_assets import ensure_segmentation, sha256_of

from tests.conftest import LONDON_NEUTRAL, LONDON_SMILING, REPO

SOURCE_DIR = REPO.parent / "shared" / "assets" / "mediapipe-segmentation"

# The forehead between the upper brow edges and the top of the face oval: brow tops image-left
# -> image-right, then the oval back over the top (MediaPipe indices).
FOREHEAD = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 284, 332, 297, 338, 10, 109, 67, 103, 54)
FRINGES = ("003", "143")             # London neutral: fringes down to the brows
NO_FRINGE = ("001", "012", "017")    # forehead clear (hair up or short)
CHEEK_POINTS = (50, 280, 205, 425)   # MediaPipe points on the cheeks, both sides


@pytest.fixture(scope="session")
def source_dir():
    if not all((SOURCE_DIR / m.source_name).is_file() for m in MODELS):
        pytest.skip(f"MediaPipe segmentation models not found at {SOURCE_DIR}")
    return SOURCE_DIR


@pytest.fixture(scope="session")
def prepared_dir(source_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmentation-cache")
    ensure_segmentation(source_dir, folder)
    return folder


@pytest.fixture(scope="session")
def segment(faces_dir, prepared_dir):
    """segment(path) -> (Photo, FaceDetection, Masks), computed once per photo."""
    from backend.landmarks import get_analyzer
    from backend.segmentation import get_segmenter

    try:
        analyzer = get_analyzer()
    except LikenessError as err:
        if err.code == "ASSETS_MISSING":
            pytest.skip(f"MediaPipe face landmarker not installed ({err.message})")
        raise
    segmenter = get_segmenter(prepared_dir)
    done = {}

    def run(path):
        if path not in done:
            photo = load_photo(path)
            face = analyzer.detect(photo)
            done[path] = (photo, face, segmenter.segment(photo, face))
        return done[path]
    return run


def _data(buffer) -> bytes:
    return b"" if buffer.data is None else bytes(buffer.data)


def _region(photo, face, loop) -> np.ndarray:
    """Pixels fully inside the polygon `loop` of the face's landmarks."""
    return fr.polygon_mask((photo.height, photo.width), face.points, [loop]) > 0.99


# -- polygons --------------------------------------------------------------------------------------

def test_polygons_follow_mediapipe_connections():
    """The index loops of face_regions.py are the installed mediapipe's contour connections."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections as C

    def edges(loop):
        return {frozenset(e) for e in zip(loop, loop[1:] + loop[:1])}

    def package(name):
        return {frozenset((c.start, c.end)) for c in getattr(C, f"FACE_LANDMARKS_{name}")}

    assert edges(fr.FACE_OVAL) == package("FACE_OVAL")
    for ours, theirs in ((fr.LEFT_EYE, "LEFT_EYE"), (fr.RIGHT_EYE, "RIGHT_EYE"),
                         (fr.LEFT_BROW, "LEFT_EYEBROW"), (fr.RIGHT_BROW, "RIGHT_EYEBROW")):
        # the two chains of each part, joined at their ends (brows: at both ends)
        assert package(theirs) <= edges(ours), theirs
        assert len(edges(ours) - package(theirs)) == (2 if "BROW" in theirs else 0), theirs
    inner_lips = {e for e in package("LIPS") if not e & {61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291,
                                                          185, 40, 39, 37, 0, 267, 269, 270, 409}}
    assert edges(fr.INNER_MOUTH) == inner_lips


def test_polygon_mask_grows_and_shrinks():
    square = np.array([[20, 20], [80, 20], [80, 80], [20, 80]], np.float32)
    loop = [(0, 1, 2, 3)]
    plain, grown, shrunk = (fr.polygon_mask((100, 100), square, loop, grow=g) for g in (0.0, 5.0, -5.0))
    assert plain.dtype == np.float32 and 0.0 <= plain.min() and plain.max() <= 1.0
    assert grown.sum() > plain.sum() > shrunk.sum()
    assert grown[50, 16] == 1.0 and plain[50, 16] == 0.0      # 4 px outside the edge
    assert shrunk[50, 23] == 0.0 and plain[50, 23] == 1.0     # 3 px inside the edge


# -- set-up ----------------------------------------------------------------------------------------

def test_source_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LIKENESS_SEGMENTATION_DIR", str(tmp_path / "env"))
    assert segmentation_source_candidates(tmp_path / "given") == [tmp_path / "given"]
    found = segmentation_source_candidates()
    assert found[0] == tmp_path / "env"
    assert REPO.parent / "shared" / "assets" / "mediapipe-segmentation" in found


def test_setup_writes_the_recorded_checksums_and_is_idempotent(source_dir, tmp_path):
    paths = ensure_segmentation(source_dir, tmp_path)
    assert set(paths) == {"hair", "person"}
    for model in MODELS:
        assert sha256_of(paths[model.key]) == model.prepared_sha256
    before = {k: p.stat() for k, p in paths.items()}
    # again, even without any source: good copies are kept as they are
    empty = tmp_path / "no-source"
    empty.mkdir()
    assert ensure_segmentation(empty, tmp_path) == paths
    for key, path in paths.items():
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[key].st_ino, before[key].st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([HAIR.prepared_name, PERSON.prepared_name, "no-source"])
    assert find_prepared(HAIR, tmp_path) == paths["hair"]


def test_setup_replaces_a_damaged_prepared_copy(source_dir, tmp_path):
    target = tmp_path / HAIR.prepared_name
    target.write_bytes(b"not a model")
    with pytest.raises(LikenessError) as err:
        find_prepared(HAIR, tmp_path)            # a bad copy is not used ...
    assert err.value.code == "ASSETS_MISSING" and "backend setup" in err.value.message
    ensure_segmentation(source_dir, tmp_path)    # ... and set-up makes it again
    assert sha256_of(target) == HAIR.prepared_sha256


def test_setup_refuses_a_source_with_a_wrong_checksum(source_dir, tmp_path):
    copy = tmp_path / "source"
    shutil.copytree(source_dir, copy)
    damaged = copy / HAIR.source_name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    out = tmp_path / "cache"
    with pytest.raises(LikenessError) as err:
        ensure_segmentation(copy, out)
    assert err.value.code == "ASSETS_MISSING"
    assert str(damaged) in err.value.message and HAIR.source_sha256 in err.value.message
    assert SOURCE_COMMIT in err.value.message and HAIR.repo_path in err.value.message
    assert not (out / HAIR.prepared_name).exists()
    assert not any(p.name.endswith(".partial") for p in out.rglob("*"))


def test_setup_without_source_says_where_it_comes_from(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LikenessError) as err:
        ensure_segmentation(empty, tmp_path / "cache")
    assert err.value.code == "ASSETS_MISSING"
    message = err.value.message
    assert str(empty) in message and "google-ai-edge/mediapipe" in message and SOURCE_COMMIT in message
    assert HAIR.repo_path in message and "LIKENESS_SEGMENTATION_DIR" in message


def test_prepared_hair_model_reads_rgb_only(source_dir, prepared_dir):
    """The prepared hair model is the published one with the first kernel's 4th input channel
    (the previous frame's mask) dropped, every other weight unchanged, and metadata added."""
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    def load(path):
        data = path.read_bytes()
        return tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(data, 0))

    for model in MODELS:
        src, out = load(source_dir / model.source_name), load(prepared_dir / model.prepared_name)
        g_src, g_out = src.subgraphs[0], out.subgraphs[0]
        assert list(g_out.tensors[g_out.inputs[0]].shape)[-1] == 3
        assert [m.name for m in out.metadata] == [b"TFLITE_METADATA"]
        assert len(out.buffers) == len(src.buffers) + 1
        kernel_buffer = g_src.tensors[1].buffer if model is HAIR else None
        for i, (a, b) in enumerate(zip(src.buffers, out.buffers)):
            if i != kernel_buffer:
                assert _data(a) == _data(b), (model.key, i)
    src, out = load(source_dir / HAIR.source_name), load(prepared_dir / HAIR.prepared_name)
    k_src, k_out = src.subgraphs[0].tensors[1], out.subgraphs[0].tensors[1]
    assert k_src.name == k_out.name == b"conv2d/Kernel"
    assert list(k_src.shape) == [8, 2, 2, 4] and list(k_out.shape) == [8, 2, 2, 3]
    w_src = np.frombuffer(bytes(src.buffers[k_src.buffer].data), "<f4").reshape(8, 2, 2, 4)
    w_out = np.frombuffer(bytes(out.buffers[k_out.buffer].data), "<f4").reshape(8, 2, 2, 3)
    assert np.array_equal(w_out, w_src[..., :3])


# -- masks -----------------------------------------------------------------------------------------

def test_masks_are_maps_on_the_analysis_grid(segment):
    photo, _, masks = segment(LONDON_NEUTRAL / "001_03.jpg")
    assert masks.scale == photo.analysis_scale == 1.0  # 1350 px: the analysis copy is the photo
    for name in ("hair", "person", "skin", "face_region"):
        m = getattr(masks, name)
        assert m.shape == photo.analysis.shape[:2] and m.dtype == np.float32, name
        assert 0.0 <= m.min() and m.max() <= 1.0, name
    assert masks.skin.max() == 1.0 and np.all(masks.skin <= masks.face_region + 1e-6)


def test_segmenter_is_created_once(prepared_dir, faces_dir):
    from backend.segmentation import get_segmenter
    assert get_segmenter(prepared_dir) is get_segmenter(prepared_dir)


@pytest.mark.parametrize("stem", FRINGES)
def test_fringe_is_hair_not_skin(segment, stem):
    photo, face, masks = segment(LONDON_NEUTRAL / f"{stem}_03.jpg")
    forehead = _region(photo, face, FOREHEAD)
    assert forehead.sum() > 10_000
    hair, skin = masks.hair[forehead], masks.skin[forehead]
    # measured 0.85 / 0.80 and 0.81 / 0.74: skin shows through a few gaps between the strands
    assert np.mean(hair > 0.5) > 0.75
    assert np.mean(skin == 0.0) > 0.7
    assert np.all(skin[hair > SURE] == 0.0)


def test_clear_forehead_is_skin(segment):
    for stem in NO_FRINGE:
        photo, face, masks = segment(LONDON_NEUTRAL / f"{stem}_03.jpg")
        forehead = _region(photo, face, FOREHEAD)
        assert np.mean(masks.hair[forehead] > 0.5) < 0.05, stem
        assert masks.skin[forehead].mean() > 0.6, stem         # measured 0.75-0.79 (brow margins are 0)


@pytest.mark.parametrize("path", [LONDON_NEUTRAL / "001_03.jpg", LONDON_NEUTRAL / "017_03.jpg",
                                  LONDON_NEUTRAL / "099_03.jpg", LONDON_SMILING / "099_08.jpg"],
                         ids=lambda p: p.stem)
def test_skin_covers_cheeks_not_eyes_brows_mouth_background(segment, path):
    photo, face, masks = segment(path)
    shape = (photo.height, photo.width)
    iod = fr.inter_ocular(face.points)
    cheeks = np.zeros(shape, np.uint8)
    for i in CHEEK_POINTS:
        cv2.circle(cheeks, tuple(int(v) for v in np.rint(face.points[i])), int(0.08 * iod), 1, -1)
    assert np.mean(masks.skin[cheeks > 0] > 0.9) > 0.98
    for loop in (fr.LEFT_EYE, fr.RIGHT_EYE, fr.LEFT_BROW, fr.RIGHT_BROW):
        inside = _region(photo, face, loop)
        assert inside.any() and masks.skin[inside].max() == 0.0, loop[:3]
    mouth = _region(photo, face, fr.INNER_MOUTH)          # a closed mouth leaves a sliver or nothing
    assert not mouth.any() or masks.skin[mouth].max() == 0.0
    # the photo's top corners are studio background
    corners = np.zeros(shape, bool)
    corners[: shape[0] // 8, : shape[1] // 8] = corners[: shape[0] // 8, -shape[1] // 8:] = True
    assert masks.skin[corners].max() == 0.0 and masks.person[corners].max() < 0.1
    assert masks.person[cheeks > 0].min() > 0.9


def test_open_mouth_is_cut_out(segment):
    photo, face, masks = segment(LONDON_SMILING / "099_08.jpg")
    mouth = _region(photo, face, fr.INNER_MOUTH)
    assert mouth.sum() > 2000                   # teeth show: measured 4592 px
    assert masks.skin[mouth].max() == 0.0



def test_face_window_keeps_a_small_face_at_full_detail(segment, prepared_dir):
    """The fringe photo pasted into a canvas 3x its size (a wide shot): with the face window the
    hair mask matches the original's (measured IoU 0.96; the whole image alone gives 0.77)."""
    from backend.imageio import photo_from_array
    from backend.landmarks import get_analyzer
    from backend.segmentation import get_segmenter

    photo, face, masks = segment(LONDON_NEUTRAL / f"{FRINGES[0]}_03.jpg")
    h, w = photo.height, photo.width
    canvas = np.empty((3 * h, 3 * w, 3), np.uint8)
    canvas[:] = np.median(photo.rgb[:20].reshape(-1, 3), axis=0).astype(np.uint8)
    canvas[h:2 * h, w:2 * w] = photo.rgb
    wide = photo_from_array(canvas, "wide.png")
    wide_masks = get_segmenter(prepared_dir).segment(wide, get_analyzer().detect(wide))
    assert wide_masks.hair.shape == wide.analysis.shape[:2] and wide_masks.scale < 0.5  # 4050 px: on the 1600 px grid
    hair = cv2.resize(wide_masks.hair, (3 * w, 3 * h), interpolation=cv2.INTER_LINEAR)[h:2 * h, w:2 * w]
    x0, y0, x1, y1 = (int(v) for v in face.box)
    head = (slice(max(0, y0 - (y1 - y0) // 2), y1), slice(x0, x1))
    a, b = hair[head] > 0.5, masks.hair[head] > 0.5
    assert np.count_nonzero(a & b) / np.count_nonzero(a | b) > 0.9

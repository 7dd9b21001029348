"""Geometry v1 (issue #11) on the real model and real renders: the eye and mouth measures of the bench
(eyelid opening, mouth corners) and their vertices, the pipeline closing a closed eye and following a
crooked mouth, and a profile at 80 degrees of yaw reconstructing into a bundle (about a minute on 2 cores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import WILD_DEV


def _model():
    from backend.paths import find_ict_dir
    try:
        find_ict_dir()
    except Exception:
        pytest.skip("no ICT-FaceKit assets")
    from backend.facemodel import load_face_model
    return load_face_model(None, "cpu")


@pytest.fixture(scope="module")
def model():
    return _model()


def _shape(model, **weights) -> np.ndarray:
    e = torch.zeros(model.num_expression)
    for name, w in weights.items():
        e[model.expression_names.index(name)] = w
    with torch.no_grad():
        return model.vertices(torch.zeros(model.num_identity), e).numpy()


def test_lid_and_mouth_corner_vertices_are_what_the_docs_say(model):
    """The constants re-derived from the model: the upper lid centre is the face vertex eyeBlink moves
    furthest, the lower one the vertex below it closest to it with the eye closed; closing one eye
    changes that eye's opening only; a one-sided smile moves that side's corner only."""
    from backend.bench.metrics import EYELID_VERTICES, MOUTH_CORNER_VERTICES, eyelid_openings
    from backend.facemodel import NARROW_FACE_LAST_VERTEX
    neutral = _shape(model)
    face = np.arange(NARROW_FACE_LAST_VERTEX + 1)
    open_mm = 10 * eyelid_openings(neutral)
    assert np.all((open_mm > 9) & (open_mm < 14)), open_mm
    for j, side in enumerate(("_L", "_R")):
        closed = _shape(model, **{"eyeBlink" + side: 1.0})
        moved = np.linalg.norm(closed[face] - neutral[face], axis=1)
        upper = int(moved.argmax())
        below = face[neutral[face, 1] < neutral[upper, 1] - 0.7]
        lower = int(below[np.linalg.norm(closed[below] - closed[upper], axis=1).argmin()])
        assert EYELID_VERTICES[j].tolist() == [upper, lower], side
        now = 10 * eyelid_openings(closed)
        assert now[j] < 3.0 and abs(now[1 - j] - open_mm[1 - j]) < 0.05, (side, now)
        smile = _shape(model, **{"mouthSmile" + side: 1.0})
        corner_moves = np.linalg.norm(smile[MOUTH_CORNER_VERTICES] - neutral[MOUTH_CORNER_VERTICES], axis=1)
        assert corner_moves[j] > 0.5 and corner_moves[1 - j] < 0.05, (side, corner_moves)
    # The corners are the mouth's outermost points on their side (ICT's L is +x).
    assert neutral[MOUTH_CORNER_VERTICES[0], 0] > 2 and neutral[MOUTH_CORNER_VERTICES[1], 0] < -2


def test_eye_and_mouth_errors_on_known_shapes(model):
    from backend.bench.synthetic import eyes_mouth_errors_mm
    neutral = _shape(model)
    wink = _shape(model, eyeBlink_L=1.0, mouthSmile_L=0.8)
    same = eyes_mouth_errors_mm(wink, wink)
    assert np.allclose(same["eye_closure_mm"], 0) and np.allclose(same["mouth_corner_mm"], 0, atol=1e-6)
    e = eyes_mouth_errors_mm(neutral, wink)
    assert e["eye_closure_mm"][0] > 8 and e["eye_closure_mm"][1] < 0.05
    assert e["mouth_corner_mm"][0] > 5 * max(e["mouth_corner_mm"][1], 0.1)
    # A similarity (scale, turn, shift) of the truth changes no mouth-corner error; the opening scales.
    c, s = np.cos(0.3), np.sin(0.3)
    moved = 1.1 * wink @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T + np.array([1.0, -2.0, 3.0])
    m = eyes_mouth_errors_mm(moved, wink)
    assert np.allclose(m["mouth_corner_mm"], 0, atol=1e-4)


def test_eyes_mouth_set_keeps_the_heads_and_closes_eyes(model, tmp_path):
    """The same head as the random set (pose, lens, light: only the expression differs); every head has a
    closed eye and a one-sided mouth shape."""
    from backend.bench.synthetic import make_sample
    for i in range(4):
        a = make_sample(i, 5, model, [], [], tmp_path / "a", side=128)
        b = make_sample(i, 5, model, [], [], tmp_path / "b", side=128, expression_set="eyes_mouth")
        for k in ("yaw_deg", "pitch_deg", "roll_deg", "focal_35mm", "face_fraction", "background"):
            assert a.params[k] == b.params[k]
        ex = b.params["expressions"]
        assert max(ex.get("eyeBlink_L", 0), ex.get("eyeBlink_R", 0)) >= 0.7
        assert not any(n.startswith(("eyeWide", "eyeSquint")) for n in ex)
        mouth = {n: w for n, w in ex.items() if n.startswith("mouth")}
        left = sum(w for n, w in mouth.items() if n.endswith("_L") or n == "mouthLeft")
        right = sum(w for n, w in mouth.items() if n.endswith("_R") or n == "mouthRight")
        assert abs(left - right) > 0.25, mouth


def _reconstruct(sample, folder):
    from backend.bundle import is_bundle, load_bundle
    from backend.pipeline import Options, reconstruct
    out = folder / sample.name
    result = reconstruct(sample.image, out, Options(device="cpu", texture_size=512, overwrite=True))
    assert is_bundle(out)
    return result, load_bundle(out)


def test_the_pipeline_closes_a_closed_eye(model, tmp_path):
    """A rendered head (seed 101, index 0) with its right eye closed (opening 4.7 mm, the left 8.5 mm) and a
    one-sided smile: the fitted head closes that eye to within 40 % of the mean face's error (measured:
    1.1 mm against 6.8 mm; 4.3 mm when no expression is estimated), and its mouth corners are well closer
    to the truth than the mean face's. (The fit does not keep the wink one-sided: it half-closes both
    eyes; docs/bench.md, eyes and mouth corners.)"""
    from backend.bench.synthetic import eyes_mouth_errors_mm, load_backgrounds, make_sample
    s = make_sample(0, 101, model, [], load_backgrounds(WILD_DEV), tmp_path, expression_set="eyes_mouth")
    truth = np.load(s.truth)["vertices"]
    _, bundle = _reconstruct(s, tmp_path / "bundles")
    fit = eyes_mouth_errors_mm(bundle.vertices, truth)
    mean = eyes_mouth_errors_mm(model.neutral.numpy(), truth)
    closed = 1                                            # ICT's R
    assert fit["true_opening_mm"][closed] < 5.0 < fit["true_opening_mm"][1 - closed]
    assert fit["eye_closure_mm"][closed] < 0.4 * mean["eye_closure_mm"][closed], (fit, mean)
    assert np.mean(fit["mouth_corner_mm"]) < 0.6 * np.mean(mean["mouth_corner_mm"]), (fit, mean)


def test_an_80_degree_profile_reconstructs_into_a_bundle(model, tmp_path):
    """MediaPipe finds this 80-degree profile (many it does not: NO_FACE, see docs/bench.md); the fit must
    then not be refused for the profile's small projected inter-ocular distance (it was: FIT_FAILED), nor
    the photo turned, and the head must be turned as the truth is (within 20 degrees)."""
    from backend.bench.synthetic import load_backgrounds, make_sample
    if not WILD_DEV.is_dir():
        pytest.skip(f"no wild_dev photos at {WILD_DEV} (the sample's background)")
    s = make_sample(0, 11, model, [], load_backgrounds(WILD_DEV), tmp_path, yaw_deg=-80.0)
    result, bundle = _reconstruct(s, tmp_path / "bundles")
    assert result["input"]["rotation_deg"] == 0, result["warnings"]
    assert result["pose"]["yaw_deg"] < -60, result["pose"]
    rel = np.asarray(result["pose"]["rotation"]).T @ np.load(s.truth)["rotation"]
    assert np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))) < 20

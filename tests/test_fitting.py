"""Fitting v0 on real photos: reprojection error on every London photo, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.camera import Intrinsics
from backend.facemodel import load_face_model
from backend.fitting import Correspondence, expression_init, fit_landmarks, wing_loss
from backend.imageio import load_photo
from backend.landmarks import get_analyzer

from tests.conftest import LONDON_NEUTRAL, LONDON_SMILING


def fit_photo(path):
    photo = load_photo(path)
    det = get_analyzer().detect(photo)
    k = Intrinsics.for_image(photo.width, photo.height, photo.focal_35mm)
    return det, fit_landmarks(load_face_model(), Correspondence.load(), det.points, k, det.blendshapes)


def test_every_london_photo_fits_within_5_percent_of_the_inter_ocular_distance(faces_dir):
    photos = sorted(LONDON_NEUTRAL.glob("*.jpg"))
    assert len(photos) >= 80
    errors = {p.name: fit_photo(p)[1].metrics["landmark_error_iod"] for p in photos}
    worst = max(errors, key=errors.get)
    print(f"London neutral: mean {np.mean(list(errors.values())):.2%}, worst {worst} {errors[worst]:.2%}")
    assert errors[worst] < 0.05


def test_smiles_are_fitted_with_smile_expressions(faces_dir):
    det, fit = fit_photo(LONDON_SMILING / "001_08.jpg")
    names = load_face_model().expression_names
    smile = np.mean([float(fit.expression[names.index(n)]) for n in ("mouthSmile_L", "mouthSmile_R")])
    assert fit.metrics["landmark_error_iod"] < 0.05 and smile > 0.2


def test_fit_is_deterministic(faces_dir):
    _, a = fit_photo(LONDON_NEUTRAL / "002_03.jpg")
    _, b = fit_photo(LONDON_NEUTRAL / "002_03.jpg")
    assert torch.equal(a.identity, b.identity) and torch.equal(a.expression, b.expression)
    assert torch.equal(a.translation, b.translation)


def test_identity_stays_plausible_under_the_prior(faces_dir):
    _, fit = fit_photo(LONDON_NEUTRAL / "003_03.jpg")
    assert float(fit.identity.abs().max()) < 4.0  # N(0, 1) coefficients


def test_wing_loss_shape():
    r = torch.tensor([0.0, 1.0, 10.0, 20.0])
    out = wing_loss(r, 10.0, 2.0)
    assert out[0] == 0 and torch.all(out[1:] > 0)
    assert torch.isclose(out[3] - out[2], torch.tensor(10.0))  # linear beyond w


def test_blendshape_names_map_onto_ict():
    model = load_face_model()
    init = expression_init(model, {"eyeBlinkLeft": 0.9, "cheekPuff": 0.4, "jawOpen": 0.7})
    names = model.expression_names
    assert init[names.index("eyeBlink_L")] == pytest.approx(0.9)
    assert init[names.index("cheekPuff_R")] == pytest.approx(0.4)
    assert init[names.index("jawOpen")] == pytest.approx(0.7) and init[names.index("eyeBlink_R")] == 0

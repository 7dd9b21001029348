"""Fit confidence: a scale for landmark errors that does not shrink as the head turns (a good fit of a
turned head is not refused), and a refusal (FIT_FAILED, nothing written) when the fit lands on the wrong
part of the photo."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backend import pipeline
from backend.errors import LikenessError
from backend.fitting import OUTER_EYE_CORNERS, frontal_inter_ocular_px
from backend.photometric import CONFIDENCE_RAMPS, fit_confidence
from backend.pipeline import Options, reconstruct

from tests.conftest import LONDON_NEUTRAL
from tests.test_fitting import turned_head_context


def test_the_landmark_error_scale_does_not_shrink_as_the_head_turns():
    frontal, turned = turned_head_context(0.0), turned_head_context(55.0)
    a, b = OUTER_EYE_CORNERS
    seen = [float((c.landmarks_px()[a] - c.landmarks_px()[b]).norm()) for c in (frontal, turned)]
    scale = [frontal_inter_ocular_px(c.landmarks_model(), c.rotation(), c["translation"], c.intrinsics)
             for c in (frontal, turned)]
    assert seen[1] < 0.75 * seen[0]                        # what the photo shows shrinks ...
    assert scale[1] > 0.9 * scale[0]                       # ... the confidence's scale hardly does (the eyes
                                                           # of the turned head are a little farther away)
    assert abs(scale[0] / seen[0] - 1.0) < 0.03            # and it is the frontal inter-ocular distance


def test_confidence_is_the_weakest_residual_on_its_ramp():
    good = {key: lo for key, (lo, hi) in CONFIDENCE_RAMPS.items()}
    assert fit_confidence(good)["score"] == 1.0
    bad = dict(good, photometric_rms=CONFIDENCE_RAMPS["photometric_rms"][1])
    conf = fit_confidence(bad)
    assert conf["score"] == 0.0 and conf["weakest"] == "photometric_rms"


def test_trust_needs_the_head_off_the_face_or_two_bad_appearance_residuals():
    """Warning and refusal both go by the trust: one bad appearance residual alone (a sharpened, saturated
    JPEG; a small smiling face's render chip) lowers the score and nothing else."""
    good = {key: lo for key, (lo, hi) in CONFIDENCE_RAMPS.items()}
    worst = {key: hi for key, (lo, hi) in CONFIDENCE_RAMPS.items()}
    one_look = dict(good, photometric_rms=worst["photometric_rms"])
    two_looks = dict(one_look, identity_distance=0.73)                          # 0.2 on its ramp
    off_face = dict(good, photometric_skin_share=worst["photometric_skin_share"])
    conf = fit_confidence(one_look)
    assert conf["score"] == 0.0 and conf["trust"] == 1.0
    assert pipeline.confidence_warning(conf) is None
    conf = fit_confidence(two_looks)
    assert conf["trust"] == pytest.approx(0.2) and conf["trust_set_by"] == "identity_distance"  # second-weakest
    assert "trust 0.20" in pipeline.confidence_warning(conf)
    conf = fit_confidence(off_face)
    assert conf["trust"] == 0.0 and conf["trust_set_by"] == "photometric_skin_share"
    assert pipeline.confidence_warning(conf) is not None


def test_a_sharpened_saturated_wild_photo_is_fitted_with_a_warning_not_refused(tmp_path, faces_dir):
    """wild_dev 290 (robustness only): a clear frontal face whose colour residual is at its limit from
    per-pixel texture (JPEG sharpening) no smooth albedo model can have; it was refused as FIT_FAILED."""
    result = reconstruct(faces_dir / "wild_dev" / "290.jpg", tmp_path / "290", Options(device="cpu"))
    assert (tmp_path / "290" / "result.json").is_file()
    assert result["metrics"]["confidence"]["parts"]["landmark_error_frontal_iod"] > 0.8
    assert any("trust" in w for w in result["warnings"])         # a cap's shadow, colour and outliers both weak


def test_the_demo_photo_is_fitted_without_a_confidence_warning():
    """The embedded demo photo (a small, smiling face: its render chip's identity distance is about 0.63,
    one weak appearance residual) is a good fit and must not greet every new user with a warning."""
    from backend.albedo import load_albedo_model
    from backend.bench.partial_views import fitted_photo
    from backend.cli import demo_photo
    from backend.facemodel import load_face_model
    _, obs, fit = fitted_photo(demo_photo(), load_face_model(), pipeline.load_correspondence(), load_albedo_model())
    conf = fit.metrics["confidence"]
    print(conf)
    assert conf["trust"] >= pipeline.WARN_CONFIDENCE, conf
    assert not any("trust" in w for w in pipeline.collect_warnings(obs, fit))


@pytest.fixture(scope="module")
def good_result(tmp_path_factory, faces_dir):
    return reconstruct(LONDON_NEUTRAL / "003_03.jpg", tmp_path_factory.mktemp("conf") / "003_03", Options(device="cpu"))


def test_a_clear_photo_is_fitted_with_high_confidence(good_result):
    conf = good_result["metrics"]["confidence"]
    assert conf["score"] > 0.6, conf
    assert not any("trust" in w for w in good_result.get("warnings", []))


def test_a_fit_on_the_wrong_region_is_refused_and_nothing_is_written(tmp_path, faces_dir, monkeypatch):
    """A detector mistake, injected: the landmarks one face-width to the side, on the background and the
    hair. The fit follows them; the photo's pixels there are not that face's skin, so the photometric
    residual and the identity distance say so, and the pipeline refuses instead of writing a wrong head."""
    real_observe = pipeline.observe

    def misplaced(photo, analyzer):
        obs = real_observe(photo, analyzer)
        det = obs.detection
        shift = np.array([1.3 * (det.box[2] - det.box[0]), 0.0])
        obs.detection = dataclasses.replace(det, points=det.points + shift)
        return obs

    monkeypatch.setattr(pipeline, "observe", misplaced)
    out = tmp_path / "wrong"
    with pytest.raises(LikenessError) as err:
        reconstruct(LONDON_NEUTRAL / "003_03.jpg", out, Options(device="cpu"))
    assert err.value.code == "FIT_FAILED"
    assert not out.exists() and not any(tmp_path.iterdir())

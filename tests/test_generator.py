"""The UV texture generator (backend/generator): its weights load and complete a held-out head's texture
deterministically, cancel stops it between steps, every step reports progress and a preview, the CUDA path
(skipped without CUDA), and on a held-out identity seen from the side it fills the hidden far side better
than v0's mirror and push-pull fill and the albedo-model fill."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from backend.colour import linear_to_srgb
from backend.errors import LikenessError
from backend.scene import Hooks

SIZE = 256
HELD_OUT = "063"          # one of weights/albedo_model.npz's held-out identities
DONOR = "099"             # another held-out identity: the hair occluder's source


@pytest.fixture(scope="module")
def generator():
    from backend.generator.weights import load_generator
    gen = load_generator()
    if gen is None:
        pytest.fail("weights/generator.npz is missing")
    return gen


@pytest.fixture(scope="module")
def scene(faces_dir):
    """A held-out identity's studio head, drawn at yaw 60 (its left side hidden) under a hard light with a
    donor's hair over it, then through the pipeline's segmentation and photometric fit."""
    from backend.albedo import load_albedo_model
    from backend.bench import partial_views as pv
    from backend.facemodel import load_face_model
    from backend.pipeline import load_correspondence
    with np.load("weights/albedo_model.npz") as z:
        assert HELD_OUT in {str(x) for x in z["held_out"]} and DONOR in {str(x) for x in z["held_out"]}
    model, corr, albedo = load_face_model(), load_correspondence(), load_albedo_model()
    london = faces_dir / "london" / "neutral"
    head = pv.studio_head(london / f"{HELD_OUT}_03.jpg", model, corr, albedo)
    donor = pv.studio_head(london / f"{DONOR}_03.jpg", model, corr, albedo)
    spec = pv.random_view(np.random.default_rng([7, 63]), 1, yaw=60.0, occluders=True, hard_light=1.0)
    spec = dataclasses.replace(spec, hair_donor=0, hand=None)
    view = pv.make_view(model, corr, head, spec, [donor])
    obs, fit = pv.observe_view(model, corr, head, view, albedo)
    return model, head, obs, fit


def generate(scene, hooks=None, **settings):
    from backend.generator import DEFAULT_SETTINGS, generated_texture
    model, _, obs, fit = scene
    return generated_texture(obs, fit, model, SIZE, hooks, settings=dataclasses.replace(DEFAULT_SETTINGS, **settings))


def layout(tex) -> np.ndarray:
    return np.concatenate([tex.maps["diffuse"][t] for t in (1001, 1002)], axis=1)


def test_weights_load_and_complete_a_skin_texture_deterministically(generator, scene):
    from backend.generator.conditions import RES, mirror_map
    assert generator.path.stat().st_size < 50 << 20
    assert generator.meta.get("stage2_steps", 0) > 0
    a, b, c = generate(scene), generate(scene), generate(scene, seed=1)
    assert a.strategy == "generated" and a.info["generator"]["weights_sha256"] == generator.sha256
    la, lb, lc = layout(a), layout(b), layout(c)
    assert np.isfinite(la).all()
    assert np.array_equal(la, lb)                          # same seed, same bytes
    assert not np.array_equal(la, lc)                      # the seed matters ...
    assert np.abs(la - lc).mean() < 0.02                   # ... but the condition decides
    # Complete: every texel of the layout has a skin colour, the unseen ones included.
    model = scene[0]
    cov = torch.nn.functional.interpolate(mirror_map(model, RES).coverage[:, None], size=SIZE)[:, 0] > 0.5
    cov = np.concatenate([cov[0].numpy(), cov[1].numpy()], axis=1)
    vis = np.concatenate([a.maps["visibility"][t] for t in (1001, 1002)], axis=1)
    unseen = cov & (vis < 0.05)
    unseen[:, SIZE:][: SIZE // 3, : SIZE // 3] = False     # the mouth socket's corner of tile 1002
    assert unseen.sum() > 0.3 * cov.sum()
    srgb = linear_to_srgb(la[unseen])
    r, g, bl = np.median(srgb, axis=0)
    assert r > g > bl and 0.35 < r < 0.95 and r - bl > 0.08, (r, g, bl)
    assert (srgb.min(1) > 0.02).mean() > 0.99              # no black holes


def test_the_same_bytes_at_any_load(generator, scene, monkeypatch):
    """The texture stage takes its thread count from the load average (threads.idle_cpu_threads); the
    generated map must not change with it (it did: the network's convolutions sum by thread)."""
    import backend.texture as texture_module
    out = []
    for n in (1, 2):
        monkeypatch.setattr(texture_module, "idle_cpu_threads", lambda n=n: n)
        out.append(layout(generate(scene)))
    assert np.array_equal(out[0], out[1])


def test_cancel_stops_between_steps(generator, scene):
    previews, calls = [], {"n": 0}

    def cancel_check():
        if len(previews) >= 2:
            raise LikenessError("CANCELLED", "cancelled by the test")
        calls["n"] += 1

    with pytest.raises(LikenessError) as err:
        generate(scene, Hooks(cancel_check, lambda f: None, lambda n, im: previews.append(n)))
    assert err.value.code == "CANCELLED"
    assert previews == ["generator", "generator"]          # stopped at the first check after step 2 of 6


def test_progress_and_a_preview_every_step(generator, scene):
    events, previews = [], []
    steps = 4
    generate(scene, Hooks(lambda: None, events.append, lambda n, im: previews.append((n, im))), steps=steps)
    assert [n for n, _ in previews] == ["generator"] * steps
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[1] == 2 * im.shape[0] for _, im in previews)
    assert events == sorted(events) and events[-1] == pytest.approx(1.0)
    # One progress report per step in the generator's share of the stage.
    assert sum(1 for f in events if 0.45 < f <= 0.85) >= steps


def test_previews_reach_the_worker_protocol(generator, scene):
    """The stage's previews go out as `preview` events (worker.py) with the stage and name."""
    from backend.pipeline import Run
    from backend.worker import png_data
    seen = []
    run = Run(None, None, lambda stage, name, img: seen.append((stage, name, png_data(img))))
    with run.stage("texture") as hooks:
        generate(scene, hooks, steps=3)
    assert [(s, n) for s, n, _ in seen] == [("texture", "generator")] * 3
    assert all(len(p) > 100 for _, _, p in seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path(generator, scene):
    model, head, obs, fit = scene
    from backend.facemodel import load_face_model
    from backend.generator import generated_texture
    cuda_model = load_face_model(device="cuda")
    fit_c = dataclasses.replace(fit, vertices=fit.vertices.cuda(), rotation=fit.rotation.cuda(),
                                translation=fit.translation.cuda(), lighting=fit.lighting.cuda())
    generated_texture(obs, fit_c, cuda_model, SIZE)                      # warm
    t0 = time.perf_counter()
    a = generated_texture(obs, fit_c, cuda_model, SIZE)
    b = generated_texture(obs, fit_c, cuda_model, SIZE)
    assert a.info["generator"]["steps"] > 6
    assert a.info["generator"]["seconds"] < 2.0, a.info["generator"]
    assert np.array_equal(layout(a), layout(b))
    assert np.isfinite(layout(a)).all() and time.perf_counter() - t0 < 20


def test_completion_beats_the_fills_in_the_hidden_region(generator, scene):
    """PSNR against the studio truth over the texels the studio photo saw and this view did not, after the
    completion bench's per-channel gains (fitted on the visible region)."""
    from backend.bench import metrics
    from backend.bench.completion import gain_aligned, layout_u8, v0_fill
    from backend.colour import decode_srgb8
    from backend.bench import partial_views as pv
    from backend.texture import delit_texture
    model, head, obs, fit = scene
    truth = layout_u8({t: _area(head.tiles()[t], SIZE) for t in pv.TILES})
    conf = np.concatenate([_area(head.confidence[i], SIZE) for i in range(2)], axis=1)
    gen = generate(scene)
    vis = np.concatenate([gen.maps["visibility"][t] for t in pv.TILES], axis=1)
    hidden = (conf > 0.5) & (vis < 0.05)
    assert hidden.sum() > 2000
    v0 = v0_fill(obs, fit, model, SIZE)
    visible = (conf > 0.5) & (vis > 0.5)
    truth_lin = decode_srgb8(truth)
    psnr = {name: metrics.psnr(gain_aligned(layout_u8(t.maps["diffuse"]), truth_lin, visible)[0], truth, hidden)
            for name, t in (("generated", gen), ("v0-fill", v0), ("delit", delit_texture(obs, fit, model, SIZE)))}
    print("hidden-region PSNR (dB):", {k: round(v, 2) for k, v in psnr.items()})
    assert psnr["generated"] > psnr["v0-fill"] + MARGIN_DB, psnr
    assert psnr["generated"] > psnr["delit"] + MARGIN_DB, psnr


# Measured on this scene: +0.30 dB over v0's fill, +0.47 over the albedo model's (the completion bench: +0.13 dB
# over the albedo model's on average, in 27 of 30 held-out views); the generator's output replaced by the
# albedo model's image ties "delit" and fails here.
MARGIN_DB = 0.15


def _area(img: np.ndarray, size: int) -> np.ndarray:
    import cv2
    return img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def test_missing_weights_are_a_clear_error_before_any_work(monkeypatch, tmp_path):
    from backend.pipeline import Options, validate
    monkeypatch.setenv("LIKENESS_GENERATOR", str(tmp_path / "absent.npz"))
    with pytest.raises(LikenessError) as err:
        validate(Options(texture="generated"))
    assert err.value.code == "ASSETS_MISSING" and "delit" in err.value.message
    assert validate(Options(texture="delit")).texture == "delit"

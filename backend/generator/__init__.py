"""Texture strategy "generated": a conditional diffusion model completes the de-lit albedo where the photo
does not show it.

The strategy is the "delit" recipe (texture.delit_recipe: the photo divided by the fitted shading, hair,
background and deep shadow lose weight) with the generator's output as the fill's `base`: after the
direct view of both tiles is known (Recipe.prepare), the generator (model.py) samples the complete
albedo of both tiles at RES x RES texels per tile, conditioned on that direct view pooled to 2 RES
(conditions.py: colour, confidence, mirror image, albedo-model prior; wavelet high frequencies); the
texture stage then keeps the photo's own texels at full resolution where it saw them and blends into the
generator's output by confidence (texture.make_texture, step 5), so the photo's detail is carried over
wherever it exists and the generator only replaces the fill.

Sampling is deterministic DDIM for a seed, GeneratorSettings.steps (CPU) or .cuda_steps (CUDA) steps; each
step checks for a cancel, reports progress and offers a preview (Hooks). Identity guidance (guidance.py)
moves the predicted clean texture along the gradient of an identity loss between the photo and the
textured head rendered in the photo's camera, in the last `guidance_steps` steps.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .. import render
from ..colour import linear_to_srgb, srgb_to_linear
from ..errors import LikenessError
from ..scene import Hooks, Observation, SceneFit, TextureResult
from ..texture import delit_recipe, make_texture
from ..threads import torch_threads
from .conditions import RES, TILES, from_layout, make_conditions, pool_first
from .model import ddim_sample
from .weights import GENERATOR_PATH, load_generator

SAMPLING_THREADS = 2       # torch CPU threads of the generator's sampling, whatever the load (prepare, below)
PREVIEW_SCALE = 2          # preview image = the layout (RES x 2 RES) at this many px per texel


@dataclass(frozen=True)
class GeneratorSettings:
    steps: int = 6                 # DDIM steps on the CPU
    cuda_steps: int = 20           # ... on CUDA
    seed: int = 0
    guidance_scale: float = 0.0    # identity guidance: RMS change of the predicted texture per guided step
    guidance_steps: int = 2        # the last this many steps are guided
    mirror: bool = True            # weakly seen texels take their mirror image's photo colour before the fill
    mirror_from: float = 0.0       # ... only texels seen at least this much (texture.Recipe.mirror_from): 0.5
                                   # wins on training identities' views, loses on held-out ones at yaw 30
                                   # (the generator knows the 76 faces it saw; docs/generator.md)
    mirror_detail: bool = True     # the generator's output + the mirror's high frequencies (where it was seen)
    prior_detail: bool = True      # ... + the albedo model's high frequencies (where the mirror was not seen)
    weights: str | None = None     # a weights file other than weights/generator.npz


DEFAULT_SETTINGS = GeneratorSettings()


def prior_images(fit: SceneFit, device) -> torch.Tensor:
    """(T, 3, RES, RES) linear: the fitted albedo model's image (its mean without coefficients; a flat skin
    colour without a model), the prior the condition carries."""
    am = fit.albedo_model
    if am is None:
        return torch.full((len(TILES), 3, RES, RES), 0.45, device=device)
    coeffs = fit.albedo.detach().float().to(device) if fit.albedo is not None and \
        len(fit.albedo) == am.num_components else None
    imgs = torch.stack([am.image(t, coeffs) for t in TILES]).to(device)
    return torch.nn.functional.avg_pool2d(imgs, imgs.shape[-1] // RES) if imgs.shape[-1] > RES else imgs


def layout_preview(x0: torch.Tensor) -> np.ndarray:
    """(1, 3, RES, 2 RES) [-1, 1] sRGB -> (h, w, 3) uint8 (nearest-neighbour enlarged)."""
    img = ((x0[0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return cv2.resize(img, (img.shape[1] * PREVIEW_SCALE, img.shape[0] * PREVIEW_SCALE), interpolation=cv2.INTER_NEAREST)


def sample_layout(net, first128: torch.Tensor, prior: torch.Tensor, model, steps: int, seed: int,
                  guide=None, on_step=None) -> torch.Tensor:
    """The generator's (1, 3, RES, 2 RES) sRGB [-1, 1] texture from a pooled direct view (T, 4, 2R, 2R)."""
    dev = next(net.parameters()).device
    spatial, freq = make_conditions(first128[None].cpu(), prior[None].cpu(), model)
    return ddim_sample(net, spatial.to(dev), freq.to(dev), steps, seed, guide, on_step)


DETAIL_WEIGHT = (0.2, 0.6)   # mirror weight from which its high frequencies are carried over


def mirror_detail(model, first: dict[int, torch.Tensor], size: int, dev,
                  check: Callable[[], None] = lambda: None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per tile: (3, S, S) the high frequencies (above the generator's resolution) of every texel's mirror
    image in the direct view, where the mirror was seen (the photo's detail, carried to the far side), and
    (S, S) how far it was seen (0..1: where it was not, the albedo model's detail takes over). `check()`
    is called between steps (it raises to cancel)."""
    from ..texture import _uv_layout
    layouts, _ = _uv_layout(model, size, str(dev))
    out = {}
    for lay in layouts:
        check()
        acc = torch.zeros(4, size * size, device=dev)
        for mt, (sel, grid) in lay.mirror.items():
            acc[:, lay.texel[sel]] = render.sample_image(first[mt], grid)
        acc = acc.view(4, size, size)
        f = size // RES
        low = torch.nn.functional.avg_pool2d(acc[None], f)[0]
        check()
        low_col = render.upsample(low[:3] / low[3:].clamp_min(1e-4), size)
        col = acc[:3] / acc[3:].clamp_min(1e-4)
        w = render.smoothstep(*DETAIL_WEIGHT, acc[3]) * render.smoothstep(*DETAIL_WEIGHT, render.upsample(low[3:], size)[0])
        out[lay.tile] = ((col - low_col) * w, w)
    return out


def prior_detail(fit: SceneFit, tile: int, size: int) -> torch.Tensor | None:
    """(3, S, S): the fitted albedo model's image above the generator's resolution (brow, lip and ear
    edges, the mean skin's texture) for the texels that neither the photo nor its mirror show."""
    am = fit.albedo_model
    if am is None or fit.albedo is None or len(fit.albedo) != am.num_components:
        return None
    img = am.image(tile, fit.albedo.detach().float().to(fit.vertices.device), size)
    f = size // RES
    return img - render.upsample(torch.nn.functional.avg_pool2d(img[None], f)[0], size) if f > 1 else None


def generated_texture(obs: Observation, fit: SceneFit, model, size: int = 1024, hooks: Hooks | None = None, *,
                      settings: GeneratorSettings = DEFAULT_SETTINGS, _debug: dict | None = None) -> TextureResult:
    """Strategy "generated" (module docstring)."""
    hooks = hooks or Hooks()
    dev = fit.vertices.device
    gen = load_generator(settings.weights, str(dev))
    if gen is None:
        raise LikenessError("ASSETS_MISSING", f"the texture generator's weights ({GENERATOR_PATH.name}) are missing; "
                            "choose the 'delit' texture strategy")
    steps = settings.cuda_steps if dev.type == "cuda" else settings.steps
    state: dict = {"phase": 0}
    split = (0.45, 0.85)   # the texture stage's progress: projection, generator steps, fill

    def progress(f: float) -> None:
        if state["phase"] == 0:
            hooks.progress(split[0] * min(f / 0.65, 1.0))
        else:
            hooks.progress(split[1] + (1 - split[1]) * max(0.0, (f - 0.65) / 0.35))

    def on_step(info) -> None:
        hooks.cancel_check()
        hooks.progress(split[0] + (split[1] - split[0]) * (info.index + 1) / info.steps)
        hooks.preview("generator", layout_preview(info.x0))

    def prepare(first: dict[int, torch.Tensor]) -> None:
        t0 = time.perf_counter()
        state["phase"] = 1
        first128 = pool_first(first)
        prior = prior_images(fit, "cpu")
        guide = None
        if settings.guidance_scale > 0 and settings.guidance_steps > 0:
            from .guidance import IdentityGuide
            guide = IdentityGuide.build(obs, fit, model, first, settings.guidance_scale,
                                        steps - settings.guidance_steps, dev)
            state["guide"] = guide
        # The network's convolutions sum in an order that depends on the thread count, and the texture stage
        # picks its count from the load: at a fixed count the same photo gives the same bytes at any load.
        with torch_threads(SAMPLING_THREADS if dev.type == "cpu" else torch.get_num_threads()):
            x0 = sample_layout(gen.net, first128, prior, model, steps, settings.seed, guide, on_step)
        lin = srgb_to_linear((x0.detach().float() + 1.0) * 0.5).clamp(0.0, 1.0)
        state["gen"] = from_layout(lin)[0].to(dev)                   # (T, 3, RES, RES)
        hooks.cancel_check()
        if settings.mirror_detail:
            state["detail"] = mirror_detail(model, first, size, dev, hooks.cancel_check)
            hooks.cancel_check()
        state["seconds"] = time.perf_counter() - t0

    def base(tile: int, S: int) -> torch.Tensor:
        out = render.upsample(state["gen"][TILES.index(tile)], S)
        seen = 0.0
        if "detail" in state:
            detail, seen = state["detail"][tile]
            out = out + detail
        if settings.prior_detail:
            hf = prior_detail(fit, tile, S)
            if hf is not None:
                out = out + hf * (1.0 - seen)
        return out.clamp(0.0, 1.0)

    recipe = dataclasses.replace(delit_recipe(obs, fit), name="generated", base=base, prepare=prepare,
                                 mirror=settings.mirror, mirror_from=settings.mirror_from)
    tex = make_texture(obs, fit, model, size, recipe, Hooks(hooks.cancel_check, progress, hooks.preview), _debug=_debug)
    tex.info["generator"] = {"weights_sha256": gen.sha256, "steps": steps, "seed": settings.seed,
                             "resolution": RES, "mirror": settings.mirror,
                             "mirror_from": settings.mirror_from, "mirror_detail": settings.mirror_detail,
                             "prior_detail": settings.prior_detail, "seconds": round(state["seconds"], 3),
                             "guidance_scale": settings.guidance_scale,
                             "guidance_steps": settings.guidance_steps if settings.guidance_scale > 0 else 0}
    if "guide" in state:
        tex.info["generator"]["identity_distance"] = state["guide"].report()
    if _debug is not None:
        _debug["generator_layout"] = state["gen"]
    return tex

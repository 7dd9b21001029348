"""One photo -> result bundle: load, detect, fit, texture, write (each stage timed and cancellable)."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from .bundle import check_output, write_bundle
from .camera import Intrinsics, yaw_pitch_roll_deg
from .errors import LikenessError
from .facemodel import load_face_model
from .albedo import load_albedo_model
from .fitting import Correspondence, fit_landmarks
from .imageio import Photo, load_photo
from .landmarks import FaceAnalyzer, get_analyzer
from .photometric import fit_photometric
from .segmentation import get_segmenter
from .preview import draw_preview, photometric_panels
from .scene import Hooks, Observation, SceneFit
from .texture import SKIN_IOR, STRATEGIES
from .threads import concurrently

# The stages, in order: name, what it does (for people), and the share of the whole request's
# progress at its end. The worker announces this list in its `ready` event; every client uses it.
STAGES = (
    ("load", "loading the photo and the face model", 0.05),
    ("detect", "finding the face", 0.12),
    ("fit", "fitting the 3D head", 0.45),
    ("texture", "making the UV textures", 0.9),
    ("write", "writing the result bundle", 1.0),
)
STAGE_NAMES = tuple(s[0] for s in STAGES)
STAGE_MESSAGES = {name: message for name, message, _ in STAGES}
_STAGE_SPAN = {name: (start, end) for (name, _, end), start in zip(STAGES, [0.0] + [s[2] for s in STAGES[:-1]])}

TEXTURE_SIZES = (512, 1024, 2048, 4096)
DEVICES = ("auto", "cpu", "cuda")
MEMORY_TARGET_MB = 3072
PREVIEW_EVENT_SIDE = 256
PHOTOMETRIC_PREVIEW_HEIGHT = 384
# The fit's trust (photometric.fit_confidence, 0..1): below WARN a warning, below REFUSE no bundle (FIT_FAILED)
# rather than a head that does not belong to the photo. Chosen so that no London or wild_dev photo is refused.
WARN_CONFIDENCE = 0.5
REFUSE_CONFIDENCE = 0.05


def estimated_peak_mb(texture_size: int) -> float:
    """Peak resident memory of a one-shot reconstruct on the CPU for a texture size: a fixed part (Python,
    torch, MediaPipe, the face model) plus per-texel costs (the UV layout's first computation and the
    stage's per-texel arrays). Fitted to /usr/bin/time peaks of `reconstruct` on a London photo: 666, 1090
    and 2835 MB at 512, 1024 and 2048 (4096 would be about 9.8 GB). Used to refuse sizes that cannot meet
    the memory target before any work."""
    return 510.0 + 582.0 * (texture_size / 1024.0) ** 2


@dataclass(frozen=True)
class Options:
    device: str = "auto"          # auto | cpu | cuda
    texture_size: int = 1024      # one of TEXTURE_SIZES, within the memory target
    texture: str = "generated"    # a texture strategy (texture.STRATEGIES): the one the completion bench
                                  # measures best (docs/generator.md; "delit" fills from the albedo model)
    overwrite: bool = False       # replace an existing bundle of ours at the output
    embed_model: bool = False     # copy the face model file into the bundle (for another machine)
    ict_dir: str | None = None
    landmarker: str | None = None


_OPTION_TYPES = {"device": str, "texture_size": int, "texture": str, "overwrite": bool, "embed_model": bool,
                 "ict_dir": (str, type(None)), "landmarker": (str, type(None))}


def parse_options(values: dict | None) -> Options:
    """Options from a JSON object (worker requests, bench runner): strict types, known keys only, then
    `validate`. "overwrite": "no" is refused, not read as true."""
    values = values or {}
    if not isinstance(values, dict):
        raise LikenessError("BAD_REQUEST", "options must be a JSON object")
    unknown = sorted(set(values) - set(_OPTION_TYPES))
    if unknown:
        raise LikenessError("BAD_REQUEST", f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_OPTION_TYPES)}")
    for key, value in values.items():
        want = _OPTION_TYPES[key]
        bad_int = want is int and isinstance(value, bool)  # JSON true is not a size
        if bad_int or not isinstance(value, want):
            kind = {bool: "true or false", int: "an integer", str: "a string"}.get(want, "a string or null")
            raise LikenessError("BAD_REQUEST", f"option {key!r} must be {kind}, got {json_repr(value)}")
    return validate(Options(**values))


def json_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(options: Options) -> Options:
    """Check every option before any work; LikenessError BAD_REQUEST with what is allowed."""
    if options.device not in DEVICES:
        raise LikenessError("BAD_REQUEST", f"unknown device {options.device!r} (auto, cpu or cuda)")
    if options.texture not in STRATEGIES:
        raise LikenessError("BAD_REQUEST", f"unknown texture strategy {options.texture!r} ({', '.join(STRATEGIES)})")
    if options.texture == "generated":
        from .generator.weights import weights_path
        if not weights_path().is_file():             # before any work, not at the texture stage
            raise LikenessError("ASSETS_MISSING", f"the texture generator's weights ({weights_path()}) are missing: "
                                "reinstall the extension, or choose the 'delit' texture strategy")
    size = options.texture_size
    if isinstance(size, bool) or size not in TEXTURE_SIZES:
        raise LikenessError("BAD_REQUEST", f"texture size {size!r} is not one of {', '.join(map(str, TEXTURE_SIZES))}")
    if estimated_peak_mb(size) > MEMORY_TARGET_MB:
        allowed = [s for s in TEXTURE_SIZES if estimated_peak_mb(s) <= MEMORY_TARGET_MB]
        raise LikenessError("BAD_REQUEST", f"texture size {size} needs about {estimated_peak_mb(size) / 1024:.1f} GB, "
                            f"over the {MEMORY_TARGET_MB / 1024:.0f} GB memory target; use {max(allowed)} or less")
    return options


def allowed_texture_sizes() -> list[int]:
    return [s for s in TEXTURE_SIZES if estimated_peak_mb(s) <= MEMORY_TARGET_MB]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LikenessError("BAD_REQUEST", "device 'cuda' was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise LikenessError("BAD_REQUEST", f"unknown device {name!r} (auto, cpu or cuda)")
    return name


_CORRESPONDENCE: list[Correspondence] = []


def load_correspondence() -> Correspondence:
    if not _CORRESPONDENCE:
        _CORRESPONDENCE.append(Correspondence.load())
    return _CORRESPONDENCE[0]


def warm_up(options: Options = Options()) -> None:
    """Load and compute what the first request would otherwise (slow and uncancellable): the face model,
    the landmark correspondence, the albedo model, MediaPipe's landmarker and segmenters, dlib's face
    descriptor, and the UV layouts and skin rasters of the texture size in `options` (another size
    computes its own on its first request).

    Two lanes side by side (`threads.concurrently`): what needs the face model, and the model files that
    do not. Every loader is a thread-safe process-wide cache, and file reads, torch and MediaPipe's
    graph set-up let go of the GIL: median 1.93 -> 1.27 s in fresh processes on 2 cores (docs/bench.md)."""
    device = resolve_device(options.device)

    def face_model_lane(check) -> None:
        from . import skin_maps
        from .texture import _uv_layout
        model = load_face_model(options.ict_dir, device)
        skin_maps.warm_caches(model, options.texture_size)          # the maps run on the CPU
        if model.device.type != "cpu":
            _uv_layout(model, options.texture_size, str(model.neutral.device))   # the texture stage's own copy
        load_correspondence()

    def model_files_lane(check) -> None:
        load_albedo_model(device=device)
        if options.texture == "generated":
            from .generator.weights import load_generator
            load_generator(device=device)
        get_analyzer(options.landmarker)
        get_segmenter()
        try:  # the fit's confidence measures the render with it; without it, that measure is left out
            from .face_descriptor import load_face_descriptor
            load_face_descriptor(device=device)
        except LikenessError:
            pass

    concurrently([face_model_lane, model_files_lane])


class Run:
    """Times the stages, turns in-stage fractions into whole-request progress, and hands each stage
    its Hooks (cancel, progress, preview)."""

    def __init__(self, progress: Callable[[str, float], None] | None, cancel_check: Callable[[], None] | None,
                 preview: Callable[[str, str, np.ndarray], None] | None = None):
        self._progress = progress
        self.cancel_check = cancel_check or (lambda: None)
        self._preview = preview
        self.timings: dict[str, float] = {}
        self._t_start = time.perf_counter()
        self._open: tuple[str, float] | None = None

    def _report(self, stage: str, fraction: float) -> None:
        if self._progress:
            a, b = _STAGE_SPAN[stage]
            self._progress(stage, a + (b - a) * min(max(fraction, 0.0), 1.0))

    @contextlib.contextmanager
    def stage(self, name: str):
        self.cancel_check()
        self._open = (name, time.perf_counter())
        self._report(name, 0.0)
        preview = (lambda key, img: self._preview(name, key, img)) if self._preview else (lambda key, img: None)
        yield Hooks(self.cancel_check, lambda f: self._report(name, f), preview)
        self._close()

    def _close(self) -> None:
        if self._open is not None:
            name, t0 = self._open
            self.timings[name] = round(time.perf_counter() - t0, 4)
            self._open = None
            self._report(name, 1.0)

    def finish(self) -> dict:
        """Close the open stage now; the timings with the total (what result.json records)."""
        self._close()
        return {**self.timings, "total": round(time.perf_counter() - self._t_start, 4)}


def observe(photo: Photo, analyzer: FaceAnalyzer) -> Observation:
    """Find the face, with the photo turned upright first when the face is sideways or upside down
    (landmarks.upright turns the Photo in place and records photo.rotation_deg and a warning)."""
    from .landmarks import upright
    det = upright(photo, analyzer)
    return Observation(photo, det, Intrinsics.for_image(photo.width, photo.height, photo.focal_35mm))


def reconstruct(photo: str | Path | Photo, out_dir: str | Path, options: Options = Options(),
                progress: Callable[[str, float], None] | None = None,
                cancel_check: Callable[[], None] | None = None,
                preview: Callable[[str, str, np.ndarray], None] | None = None) -> dict:
    """Run the whole pipeline; returns the bundle's result.json content. Raises LikenessError."""
    options = validate(options)
    out_dir = Path(out_dir)
    check_output(out_dir, options.overwrite)
    run = Run(progress, cancel_check, preview)

    with run.stage("load") as hooks:
        device = resolve_device(options.device)
        if not isinstance(photo, Photo):
            photo = load_photo(photo, hooks.cancel_check)
        model = load_face_model(options.ict_dir, device)
        corr = load_correspondence()
        albedo_model = load_albedo_model(device=device)
        analyzer = get_analyzer(options.landmarker)
        segmenter = get_segmenter()

    with run.stage("detect"):
        obs = observe(photo, analyzer)
        obs.masks = segmenter.segment(photo, obs.detection)

    with run.stage("fit") as hooks:
        det = obs.detection
        fit = fit_landmarks(model, corr, det.points, obs.intrinsics, det.blendshapes,
                            hooks=Hooks(hooks.cancel_check, lambda f: hooks.progress(0.25 * f)))
        fit = fit_photometric(obs, fit, model, corr, albedo_model,
                              hooks=Hooks(hooks.cancel_check, lambda f: hooks.progress(0.25 + 0.75 * f)))
        conf = fit.metrics["confidence"]
        if conf["trust"] < REFUSE_CONFIDENCE:
            raise LikenessError("FIT_FAILED", f"the fitted head does not match {photo.name} (trust "
                                f"{conf['trust']:.2f}; set by: {conf['trust_set_by']}): the face may be too dark, "
                                "blurred, covered or not a real face; try a clearer photo")
        previews = {"preview": draw_preview(photo.rgb, model, fit.vertices, fit, det)}
        hooks.preview("fit", small(previews["preview"], PREVIEW_EVENT_SIDE))
        panels = photometric_panels(fit, PHOTOMETRIC_PREVIEW_HEIGHT)
        if panels is not None:
            previews["photometric_preview"] = panels

    with run.stage("texture") as hooks:
        tex = STRATEGIES[options.texture](obs, fit, model, options.texture_size, hooks)

    with run.stage("write") as hooks:
        sections = {"options": dataclasses.asdict(options), "warnings": collect_warnings(obs, fit),
                    "correspondence_sha256": corr.sha256, "skin_ior": SKIN_IOR}
        return write_bundle(out_dir, obs, fit, tex, model, sections, hooks, overwrite=options.overwrite,
                            embed_model=options.embed_model, previews=previews, timings=run.finish)


def small(image: np.ndarray, side: int) -> np.ndarray:
    s = side / max(image.shape[:2])
    if s >= 1:
        return image
    return cv2.resize(image, (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))),
                      interpolation=cv2.INTER_AREA)


def confidence_warning(conf: dict | None) -> str | None:
    """The bundle's warning for a fit of low trust (photometric.fit_confidence), or None."""
    if conf and conf["trust"] < WARN_CONFIDENCE:
        return (f"the fit matches the photo poorly (trust {conf['trust']:.2f}, set by: {conf['trust_set_by']}): "
                "check the head against the photo")
    return None


def collect_warnings(obs: Observation, fit: SceneFit) -> list[str]:
    out = []
    if obs.detection.num_faces > 1:
        out.append(f"{obs.detection.num_faces} faces found; reconstructed the largest")
    if obs.photo.focal_35mm is None:
        out.append("no focal length in EXIF; assumed a 50 mm-equivalent lens")
    lm_error = fit.metrics.get("landmark_error_frontal_iod", fit.metrics["landmark_error_iod"])
    if lm_error > 0.05:
        out.append(f"landmark fit error is high ({lm_error:.1%} of the inter-ocular distance facing the camera)")
    warning = confidence_warning(fit.metrics.get("confidence"))
    if warning:
        out.append(warning)
    yaw, pitch, _ = yaw_pitch_roll_deg(fit.rotation.cpu().numpy())
    if abs(yaw) > 45:
        out.append(f"the head is turned {yaw:.0f} degrees: the far side of the texture is mirrored or filled")
    return out

"""One photo -> result bundle: load, detect, fit, texture, write (each stage timed and cancellable)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .bundle import SCHEMA_VERSION, check_output, staged_bundle, write_json, write_png
from .camera import Intrinsics, yaw_pitch_roll_deg
from .errors import LikenessError
from .facemodel import PART_NAMES, VERTEX_RANGES, FaceModel, load_face_model
from .fitting import Correspondence, FitResult, fit_landmarks
from .imageio import Photo, load_photo
from .landmarks import FaceDetection, get_analyzer
from .preview import draw_preview
from .texture import TextureMaps, project_texture

# Share of the whole request's progress that each stage ends at (worker progress events).
STAGE_END = {"load": 0.05, "detect": 0.12, "fit": 0.45, "texture": 0.9, "write": 1.0}
STAGE_START = dict(zip(STAGE_END, [0.0] + list(STAGE_END.values())[:-1]))


@dataclass
class Options:
    device: str = "auto"          # auto | cpu | cuda
    texture_size: int = 1024
    overwrite: bool = False
    ict_dir: str | None = None
    landmarker: str | None = None


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LikenessError("BAD_REQUEST", "device 'cuda' was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise LikenessError("BAD_REQUEST", f"unknown device {name!r} (auto, cpu or cuda)")
    return name


class Reporter:
    """Times the stages and turns in-stage fractions into whole-request progress."""

    def __init__(self, progress: Callable[[str, float], None] | None, cancel_check: Callable[[], None] | None):
        self.progress = progress
        self.cancel_check = cancel_check or (lambda: None)
        self.timings: dict[str, float] = {}
        self._stage, self._t0 = None, 0.0

    def start(self, stage: str) -> None:
        self.cancel_check()
        self._stage, self._t0 = stage, time.perf_counter()
        self.within(0.0)

    def within(self, fraction: float) -> None:
        if self.progress:
            a, b = STAGE_START[self._stage], STAGE_END[self._stage]
            self.progress(self._stage, a + (b - a) * min(max(fraction, 0.0), 1.0))

    def end(self) -> None:
        self.timings[self._stage] = round(time.perf_counter() - self._t0, 4)
        self.within(1.0)


def reconstruct(photo: str | Path | Photo, out_dir: str | Path, options: Options = Options(),
                progress: Callable[[str, float], None] | None = None,
                cancel_check: Callable[[], None] | None = None) -> dict:
    """Run the whole pipeline; returns the bundle's result.json content. Raises LikenessError."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    check_output(out_dir, options.overwrite)
    rep = Reporter(progress, cancel_check)

    rep.start("load")
    device = resolve_device(options.device)
    if not isinstance(photo, Photo):
        photo = load_photo(photo)
    model = load_face_model(options.ict_dir, device)
    corr = Correspondence.load()
    analyzer = get_analyzer(options.landmarker)
    rep.end()

    rep.start("detect")
    det = analyzer.detect(photo)
    rep.end()

    rep.start("fit")
    k = Intrinsics.for_image(photo.width, photo.height, photo.focal_35mm)
    fit = fit_landmarks(model, corr, det.points, k, det.blendshapes, cancel_check=rep.cancel_check,
                        progress=rep.within)
    with torch.no_grad():
        basis = model.vertices(fit.identity)
        vertices = model.vertices(fit.identity, fit.expression)
    rep.end()

    rep.start("texture")
    maps = project_texture(photo.rgb, model, vertices, fit.rotation, fit.translation, k,
                           size=options.texture_size, cancel_check=rep.cancel_check)
    rep.end()

    rep.start("write")
    warnings = collect_warnings(photo, det, fit)
    with staged_bundle(out_dir, options.overwrite) as tmp:
        files = write_maps(tmp, maps)
        write_mesh(tmp / "mesh.npz", model, vertices, basis)
        rep.cancel_check()
        write_png(tmp / "preview.png", draw_preview(photo.rgb, model, vertices, fit, det))
        files = [{"path": "mesh.npz", "role": "mesh"}] + files + [
            {"path": "preview.png", "role": "preview", "colorspace": "sRGB"}]
        result = result_json(photo, det, fit, model, files, rep.timings, warnings)
        rep.end()  # the write stage's time is known once the last image is written
        result["timings_s"] = {**rep.timings, "total": round(time.perf_counter() - t_start, 4)}
        write_json(tmp / "result.json", result)
        rep.cancel_check()
    return result


def write_maps(folder: Path, maps: TextureMaps) -> list[dict]:
    files = []
    for role, images, colorspace in (("diffuse", maps.diffuse, "sRGB"), ("specular", maps.specular, "Non-Color"),
                                     ("normal", maps.normal, "Non-Color"), ("visibility", maps.visibility, "Non-Color")):
        for tile in sorted(images):
            name = f"{role}.{tile}.png"
            write_png(folder / name, images[tile])
            files.append({"path": name, "role": role, "tile": tile, "colorspace": colorspace})
    return files


def write_mesh(path: Path, model: FaceModel, vertices: torch.Tensor, basis: torch.Tensor) -> None:
    topo = model.topology
    np.savez(
        path,
        vertices=vertices.cpu().numpy().astype(np.float32),
        basis_vertices=basis.cpu().numpy().astype(np.float32),
        expression_deltas=model.expression.cpu().numpy().astype(np.float16),
        expression_names=np.array(model.expression_names),
        face_sizes=topo.face_sizes,
        face_vertex_indices=topo.face_vertex_indices,
        corner_uvs=topo.corner_uvs,
        face_part=topo.polygon_part,
        part_names=np.array(PART_NAMES),
        part_vertex_ranges=np.array(list(VERTEX_RANGES.values()), dtype=np.int32),
        part_range_names=np.array(list(VERTEX_RANGES)),
    )


def collect_warnings(photo: Photo, det: FaceDetection, fit: FitResult) -> list[str]:
    out = []
    if det.num_faces > 1:
        out.append(f"{det.num_faces} faces found; reconstructed the largest")
    if photo.focal_35mm is None:
        out.append("no focal length in EXIF; assumed a 50 mm-equivalent lens")
    if fit.error_iod > 0.05:
        out.append(f"landmark fit error is high ({fit.error_iod:.1%} of the inter-ocular distance)")
    yaw, pitch, _ = yaw_pitch_roll_deg(fit.rotation.cpu().numpy())
    if abs(yaw) > 45:
        out.append(f"the head is turned {yaw:.0f} degrees: the far side of the texture is mirrored or filled")
    return out


def result_json(photo: Photo, det: FaceDetection, fit: FitResult, model: FaceModel, files: list[dict],
                timings: dict, warnings: list[str]) -> dict:
    k = fit.intrinsics
    rot = fit.rotation.cpu().numpy()
    yaw, pitch, roll = yaw_pitch_roll_deg(rot)
    return {
        "schema_version": SCHEMA_VERSION,
        "software": {"name": "likeness", "version": __version__, "torch": torch.__version__},
        "input": {"name": photo.name, "sha256": photo.sha256, "width": photo.width, "height": photo.height},
        "files": files,
        "camera": {"model": "perspective", "width": k.width, "height": k.height, "focal_px": k.focal_px,
                   "cx": k.cx, "cy": k.cy, "focal_source": "exif" if photo.focal_35mm else "default",
                   "convention": "Xc = R @ X + t; camera looks down -Z, +Y up; "
                                 "u = cx + f*Xc.x/-Xc.z, v = cy - f*Xc.y/-Xc.z (pixels, origin top-left)"},
        "pose": {"rotation": rot.tolist(), "translation_cm": fit.translation.cpu().numpy().tolist(),
                 "yaw_deg": yaw, "pitch_deg": pitch, "roll_deg": roll},
        "identity": {"names": model.identity_names, "coefficients": fit.identity.cpu().numpy().tolist()},
        "expression": {"names": model.expression_names, "coefficients": fit.expression.cpu().numpy().tolist()},
        "detection": {"num_faces": det.num_faces, "face_box": [float(x) for x in det.box],
                      "blendshapes": {k_: float(v) for k_, v in det.blendshapes.items()}},
        "metrics": {"landmark_error_px": fit.error_px, "landmark_error_iod": fit.error_iod,
                    "landmarks_used": fit.landmarks_used},
        "timings_s": dict(timings),
        "warnings": warnings,
    }

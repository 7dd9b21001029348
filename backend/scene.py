"""The typed data that flows between the stages: photo -> Observation -> SceneFit -> TextureResult.

Each stage is a function of these (pipeline.py calls them in order) and each can be replaced without
touching the others: a photometric fit adds lighting to SceneFit, a learned texture strategy returns
the same TextureResult as the projection does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from .camera import Intrinsics
from .colour import decode_srgb8
from .imageio import Photo
from .landmarks import FaceDetection

if TYPE_CHECKING:
    from .segmentation import Masks


def _nothing(*_args) -> None:
    return None


@dataclass
class Hooks:
    """How a stage talks back while it runs: `cancel_check()` raises to stop it (call it between
    sub-steps, at least every ~0.5 s), `progress(fraction)` reports 0..1 within the stage, and
    `preview(name, image)` offers an (h, w, 3) uint8 sRGB picture of the work so far (the worker
    streams it to Blender)."""
    cancel_check: Callable[[], None] = _nothing
    progress: Callable[[float], None] = _nothing
    preview: Callable[[str, np.ndarray], None] = _nothing


@dataclass
class Observation:
    """What one photo tells us: its pixels (sRGB as stored; linear on demand), landmarks, masks."""
    photo: Photo
    detection: FaceDetection | None         # None only for scenes of known pose (known_scene)
    intrinsics: Intrinsics                  # the camera of the full-resolution photo
    masks: "Masks | None" = None            # segmentation.Masks: hair, person, skin, face region

    def linear(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """(h, w, 3) float32 linear-light pixels of the photo, or of the crop `box` = (x0, y0, x1, y1)."""
        rgb = self.photo.rgb
        if box is not None:
            x0, y0, x1, y1 = box
            rgb = rgb[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
        return decode_srgb8(rgb)


@dataclass
class SceneFit:
    """The fitted scene: camera, rigid pose, model coefficients, lighting, and how well it fits."""
    intrinsics: Intrinsics
    rotation: torch.Tensor          # (3, 3) model -> camera (Xc = R X + t)
    translation: torch.Tensor       # (3,) cm
    identity: torch.Tensor          # (K_id,) N(0, 1) coefficients
    expression: torch.Tensor        # (K_exp,) in [0, 1]
    vertices: torch.Tensor          # (V, 3) cm, model space: identity and expression applied
    basis_vertices: torch.Tensor    # (V, 3) identity only (the shape-key basis)
    projected: np.ndarray           # (L, 2) the model's landmarks in full-resolution pixels
    metrics: dict                   # landmark_error_px, landmark_error_iod, landmarks_used, ...
    settings: dict                  # the fit's settings, as recorded in result.json
    terms: dict                     # final value of each loss term
    lighting: torch.Tensor | None = None   # (9, 3) SH shading coefficients (render.py), when fitted
    albedo: torch.Tensor | None = None     # albedo-model coefficients (albedo.py), when fitted
    albedo_model: object | None = None     # the albedo.AlbedoModel those coefficients belong to
    extras: dict = field(default_factory=dict)  # for previews and scripts: never written to the bundle

    @classmethod
    def posed(cls, intrinsics: Intrinsics, rotation: torch.Tensor, translation: torch.Tensor,
              vertices: torch.Tensor) -> "SceneFit":
        """A scene of known pose and shape and nothing else (tests, scripts, synthetic heads)."""
        return cls(intrinsics, rotation, translation, torch.zeros(0), torch.zeros(0), vertices, vertices,
                   np.zeros((0, 2), np.float32), {}, {}, {})


@dataclass
class TextureResult:
    """UV maps of one head, float, per UDIM tile. Roles and their meaning (docs/bundle.md):
    diffuse (S, S, 3) linear albedo-or-radiance 0..1; visibility (S, S) 0..1 how well the photo saw each
    texel; specular (S, S) Principled BSDF "Specular IOR Level" at the bundle's IOR; normal (S, S, 3)
    tangent-space unit vectors (+Z out of the surface, OpenGL +Y); roughness (S, S) Principled Roughness
    (optional: the importer's default where absent). `images`: whole images by role, no tile (eyes: (S, S, 3)
    uint8 sRGB on the eyeball's UV)."""
    strategy: str
    size: int
    maps: dict[str, dict[int, np.ndarray]]
    info: dict = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)


def known_scene(photo_rgb: np.ndarray, intrinsics: Intrinsics, rotation: torch.Tensor, translation: torch.Tensor,
                vertices: torch.Tensor, name: str = "scene.png") -> tuple[Observation, SceneFit]:
    """An image and the head's known pose and shape (tests, scripts, synthetic heads): what the texture
    stage needs, without detection or fitting."""
    from .imageio import photo_from_array
    obs = Observation(photo_from_array(np.asarray(photo_rgb), name), None, intrinsics)
    return obs, SceneFit.posed(intrinsics, rotation, translation, vertices)

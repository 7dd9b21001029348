"""Per-photo masks: hair, person, face skin and the face region, at the photo's full resolution.

Hair and person come from MediaPipe's hair and selfie segmentation nets (prepared by
`python -m backend setup`, see segmentation_models.py), run with the Tasks ImageSegmenter on
square windows that this module cuts and scales itself (so MediaPipe's own resizing never
matters): once on the whole image, and once on a window around the face, which keeps small faces
at the nets' resolution (512 px hair, 256 px person). The face window's result replaces the
whole-image one inside the window, blended over a narrow band at its border.

No net separates face skin from clothes, glasses, hands or a beard, so `skin` is built from the
Face Landmarker polygons (face_regions.py): the face oval, slightly shrunk, minus the eyes, the
brows and the open mouth, times (1 - hair) and times person. It stays inside the face oval, which
keeps collars and clothes out; the neck is left out on purpose (its colour test would need a
reference that jaw shadows, collars and skin-coloured clothes make unreliable, and the fitted
head's texture does not need it).
"""
from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import face_regions as fr
from .errors import LikenessError
from .imageio import Photo
from .landmarks import FaceDetection
from .segmentation_models import HAIR, PERSON, SegmentationModel, find_prepared

HAIR_INPUT = 512        # the nets' input sides (px)
PERSON_INPUT = 256

# Face windows, in units of the landmark box's longer side, around the box centre. The hair
# window reaches above the forehead (the landmarks stop at mid-forehead) and past the ears; the
# person window frames head and shoulders as in a selfie, the framing the selfie net was made for.
HAIR_WINDOW = (2.2, -0.25)     # (side, centre shift down), both x box side
PERSON_WINDOW = (3.4, 0.45)
WINDOW_FEATHER = 0.06          # blend band at the window's border, x window side

# Skin polygon margins, x inter-ocular distance (measured on London photos; see the tests).
OVAL_SHRINK = 0.03    # the oval's edge runs along the silhouette and the hairline: keep off it
EYE_GROW = 0.05       # lashes and lid shadow
BROW_GROW = 0.07      # brow hair reaches past MediaPipe's brow band
MOUTH_GROW = 0.02     # teeth and the dark lip margin
# Net probabilities below / above these count as certainly not / certainly the class in `skin`
# (linear in between): a hair pixel at p = 0.95 must not keep 5 % weight in skin statistics,
# while the band keeps the soft edge.
SURE_NOT, SURE = 0.25, 0.75


@dataclass
class Masks:
    """(h, w) float32 maps in 0..1 on the grid of Photo.analysis (longest side <= 1600 px, so a 100 MP
    photo's masks stay small): mask pixel = photo pixel * `scale`. Sample them with normalised
    coordinates (u / width) and the resolution does not matter."""
    hair: np.ndarray          # hair probability
    person: np.ndarray        # person (vs background) probability
    skin: np.ndarray          # face skin: face oval minus eyes, brows, open mouth, hair, background
    face_region: np.ndarray   # the Face Landmarker's face oval (anti-aliased)
    scale: float = 1.0        # mask px per full-resolution photo px


@dataclass(frozen=True)
class Window:
    """A square of the photo in full-resolution px: [x0, x0 + side) x [y0, y0 + side); it may
    reach outside the photo (cut with the edge pixels repeated)."""
    x0: int
    y0: int
    side: int

    @classmethod
    def around(cls, box, scale: float, shift: float) -> "Window":
        x0, y0, x1, y1 = box
        size = max(x1 - x0, y1 - y0)
        side = max(8, int(round(scale * size)))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + shift * size
        return cls(int(round(cx - side / 2)), int(round(cy - side / 2)), side)

    def scaled(self, s: float) -> "Window":
        return Window(int(round(self.x0 * s)), int(round(self.y0 * s)), max(1, int(round(self.side * s))))

    @classmethod
    def whole(cls, width: int, height: int) -> "Window":
        side = max(width, height)
        return cls((width - side) // 2, (height - side) // 2, side)

    def covers(self, width: int, height: int, fraction: float) -> bool:
        """Whether the window holds at least `fraction` of the image along both axes."""
        ix = min(self.x0 + self.side, width) - max(self.x0, 0)
        iy = min(self.y0 + self.side, height) - max(self.y0, 0)
        return ix >= fraction * width and iy >= fraction * height


class Segmenter:
    """MediaPipe ImageSegmenters for hair and person, created once (IMAGE mode; calls serialised)."""

    def __init__(self, model_dir=None):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self.paths = {m.key: find_prepared(m, model_dir) for m in (HAIR, PERSON)}
        self._lock = threading.Lock()
        self._nets = {}
        for key, path in self.paths.items():
            options = vision.ImageSegmenterOptions(
                base_options=BaseOptions(model_asset_path=str(path)),
                running_mode=vision.RunningMode.IMAGE,
                output_confidence_masks=True,
                output_category_mask=False,
            )
            try:
                self._nets[key] = vision.ImageSegmenter.create_from_options(options)
            except Exception as exc:  # noqa: BLE001 - a damaged model file
                self.close()
                raise LikenessError("ASSETS_MISSING", f"cannot load the segmentation model {path} ({exc}); "
                                    "run `python -m backend setup` to prepare it again.") from exc

    def close(self) -> None:
        with self._lock:
            for net in self._nets.values():
                net.close()
            self._nets.clear()

    # -- public ---------------------------------------------------------------------------------

    def segment(self, photo: Photo, face: FaceDetection | None = None) -> Masks:
        """The masks of `photo`. `face` is its Face Landmarker result; detected here when None
        (NO_FACE when there is none)."""
        if face is None:
            from .landmarks import get_analyzer
            face = get_analyzer().detect(photo)
        scale = photo.analysis_scale
        hair = self.hair(photo, face.box, scale=scale)
        person = self.person(photo, face.box, scale=scale)
        points = face.points * scale
        return Masks(hair=hair, person=person, skin=skin_mask(points, hair, person),
                     face_region=face_region_mask(hair.shape[0], hair.shape[1], points), scale=scale)

    def hair(self, photo: Photo, box=None, window_scale: float | None = HAIR_WINDOW[0], scale: float = 1.0) -> np.ndarray:
        """Hair probability on the photo's grid scaled by `scale`; `window_scale` None: whole image only."""
        window = None if box is None or window_scale is None else Window.around(box, window_scale, HAIR_WINDOW[1])
        return self._composite(HAIR, HAIR_INPUT, photo, window, scale)

    def person(self, photo: Photo, box=None, scale: float = 1.0) -> np.ndarray:
        window = None if box is None else Window.around(box, *PERSON_WINDOW)
        return self._composite(PERSON, PERSON_INPUT, photo, window, scale)

    # -- nets on windows ------------------------------------------------------------------------

    def _composite(self, model: SegmentationModel, size: int, photo: Photo, window: Window | None,
                   scale: float = 1.0) -> np.ndarray:
        """The whole-image map with the face window's map blended in, on the photo's grid times `scale`."""
        w, h = photo.width, photo.height
        ws, hs = max(1, round(w * scale)), max(1, round(h * scale))
        if window is None or window.covers(w, h, 1.0):   # the face window holds the whole image
            base_window = window if window is not None else Window.whole(w, h)
            return self._to_photo(self._run(model, size, photo, base_window), base_window, ws, hs, scale)
        out = self._to_photo(self._run(model, size, photo, Window.whole(w, h)), Window.whole(w, h), ws, hs, scale)
        local = self._to_photo(self._run(model, size, photo, window), window, ws, hs, scale)
        weight = _window_weight(window.scaled(scale), ws, hs, WINDOW_FEATHER)
        out += weight * (local - out)
        return out

    def _run(self, model: SegmentationModel, size: int, photo: Photo, window: Window) -> np.ndarray:
        """(size, size) float32 probability of the model's class over the window."""
        import mediapipe as mp

        pixels = _cut(photo, window, size)
        with self._lock:
            if not self._nets:
                raise RuntimeError("Segmenter is closed")
            result = self._nets[model.key].segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
        # hair: softmax over (background, hair); person: one probability channel
        channel = 1 if model.key == "hair" else 0
        prob = np.asarray(result.confidence_masks[channel].numpy_view(), dtype=np.float32)
        return np.clip(prob.reshape(size, size), 0.0, 1.0)

    @staticmethod
    def _to_photo(prob: np.ndarray, window: Window, width: int, height: int, scale: float = 1.0) -> np.ndarray:
        """The window's (size, size) map resampled onto the (height, width) grid of the photo times
        `scale` (bilinear; 0 outside the window)."""
        s = window.side * scale / prob.shape[0]
        x0, y0 = window.x0 * scale, window.y0 * scale
        # net pixel u covers grid [x0 + u s, x0 + (u + 1) s): centres map as x = x0 + (u + 0.5) s - 0.5
        forward = np.array([[s, 0.0, x0 + 0.5 * s - 0.5], [0.0, s, y0 + 0.5 * s - 0.5]])
        covers = window.scaled(scale).covers(width, height, 1.0)
        return cv2.warpAffine(prob, forward, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE if covers else cv2.BORDER_CONSTANT, borderValue=0.0)


def _cut(photo: Photo, window: Window, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB of the window, area-averaged. Cut from Photo.analysis when that
    still has at least `size` px across the window, else from the full-resolution pixels."""
    scale = photo.analysis_scale if window.side * photo.analysis_scale >= size else 1.0
    image = photo.analysis if scale != 1.0 else photo.rgb
    h, w = image.shape[:2]
    x0, y0 = int(round(window.x0 * scale)), int(round(window.y0 * scale))
    side = max(1, int(round(window.side * scale)))
    crop = image[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = side - top - crop.shape[0], side - left - crop.shape[1]
    if top or left or bottom > 0 or right > 0:
        crop = cv2.copyMakeBorder(crop, top, max(0, bottom), left, max(0, right), cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interpolation))


def _window_weight(window: Window, width: int, height: int, feather: float) -> np.ndarray:
    """(H, W) float32: 1 inside the window, ramping to 0 over `feather` x side at its borders
    that lie inside the image (a border outside the image needs no blending)."""
    band = max(1.0, feather * window.side)

    def ramp(n: int, lo: int, hi: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float32) + 0.5
        up = (x - lo) / band if lo > 0 else np.ones_like(x)
        down = (hi - x) / band if hi < n else np.ones_like(x)
        return np.clip(np.minimum(up, down), 0.0, 1.0)

    x1, y1 = window.x0 + window.side, window.y0 + window.side
    return ramp(height, window.y0, y1)[:, None] * ramp(width, window.x0, x1)[None, :]


def face_region_mask(height: int, width: int, points: np.ndarray) -> np.ndarray:
    """The Face Landmarker's face oval, (H, W) float32 in 0..1."""
    return fr.polygon_mask((height, width), points, [fr.FACE_OVAL])


def skin_mask(points: np.ndarray, hair: np.ndarray, person: np.ndarray) -> np.ndarray:
    """Face skin weight: inside the shrunk face oval, outside the grown eyes, brows and open mouth,
    not hair, not background (see SURE). Margins are fractions of the inter-ocular distance."""
    shape = hair.shape
    iod = fr.inter_ocular(points)
    inner = fr.polygon_mask(shape, points, [fr.FACE_OVAL], grow=-OVAL_SHRINK * iod)
    eyes = fr.polygon_mask(shape, points, [fr.LEFT_EYE, fr.RIGHT_EYE], grow=EYE_GROW * iod)
    brows = fr.polygon_mask(shape, points, [fr.LEFT_BROW, fr.RIGHT_BROW], grow=BROW_GROW * iod)
    mouth = fr.polygon_mask(shape, points, [fr.INNER_MOUTH], grow=MOUTH_GROW * iod)
    features = np.maximum(np.maximum(eyes, brows), mouth)
    return inner * (1.0 - features) * (1.0 - _sure(hair)) * _sure(person)


def _sure(prob: np.ndarray) -> np.ndarray:
    """0 below SURE_NOT, 1 above SURE, linear in between."""
    return np.clip((prob - SURE_NOT) * (1.0 / (SURE - SURE_NOT)), 0.0, 1.0)


_SEGMENTERS: dict[tuple[Path, ...], Segmenter] = {}
_SEGMENTERS_LOCK = threading.Lock()


def get_segmenter(model_dir=None) -> Segmenter:
    """The process-wide Segmenter for these model files (created on first use)."""
    key = tuple(find_prepared(m, model_dir).resolve() for m in (HAIR, PERSON))
    with _SEGMENTERS_LOCK:
        segmenter = _SEGMENTERS.get(key)
        if segmenter is None:
            segmenter = _SEGMENTERS[key] = Segmenter(model_dir)
        return segmenter


@atexit.register
def _close_segmenters() -> None:
    # As for the Face Landmarker: closing before interpreter shutdown avoids MediaPipe's noisy __del__.
    with _SEGMENTERS_LOCK:
        for segmenter in _SEGMENTERS.values():
            segmenter.close()
        _SEGMENTERS.clear()

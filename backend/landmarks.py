"""Face landmarks with MediaPipe's Face Landmarker (478 points, 52 blendshapes, head transform).

Detection runs on `Photo.analysis` and every coordinate is returned in full-resolution pixels
(x right, y down; MediaPipe's normalised coordinates times the image size). When the whole image
yields no face, two fallbacks run before NO_FACE: the image padded on every side (faces that fill
or leave the frame) and overlapping upscaled tiles (faces too small for MediaPipe's 128 px
detector input).

`upright` turns a photo whose face is sideways or upside down by a quarter or half turn first, so that
every stage sees an upright face (MediaPipe finds sideways faces but draws an upright mesh onto an
upside-down one: see `upright`).

Also here: the MediaPipe -> iBUG 68 index list and the reader for the hand-placed `.tem`
landmarks of the London set, which the tests and the bench use to measure landmark error.
"""
from __future__ import annotations

import atexit
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import LikenessError
from .imageio import Photo
from .paths import find_landmarker

NUM_POINTS = 478
MAX_FACES = 5
PAD_FRACTION = 0.35        # padded fallback: border on each side, as a fraction of the longest side
TILE_LEVELS = (2, 4)       # tiled fallback: windows of 1/2, then 1/4 of the image, overlapping by half
MIN_TILE_SIDE = 96         # no tiles smaller than this (analysis px): the faces would be too small to fit
WINDOW_MIN_SIDE = 384      # windows are upscaled so their short side is at least this
CONFIRM_WINDOW = 2.5       # a tile's candidate is confirmed in a square window this many box sides wide
DUPLICATE_IOU = 0.3        # boxes overlapping more than this are the same face
# Orientation (upright): a face whose landmarks lean more than TURN_ABOVE_DEG from upright is turned by
# the nearest quarter turn; a face is taken to be upside down when MediaPipe's face detector scores the
# half-turned face window higher by more than UPSIDE_DOWN_MARGIN. Measured on 156 photos (86 London
# neutral, 30 smiling, 40 wild) in all four orientations: upright faces score 0.08-0.45 higher than their
# half-turned window, upside-down ones 0.10-0.55 lower; no upright photo is turned, every upside-down one
# is, and 307 of 312 sideways ones end upright (the rest: heads tilted ~37 degrees, left at ~53).
TURN_ABOVE_DEG = 55.0
UPSIDE_DOWN_MARGIN = 0.03
SCORE_WINDOW = 2.0         # the scored window is this many face-box sides wide
SCORE_SIDE = 192           # px: the scored window is resized to this (the detector's input is 128)
FOREHEAD, CHIN = 10, 152   # MediaPipe points on the face's vertical axis

# iBUG 300-W / Multi-PIE 68-point order from MediaPipe's 478 points. "Left" is image-left (the
# subject's right): iBUG 36 (image-left eye, outer corner) is MediaPipe 33. One index per point;
# checked against the hand-placed London landmarks (tests/test_landmarks.py; FRL_TO_IBUG68 below).
IBUG68_FROM_MEDIAPIPE = np.array([
    # 0-16 jaw, image-left ear level -> chin (8) -> image-right ear level
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # 17-21 image-left brow (outer -> inner), 22-26 image-right brow (inner -> outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge (root -> tip), 31-35 nose bottom (image-left -> right, 33 = subnasale)
    168, 197, 5, 1, 98, 97, 94, 326, 327,
    # 36-41 image-left eye (outer corner, upper lid x2, inner corner, lower lid x2)
    33, 160, 158, 133, 153, 144,
    # 42-47 image-right eye (inner corner, upper lid x2, outer corner, lower lid x2)
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lips: corner 48, upper lip to 51 (top centre) to corner 54, lower lip back
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lips: corner 60, upper 61-63, corner 64, lower 65-67
    78, 81, 13, 311, 308, 402, 14, 178,
], dtype=np.int64)
assert IBUG68_FROM_MEDIAPIPE.shape == (68,)

# Face Research Lab 189-point template (London set .tem files) -> iBUG 68, the points with the
# same meaning in both: eye corners, outer brow ends, nose bottom, mouth corners, lip centres, chin.
FRL_TO_IBUG68 = {
    18: 36, 22: 39, 23: 42, 27: 45,   # eye corners, image-left eye outer/inner, image-right inner/outer
    71: 17, 82: 26,                   # outer brow ends
    55: 33,                           # bottom centre of nose
    87: 48, 93: 54,                   # mouth corners
    90: 51, 106: 57,                  # top of upper lip, bottom of lower lip
    129: 8,                           # chin
}
FRL_PUPILS = (0, 1)                   # image-left, image-right pupil


@dataclass
class FaceDetection:
    points: np.ndarray        # (478, 2) float32 full-resolution pixel coords (x right, y down)
    depth: np.ndarray         # (478,) float32, MediaPipe's relative z scaled to pixels like x
    blendshapes: dict[str, float]   # MediaPipe's 52 categories by name (includes "_neutral")
    transform: np.ndarray     # (4, 4) facial transformation matrix as MediaPipe gives it
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the landmarks, full-res px
    num_faces: int            # how many faces were found in the photo
    source: str = "full"      # which pass found it: "full", "padded", "tiles" or "contrast" (transform is
                              # relative to the image that pass gave MediaPipe)

    def ibug68(self) -> np.ndarray:
        """(68, 2) float32 points in iBUG order."""
        return self.points[IBUG68_FROM_MEDIAPIPE]


@dataclass
class _Face:
    """One face of one pass, in analysis-image pixels."""
    points: np.ndarray        # (478, 2) float64
    depth: np.ndarray         # (478,) float64
    blendshapes: dict[str, float]
    transform: np.ndarray
    margin: float = 0.0       # distance of the box from its tile's border (tiles only)
    box: tuple[float, float, float, float] = field(init=False)

    def __post_init__(self):
        lo, hi = self.points.min(axis=0), self.points.max(axis=0)
        self.box = (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class FaceAnalyzer:
    """A MediaPipe Face Landmarker created once and reused (IMAGE mode; calls are serialised)."""

    def __init__(self, model_path=None):
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        self.model_path = find_landmarker(model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=MAX_FACES,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as exc:  # noqa: BLE001 - a damaged or wrong .task file
            raise LikenessError("ASSETS_MISSING", f"cannot load the MediaPipe model {self.model_path} ({exc}); "
                                "install it again: Install Backend in the add-on's preferences, or "
                                "python -m backend setup") from exc
        self._lock = threading.Lock()
        self._detector = None          # MediaPipe's face detector, for face_score (made on first use)
        self._detector_tried = False

    def close(self) -> None:
        with self._lock:
            if self._landmarker is not None:
                self._landmarker.close()
                self._landmarker = None
            if self._detector is not None:
                self._detector.close()
                self._detector = None

    def face_score(self, image: np.ndarray) -> float | None:
        """The best face score of MediaPipe's face detector (BlazeFace, the one inside the landmarker's
        .task file) on `image`, 0 when it finds none; None when the .task file has no detector."""
        import mediapipe as mp
        with self._lock:
            if self._landmarker is None:
                raise RuntimeError("FaceAnalyzer is closed")
            if not self._detector_tried:
                self._detector_tried = True
                self._detector = _make_detector(self.model_path)
            if self._detector is None:
                return None
            result = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        return max((d.categories[0].score for d in result.detections if d.categories), default=0.0)

    def finds_face(self, image: np.ndarray) -> bool:
        """Whether one plain pass of the landmarker finds a face in `image` (no fallbacks)."""
        return bool(self._run(np.ascontiguousarray(image), 0.0, 0.0, 1.0))

    def detect(self, photo: Photo) -> FaceDetection:
        """The largest face (by landmark box area) of the photo; NO_FACE when there is none."""
        image = np.ascontiguousarray(photo.analysis)
        source = "full"
        faces = self._run(image, 0.0, 0.0, 1.0)
        if not faces:
            source, faces = "padded", self._padded(image)
        if not faces:
            source, faces = "tiles", self._tiles(image)
        if not faces:  # dark or flat photos: the same pixels with their contrast normalised
            normalised = normalised_contrast(image)
            source, faces = "contrast", self._run(normalised, 0.0, 0.0, 1.0) or self._padded(normalised)
        if not faces:
            raise LikenessError("NO_FACE", f"no face was found in {photo.name}; use a photo where one face is "
                                "clearly visible, roughly frontal and not covered.")
        best = max(faces, key=lambda f: f.area)
        # analysis px -> full-res px, per axis (the analysis size was rounded)
        sx = photo.width / image.shape[1]
        sy = photo.height / image.shape[0]
        points = (best.points * (sx, sy)).astype(np.float32)
        lo, hi = points.min(axis=0), points.max(axis=0)
        return FaceDetection(
            points=points,
            depth=(best.depth * sx).astype(np.float32),
            blendshapes=best.blendshapes,
            transform=best.transform,
            box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
            num_faces=len(faces),
            source=source,
        )

    # -- passes ---------------------------------------------------------------------------------

    def _run(self, image: np.ndarray, ox: float, oy: float, scale: float) -> list[_Face]:
        """Faces in `image`, mapped to analysis px by analysis = image px * scale + (ox, oy)."""
        import mediapipe as mp

        h, w = image.shape[:2]
        with self._lock:
            if self._landmarker is None:
                raise RuntimeError("FaceAnalyzer is closed")
            result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                      data=np.ascontiguousarray(image)))
        faces = []
        for i, marks in enumerate(result.face_landmarks):
            if len(marks) != NUM_POINTS:
                continue
            xyz = np.array([(p.x, p.y, p.z) for p in marks], dtype=np.float64)
            points = np.empty((NUM_POINTS, 2))
            points[:, 0] = xyz[:, 0] * w * scale + ox
            points[:, 1] = xyz[:, 1] * h * scale + oy
            blend = {}
            if result.face_blendshapes and i < len(result.face_blendshapes):
                blend = {c.category_name: float(c.score) for c in result.face_blendshapes[i]}
            transform = np.eye(4)
            if result.facial_transformation_matrixes and i < len(result.facial_transformation_matrixes):
                transform = np.asarray(result.facial_transformation_matrixes[i], dtype=np.float64).reshape(4, 4)
            faces.append(_Face(points, xyz[:, 2] * w * scale, blend, transform))
        return faces

    def _window(self, image: np.ndarray, x0: int, y0: int, x1: int, y1: int, fill) -> list[_Face]:
        """Faces in the window [x0, x1) x [y0, y1) of `image` (may reach outside: padded with
        `fill`), upscaled so its short side is at least WINDOW_MIN_SIDE."""
        h, w = image.shape[:2]
        crop = image[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
        top, left = max(0, -y0), max(0, -x0)
        bottom, right = max(0, y1 - h), max(0, x1 - w)
        if top or left or bottom or right:
            crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
        up = WINDOW_MIN_SIDE / min(crop.shape[:2])
        scale = 1.0
        if up > 1.0:
            size = (round(crop.shape[1] * up), round(crop.shape[0] * up))
            scale = crop.shape[1] / size[0]
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
        return self._run(crop, float(x0), float(y0), scale)

    def _padded(self, image: np.ndarray) -> list[_Face]:
        """Faces that fill the frame or are cut by its border: give MediaPipe some background."""
        h, w = image.shape[:2]
        pad = int(round(PAD_FRACTION * max(h, w)))
        return self._window(image, -pad, -pad, w + pad, h + pad, _fill(image))

    def _tiles(self, image: np.ndarray) -> list[_Face]:
        """Faces too small for the detector: overlapping windows of 1/2, then 1/4 of the image.
        Every candidate is confirmed (and its landmarks refined) by a second run on a window
        around it, which also removes most false detections in textured backgrounds."""
        h, w = image.shape[:2]
        fill = _fill(image)
        for level in TILE_LEVELS:
            th, tw = -(-h // level), -(-w // level)
            if min(th, tw) < MIN_TILE_SIDE:
                break
            found: list[_Face] = []
            for y0 in np.linspace(0, h - th, 2 * level - 1).round().astype(int):
                for x0 in np.linspace(0, w - tw, 2 * level - 1).round().astype(int):
                    for face in self._window(image, x0, y0, x0 + tw, y0 + th, fill):
                        bx0, by0, bx1, by1 = face.box
                        face.margin = min(bx0 - x0, by0 - y0, x0 + tw - bx1, y0 + th - by1)
                        found.append(face)
            confirmed = [c for c in (self._confirm(image, f, fill) for f in _unique(found)) if c is not None]
            if confirmed:
                return _unique(confirmed)
        return []

    def _confirm(self, image: np.ndarray, face: _Face, fill) -> _Face | None:
        x0, y0, x1, y1 = face.box
        half = CONFIRM_WINDOW * max(x1 - x0, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        window = [int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half)]
        again = self._window(image, *window, fill)
        best = max(again, key=lambda f: _iou(f.box, face.box), default=None)
        if best is None or _iou(best.box, face.box) <= DUPLICATE_IOU:
            return None
        best.margin = min(best.box[0] - window[0], best.box[1] - window[1],
                          window[2] - best.box[2], window[3] - best.box[3])
        return best


def _make_detector(task_path: Path):
    """A FaceDetector from the face_detector.tflite inside the Face Landmarker .task file (a zip)."""
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    try:
        with zipfile.ZipFile(task_path) as z:
            model = z.read("face_detector.tflite")
        return vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_buffer=model), min_detection_confidence=0.05))
    except Exception:  # noqa: BLE001 - another .task layout: orientation then relies on the landmarks only
        return None


# ---------------------------------------------------------------------------------------------
# Orientation: a face that is sideways or upside down is turned upright before anything else


def landmark_roll_deg(points: np.ndarray) -> float:
    """The face's in-plane angle from its landmarks: 0 upright, +90 when its top points to the image's
    right (the face turned clockwise), 180 upside down."""
    up = np.asarray(points[FOREHEAD], np.float64) - np.asarray(points[CHIN], np.float64)
    return float(np.degrees(np.arctan2(up[0], -up[1])))


def turn_photo(photo: Photo, quarter_turns_cw: int) -> None:
    """Turn the photo's pixels in place by quarter turns clockwise (its rgb, analysis, rotation_deg)."""
    q = quarter_turns_cw % 4
    if q:
        photo.rgb = np.ascontiguousarray(np.rot90(photo.rgb, -q))
        photo.analysis = photo.rgb if photo.analysis_scale == 1.0 else np.ascontiguousarray(np.rot90(photo.analysis, -q))
        photo.rotation_deg = (photo.rotation_deg + 90 * q) % 360


def _upside_down(analyzer: FaceAnalyzer, photo: Photo, det: FaceDetection) -> bool:
    """MediaPipe's landmarker draws an upright face onto an upside-down one (the landmarks cannot tell),
    so ask its face detector: does the window around the face score higher turned by half a turn?"""
    image = photo.analysis
    sx, sy = image.shape[1] / photo.width, image.shape[0] / photo.height
    x0, y0, x1, y1 = det.box
    half = SCORE_WINDOW * max((x1 - x0) * sx, (y1 - y0) * sy) / 2
    cx, cy = (x0 + x1) / 2 * sx, (y0 + y1) / 2 * sy
    X0, Y0, X1, Y1 = (int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
    h, w = image.shape[:2]
    crop = image[max(0, Y0):min(h, Y1), max(0, X0):min(w, X1)]
    if crop.size == 0:
        return False
    pads = (max(0, -Y0), max(0, Y1 - h), max(0, -X0), max(0, X1 - w))
    if any(pads):  # the background colour (from a sample of pixels: a full median costs 14 ms)
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_CONSTANT, value=_fill(image[::7, ::7]))
    crop = cv2.resize(crop, (SCORE_SIDE, SCORE_SIDE), interpolation=cv2.INTER_AREA)
    as_is = analyzer.face_score(crop)
    if as_is is None:
        return False
    return analyzer.face_score(crop[::-1, ::-1]) > as_is + UPSIDE_DOWN_MARGIN


def _turn_needed(analyzer: FaceAnalyzer, photo: Photo, det: FaceDetection) -> int:
    """Quarter turns clockwise that make this detection's face upright (0 when it is)."""
    roll = landmark_roll_deg(det.points)
    if abs(roll) > TURN_ABOVE_DEG:
        return int(-round(roll / 90.0)) % 4
    return 2 if _upside_down(analyzer, photo, det) else 0


def upright(photo: Photo, analyzer: FaceAnalyzer) -> FaceDetection:
    """Detect the face, turning the photo (in place: every later stage holds the same Photo) by the
    quarter turns that make the face upright; records photo.rotation_deg and a warning. An upright face
    costs two face-detector runs on a small window (a few ms) on top of `detect`.
    Sideways faces: the landmarks say so (their roll). Upside-down faces: the detector says so
    (`_upside_down`). A photo in which no face is found is tried turned (one plain pass each) before NO_FACE."""
    start = photo.rotation_deg
    try:
        det = analyzer.detect(photo)
    except LikenessError as err:
        if err.code != "NO_FACE":
            raise
        turn = next((q for q in (2, 1, 3) if analyzer.finds_face(np.rot90(photo.analysis, -q))), None)
        if turn is None:
            raise
        turn_photo(photo, turn)
        det = analyzer.detect(photo)
    seen = {photo.rotation_deg}
    for _ in range(2):  # a turned face is looked at again once (a sideways face read the wrong way round)
        turn = _turn_needed(analyzer, photo, det)
        if not turn or (photo.rotation_deg + 90 * turn) % 360 in seen:  # upright, or going round in circles
            break
        turn_photo(photo, turn)
        seen.add(photo.rotation_deg)
        try:
            det = analyzer.detect(photo)
        except LikenessError:
            turn_photo(photo, -turn)  # found upright before, not turned: keep what we had
            break
    turned = (photo.rotation_deg - start) % 360
    if turned:
        how = "upside down" if turned == 180 else "sideways"
        photo.warnings.append(f"the face was {how} in the photo: turned it {turned} degrees clockwise "
                              "(camera, landmarks and maps refer to the turned photo)")
    return det


def normalised_contrast(image: np.ndarray) -> np.ndarray:
    """A dark or low-contrast image made readable for the detector: the lightness stretched to its 1-99 %
    range and equalised locally (CLAHE), colours kept. Only for finding the face: the fit and the texture
    use the photo as it is."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    light = lab[..., 0].astype(np.float32)
    lo, hi = np.percentile(light, [1, 99])
    stretched = np.clip((light - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    lab[..., 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(stretched)
    return np.ascontiguousarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


def _fill(image: np.ndarray) -> list[float]:
    return [float(v) for v in np.median(image.reshape(-1, 3), axis=0)]


def _unique(faces: list[_Face]) -> list[_Face]:
    """One face per place: overlapping windows find the same face more than once; keep the copy
    farthest from its window's border."""
    kept: list[_Face] = []
    for face in sorted(faces, key=lambda f: -f.margin):
        if all(_iou(face.box, k.box) <= DUPLICATE_IOU for k in kept):
            kept.append(face)
    return kept


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_ANALYZERS: dict[Path, FaceAnalyzer] = {}
_ANALYZERS_LOCK = threading.Lock()


def get_analyzer(model_path=None) -> FaceAnalyzer:
    """The process-wide FaceAnalyzer for this model file (created on first use)."""
    path = find_landmarker(model_path).resolve()
    with _ANALYZERS_LOCK:
        analyzer = _ANALYZERS.get(path)
        if analyzer is None:
            analyzer = _ANALYZERS[path] = FaceAnalyzer(path)
        return analyzer


@atexit.register
def _close_analyzers() -> None:
    # Closing explicitly before interpreter shutdown avoids MediaPipe's noisy __del__ at exit.
    with _ANALYZERS_LOCK:
        for analyzer in _ANALYZERS.values():
            analyzer.close()
        _ANALYZERS.clear()


# ---------------------------------------------------------------------------------------------
# Hand-placed landmarks of the London set (WebMorph / Psychomorph .tem files)


def read_tem(path) -> np.ndarray:
    """(N, 2) float64 pixel coordinates of a .tem file: the first line is N, then N "x y" lines
    (the line definitions that follow are ignored)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        n = int(lines[0].split()[0])
        points = np.array([[float(v) for v in line.split()[:2]] for line in lines[1:n + 1]], dtype=np.float64)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{path} is not a .tem landmark file ({exc})") from exc
    if points.shape != (n, 2):
        raise ValueError(f"{path}: expected {n} points, read {len(points)}")
    return points


def inter_pupil_distance(tem_points: np.ndarray) -> float:
    """Distance between the two pupils (FRL points 0 and 1), the normaliser of landmark errors."""
    p = np.asarray(tem_points, dtype=np.float64)
    return float(np.linalg.norm(p[FRL_PUPILS[0]] - p[FRL_PUPILS[1]]))


def frl_pairs() -> tuple[np.ndarray, np.ndarray]:
    """(FRL indices, iBUG-68 indices) of FRL_TO_IBUG68, in a fixed order."""
    frl = np.array(list(FRL_TO_IBUG68.keys()), dtype=np.int64)
    return frl, np.array([FRL_TO_IBUG68[k] for k in frl], dtype=np.int64)


def nme_vs_tem(ibug68: np.ndarray, tem_points: np.ndarray) -> np.ndarray:
    """Per-pair error |iBUG point - hand point| / inter-pupil distance, shape (len(FRL_TO_IBUG68),)."""
    frl, ibug = frl_pairs()
    err = np.linalg.norm(np.asarray(ibug68, dtype=np.float64)[ibug] - np.asarray(tem_points)[frl], axis=1)
    return err / inter_pupil_distance(tem_points)

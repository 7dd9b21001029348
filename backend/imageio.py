"""Read one photo safely: full-resolution sRGB pixels, a smaller copy for analysis, EXIF focal length.

Every way a file can be unusable ends in a `LikenessError` with a stable code (see errors.py) and a
message that names the file and says what to do. Pixel dimensions are checked from the header
before any pixels are decoded, and truncated files are refused rather than padded with grey.
"""
from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from .errors import LikenessError

MIN_SIDE = 64                    # px on the short side; below this no face can be fitted
MAX_PIXELS = 100_000_000         # 100 megapixels
MAX_ANALYSIS_SIDE = 1600         # longest side of Photo.analysis

# Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that, inside
# Image.open. We set its limit to ours: images up to 100 MP open silently, 100-200 MP open with a
# warning (suppressed below) and are then refused by our own header check, and anything larger
# raises inside Pillow, which we catch and report as IMAGE_TOO_LARGE too.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# Signatures of formats Pillow reads: a file that starts like an image but cannot be identified
# is a damaged image (CORRUPT_IMAGE), not some other kind of file (NOT_AN_IMAGE).
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",              # JPEG
    b"\x89PNG\r\n\x1a\n",         # PNG
    b"GIF87a", b"GIF89a",
    b"BM",                        # BMP
    b"II*\x00", b"MM\x00*",       # TIFF
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")

# EXIF tags (Exif sub-IFD 0x8769).
_EXIF_IFD = 0x8769
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_35MM = 0xA405
_TAG_EXIF_WIDTH = 0xA002
_TAG_EXIF_HEIGHT = 0xA003
_TAG_FOCAL_PLANE_XRES = 0xA20E
_TAG_FOCAL_PLANE_YRES = 0xA20F
_TAG_FOCAL_PLANE_UNIT = 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}   # inch, cm, mm, micrometre
_DIAG_35MM = math.hypot(36.0, 24.0)


@dataclass
class Photo:
    path: Path               # the file; for photo_from_array, Path(name)
    name: str                # file name
    sha256: str              # of the file bytes (photo_from_array: of the shape and pixel bytes)
    rgb: np.ndarray          # (H, W, 3) uint8, full resolution, EXIF orientation applied, sRGB
    analysis: np.ndarray     # (h, w, 3) uint8, longest side <= MAX_ANALYSIS_SIDE; the same array as rgb when small
    analysis_scale: float    # analysis pixel coords = full-res pixel coords * analysis_scale
    focal_35mm: float | None  # 35 mm-equivalent focal length from EXIF, else None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def load_photo(path, cancel_check=None) -> Photo:
    """Read an image file into a Photo, or raise LikenessError with one of the image error codes.
    `cancel_check()`, if given, is called between the steps (it raises to cancel)."""
    check = cancel_check or (lambda: None)
    path = Path(path)
    name = path.name
    if not path.exists():
        raise LikenessError("FILE_NOT_FOUND", f"{path} does not exist; check the path of the photo.")
    if not path.is_file():
        raise LikenessError("FILE_NOT_FOUND", f"{path} is not a file; choose an image file (JPEG or PNG).")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LikenessError("FILE_NOT_FOUND", f"{path} cannot be read ({exc.strerror or exc}); "
                                              "check that the file is readable.") from exc
    if not data:
        raise LikenessError("EMPTY_FILE", f"{name} is empty (0 bytes); choose another photo or copy it again.")

    # Pillow must refuse truncated data: with this flag set it would fill the missing rows with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:   # Pillow's own check: > 2 * MAX_PIXELS
            raise _too_large(name, None) from exc
        except UnidentifiedImageError as exc:
            raise _unidentified(name, data) from exc
        except Exception as exc:  # noqa: BLE001 - any failure of a format plugin on a damaged header
            raise _corrupt(name, exc) from exc

        # Header check before decoding any pixels.
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise _too_large(name, (width, height))
        if min(width, height) < MIN_SIDE:
            raise _too_small(name, width, height)

        check()
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise _too_large(name, (width, height)) from exc
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError (truncated), SyntaxError/zlib/struct errors (damaged)
            raise _corrupt(name, exc) from exc

    check()
    focal = focal_35mm_from_exif(im)
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        pass
    try:
        rgb = _to_rgb8(im)
    except ValueError as exc:
        raise LikenessError("NOT_AN_IMAGE", f"{name} uses a colour mode we cannot read ({im.mode}); "
                                            "save it as an 8-bit RGB JPEG or PNG.") from exc
    return _make_photo(path, name, hashlib.sha256(data).hexdigest(), rgb, focal)


def photo_from_array(rgb: np.ndarray, name: str) -> Photo:
    """A Photo from pixels in memory, e.g. skimage.data.astronaut(): (H, W), (H, W, 1|3|4) of uint8,
    uint16 (full 16-bit range) or float in [0, 1]. RGBA is composited on white like files are."""
    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"photo_from_array: expected (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    h, w = arr.shape[:2]
    if h * w > MAX_PIXELS:
        raise _too_large(name, (w, h))
    if min(h, w) < MIN_SIDE:
        raise _too_small(name, w, h)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = _u16_to_u8(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.rint(np.nan_to_num(arr.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"photo_from_array: unsupported dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = _composite_on_white(arr)
    arr = np.ascontiguousarray(arr)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
    return _make_photo(Path(name), name, digest, arr, None)


# ---------------------------------------------------------------------------------------------
# Pixels


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 sRGB, vectorised."""
    mode = im.mode
    icc = im.info.get("icc_profile")
    if mode.startswith("I;16"):                       # 16-bit grey (PNG, TIFF): full-range scale
        return _grey_to_rgb(_u16_to_u8(np.asarray(im)))
    if mode in ("I", "F"):                            # 32-bit int/float grey: scale by the range used
        return _grey_to_rgb(_wide_to_u8(np.asarray(im)))
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        im = _icc_to_srgb(im, icc) or im                 # embedded profile (Display P3, Adobe RGB, CMYK...)
    if im.mode == "CMYK":
        im = im.convert("RGB")                           # no usable profile: Pillow's plain conversion
    elif im.mode not in ("L", "RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")                           # YCbCr, LAB, HSV...; ValueError if impossible
    # Note: 48/64-bit PNGs and 16-bit-per-channel TIFFs already arrive as RGB(A) 8-bit from Pillow,
    # which keeps the high byte of each sample (v >> 8: 0 -> 0, 65535 -> 255, within 1 level of v/257).
    arr = np.asarray(im)
    if arr.ndim == 2:
        return _grey_to_rgb(arr)
    if im.mode == "RGBA":
        # Alpha is composited over white rather than dropped: cut-out portraits often hold black or
        # arbitrary colours under transparent pixels, and a plain white backdrop keeps the face
        # detector and the texture projection away from them.
        return _composite_on_white(arr)
    return np.ascontiguousarray(arr[..., :3])


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert through the embedded ICC profile to sRGB; None when the profile is unusable."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode == "RGB" and "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return im                                  # already sRGB: skip the transform
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                         outputMode="RGBA" if im.mode == "RGBA" else "RGB")
    except Exception:  # noqa: BLE001 - broken or unsupported profile: fall back to Pillow's conversion
        return None


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def _u16_to_u8(arr: np.ndarray) -> np.ndarray:
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _wide_to_u8(arr: np.ndarray) -> np.ndarray:
    """32-bit int or float grey: [0, 1] floats, 8-bit, 16-bit, or else the image's own maximum."""
    a = np.nan_to_num(arr.astype(np.float64))
    a = np.clip(a, 0.0, None)
    top = float(a.max()) if a.size else 0.0
    if np.issubdtype(arr.dtype, np.floating) and top <= 1.0:
        full = 1.0
    elif top <= 255.0:
        full = 255.0
    elif top <= 65535.0:
        full = 65535.0
    else:
        full = top
    return np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    out = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _make_photo(path: Path, name: str, digest: str, rgb: np.ndarray, focal: float | None) -> Photo:
    h, w = rgb.shape[:2]
    longest = max(h, w)
    if longest > MAX_ANALYSIS_SIDE:
        scale = MAX_ANALYSIS_SIDE / longest
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        analysis = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    else:
        scale, analysis = 1.0, rgb
    return Photo(path=path, name=name, sha256=digest, rgb=rgb, analysis=analysis,
                 analysis_scale=float(scale), focal_35mm=focal)


# ---------------------------------------------------------------------------------------------
# EXIF focal length


def focal_35mm_from_exif(im: Image.Image) -> float | None:
    """FocalLengthIn35mmFilm, else FocalLength times the crop factor derived from the focal-plane
    resolution tags (sensor size = pixels / (pixels per unit)), else None. Implausible values
    (outside 8-1200 mm) are treated as missing."""
    try:
        exif = im.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001 - unreadable EXIF
        return None
    tags = {**dict(exif), **dict(sub)}

    f35 = _as_float(tags.get(_TAG_FOCAL_35MM))
    if f35 and 8.0 <= f35 <= 1200.0:
        return f35

    focal = _as_float(tags.get(_TAG_FOCAL_LENGTH))
    xres = _as_float(tags.get(_TAG_FOCAL_PLANE_XRES))
    yres = _as_float(tags.get(_TAG_FOCAL_PLANE_YRES)) or xres
    unit = _UNIT_MM.get(int(_as_float(tags.get(_TAG_FOCAL_PLANE_UNIT)) or 2))
    if not (focal and xres and yres and unit):
        return None
    # The focal-plane resolution refers to the image as the camera wrote it (ExifImageWidth/Height).
    w = _as_float(tags.get(_TAG_EXIF_WIDTH)) or float(im.size[0])
    h = _as_float(tags.get(_TAG_EXIF_HEIGHT)) or float(im.size[1])
    sensor_diag = math.hypot(w / xres * unit, h / yres * unit)
    if not sensor_diag > 0:
        return None
    f35 = focal * _DIAG_35MM / sensor_diag
    return float(f35) if 8.0 <= f35 <= 1200.0 else None


def _as_float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:   # old-style rationals
        value = value[0] / value[1] if value[1] else 0.0
    try:
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return out if math.isfinite(out) and out > 0 else None


# ---------------------------------------------------------------------------------------------
# Errors


def _too_large(name: str, size: tuple[int, int] | None) -> LikenessError:
    dims = (f" ({size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} MP)" if size
            else f" (over {2 * MAX_PIXELS // 1_000_000} MP)")
    return LikenessError("IMAGE_TOO_LARGE", f"{name} is too large{dims}; the limit is "
                         f"{MAX_PIXELS // 1_000_000} megapixels. Resize the photo and try again.")


def _too_small(name: str, width: int, height: int) -> LikenessError:
    return LikenessError("IMAGE_TOO_SMALL", f"{name} is only {width}x{height} pixels; the short side must be "
                         f"at least {MIN_SIDE} px. Use a larger photo of the face.")


def _corrupt(name: str, exc: BaseException) -> LikenessError:
    return LikenessError("CORRUPT_IMAGE", f"{name} is damaged or incomplete ({exc}); "
                         "copy or export the photo again.")


def _unidentified(name: str, data: bytes) -> LikenessError:
    head = data[:32]
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return LikenessError("CORRUPT_IMAGE", f"{name} looks like an image but its header is damaged; "
                             "copy or export the photo again.")
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return LikenessError("NOT_AN_IMAGE", f"{name} is a HEIC/AVIF image, which we cannot read; "
                             "export it as JPEG or PNG.")
    return LikenessError("NOT_AN_IMAGE", f"{name} is not an image we can read; use a JPEG or PNG photo.")


"""Read one photo safely: full-resolution sRGB pixels, a smaller copy for analysis, EXIF focal length.

Every way a file can be unusable ends in a `LikenessError` with a stable code (see errors.py) and a
message that names the file and says what to do. Truncated files are refused rather than padded
with grey. Memory is bounded before any pixel is decoded:
- the file size comes from stat: a file over MAX_FILE_BYTES is refused unread, and the file is never
  read whole into memory (Pillow reads it through a file object; the hash streams it in chunks);
- the pixel count and the decode memory (`decode_bytes_estimate`, from the header's size and mode)
  are checked against MAX_PIXELS and DECODE_BUDGET_BYTES;
- every conversion to 8-bit RGB (16-bit, alpha, 32-bit grey, EXIF orientation) runs in integer math
  on strips of rows into one preallocated uint8 array, so no full-size float copy is ever made.
`cancel_check` is called on every read Pillow makes while decoding, between strips and between hash
chunks, so a cancel lands within a fraction of a second even during a 100 MP decode.
"""
from __future__ import annotations

import hashlib
import io
import math
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from .errors import LikenessError

MIN_SIDE = 64                    # px on the short side; below this no face can be fitted
MAX_PIXELS = 100_000_000         # 100 megapixels
MAX_ANALYSIS_SIDE = 1600         # longest side of Photo.analysis
MAX_FILE_BYTES = 1 << 30         # 1 GiB: a 100 MP photo, even a 16-bit RGBA TIFF stored raw (800 MB), is smaller
# Peak memory of decoding one photo, estimated from its header: Pillow's buffer plus our 8-bit RGB
# output plus one transient copy (decode_bytes_estimate). 1.5 GB keeps a 100 MP photo of any mode
# (at most 1.1 GB) and refuses headers whose mode would need more, before anything is allocated.
DECODE_BUDGET_BYTES = 1536 << 20
HASH_CHUNK = 1 << 20             # bytes per read while hashing the file (a cancel check between chunks)
STRIP_PIXELS = 4 << 20           # pixels per strip of the 8-bit conversion (a cancel check between strips)

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
    # Degrees the picture was turned clockwise, after EXIF orientation, so that the face is upright
    # (landmarks.upright: 0, 90, 180 or 270); rgb and analysis are the turned picture.
    rotation_deg: int = 0
    warnings: list[str] = field(default_factory=list)   # what reading it had to say (result.json)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def load_photo(path, cancel_check=None) -> Photo:
    """Read an image file into a Photo, or raise LikenessError with one of the image error codes.
    `cancel_check()`, if given, is called often while reading and converting (it raises to cancel)."""
    check = cancel_check or (lambda: None)
    path = Path(path)
    name = path.name
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LikenessError("FILE_NOT_FOUND", f"{path} does not exist; check the path of the photo.") from None
    except OSError as exc:
        raise LikenessError("FILE_NOT_FOUND", f"{path} cannot be read ({exc.strerror or exc}); "
                                              "check that the file is readable.") from exc
    if not stat.S_ISREG(st.st_mode):
        raise LikenessError("FILE_NOT_FOUND", f"{path} is not a file; choose an image file (JPEG or PNG).")
    if st.st_size == 0:
        raise LikenessError("EMPTY_FILE", f"{name} is empty (0 bytes); choose another photo or copy it again.")
    if st.st_size > MAX_FILE_BYTES:
        raise LikenessError("IMAGE_TOO_LARGE", f"{name} is {st.st_size / 2**30:.1f} GB; photos larger than "
                            f"{MAX_FILE_BYTES / 2**30:.0f} GB are not read. Export it as a JPEG and try again.")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise LikenessError("FILE_NOT_FOUND", f"{path} cannot be read ({exc.strerror or exc}); "
                                              "check that the file is readable.") from exc
    with fh:
        head = fh.read(32)
        fh.seek(0)
        im = _open_checked(_CheckedFile(fh, check), name, head)
        check()
        focal = focal_35mm_from_exif(im)
        orientation = _orientation(im)
        try:
            rgb = _to_rgb8(im, check)
        except ValueError as exc:
            raise LikenessError("NOT_AN_IMAGE", f"{name} uses a colour mode we cannot read ({im.mode}); "
                                                "save it as an 8-bit RGB JPEG or PNG.") from exc
        finally:
            im.close()
        del im  # Pillow's buffer goes before the oriented copy and the analysis copy are made
        rgb = _orient(rgb, orientation)
        digest = _sha256(fh, check)
    photo = _make_photo(path, name, digest, rgb, focal)
    check()  # a cancel during the analysis resize (0.3 s at 90 MP) still cancels
    return photo


class _CheckedFile:
    """The photo's file object as Pillow sees it: every read first calls the cancel check. Pillow's
    decoders pull the compressed data in blocks of 64 kB, so a cancel lands between two blocks."""

    def __init__(self, fh, check):
        self._fh = fh
        self._check = check

    def read(self, *args):
        self._check()
        return self._fh.read(*args)

    def readline(self, *args):
        self._check()
        return self._fh.readline(*args)

    def close(self):  # Image.close must not close the file: load_photo still hashes it, then closes it
        pass

    def __getattr__(self, attr):  # seek, tell, fileno (libtiff reads the fd itself), ...
        return getattr(self._fh, attr)


def decode_bytes_estimate(width: int, height: int, mode: str) -> int:
    """Peak bytes of decoding and converting one image, from its header: Pillow's buffer (1, 2 or 4
    bytes a pixel by mode), a transient copy as large (palette or ICC conversion), and the 8-bit RGB
    output (3 bytes a pixel); EXIF orientation reuses the buffer freed by then. Measured peaks are
    below it (tests/test_robustness.py)."""
    if mode in ("1", "L", "P"):
        pillow = 1
    elif mode.startswith("I;16"):
        pillow = 2
    else:
        pillow = 4
    return int(width) * int(height) * (2 * pillow + 3)


def _open_checked(fh, name: str, head: bytes) -> Image.Image:
    """Open and decode with Pillow, after the header checks (pixel count, memory estimate)."""
    # Pillow must refuse truncated data: with this flag set it would fill the missing rows with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)
        except LikenessError:
            raise
        except Image.DecompressionBombError as exc:   # Pillow's own check: > 2 * MAX_PIXELS
            raise _too_large(name, None) from exc
        except UnidentifiedImageError as exc:
            raise _unidentified(name, head) from exc
        except Exception as exc:  # noqa: BLE001 - any failure of a format plugin on a damaged header
            raise _corrupt(name, exc) from exc

        # Header checks before decoding any pixels.
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise _too_large(name, (width, height))
        if min(width, height) < MIN_SIDE:
            raise _too_small(name, width, height)
        need = decode_bytes_estimate(width, height, im.mode)
        if need > DECODE_BUDGET_BYTES:
            raise LikenessError("IMAGE_TOO_LARGE", f"{name} ({width}x{height}, {im.mode}) would need about "
                                f"{need / 2**30:.1f} GB to decode; the limit is {DECODE_BUDGET_BYTES / 2**30:.1f} GB. "
                                "Resize it or save it as an 8-bit RGB JPEG and try again.")
        try:
            im.load()
        except LikenessError:  # the cancel check, raised from inside Pillow's read loop
            raise
        except Image.DecompressionBombError as exc:
            raise _too_large(name, (width, height)) from exc
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - OSError (truncated), SyntaxError/zlib/struct errors (damaged)
            raise _corrupt(name, exc) from exc
    return im


def _sha256(fh, check) -> str:
    """sha256 of the whole file, streamed in chunks (never all of it in memory)."""
    h = hashlib.sha256()
    fh.seek(0)
    while True:
        check()
        chunk = fh.read(HASH_CHUNK)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


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


def _to_rgb8(im: Image.Image, check=lambda: None) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 sRGB, vectorised, in strips (no full-size temporaries)."""
    mode = im.mode
    icc = im.info.get("icc_profile")
    if mode.startswith("I;16"):                       # 16-bit grey (PNG, TIFF): full-range scale
        return _strips(im, lambda a: _grey_to_rgb(_u16_to_u8(a)), check)
    if mode in ("I", "F"):                            # 32-bit int/float grey: scale by the range used
        full = _wide_full_scale(im)
        return _strips(im, lambda a: _grey_to_rgb(_wide_to_u8(a, full)), check)
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    check()
    if icc and im.mode in ("RGB", "RGBA", "CMYK"):
        im = _icc_to_srgb(im, icc) or im                 # embedded profile (Display P3, Adobe RGB, CMYK...)
    if im.mode == "CMYK":
        im = im.convert("RGB")                           # no usable profile: Pillow's plain conversion
    elif im.mode not in ("L", "RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")                           # YCbCr, LAB, HSV...; ValueError if impossible
    check()
    # Note: 48/64-bit PNGs and 16-bit-per-channel TIFFs already arrive as RGB(A) 8-bit from Pillow,
    # which keeps the high byte of each sample (v >> 8: 0 -> 0, 65535 -> 255, within 1 level of v/257).
    if im.mode == "L":
        return _strips(im, _grey_to_rgb, check)
    if im.mode == "RGBA":
        # Alpha is composited over white rather than dropped: cut-out portraits often hold black or
        # arbitrary colours under transparent pixels, and a plain white backdrop keeps the face
        # detector and the texture projection away from them.
        return _strips(im, _composite_on_white, check)
    return _strips(im, lambda a: a[..., :3], check)


def _strips(im: Image.Image, convert, check) -> np.ndarray:
    """(H, W, 3) uint8 from `im`, converted by `convert` one strip of rows at a time (a strip is a
    crop of Pillow's buffer: the temporaries are the size of a strip, never of the image)."""
    w, h = im.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, w))
    for y0 in range(0, h, rows):
        check()
        y1 = min(h, y0 + rows)
        out[y0:y1] = convert(np.asarray(im.crop((0, y0, w, y1))))
    return out


# EXIF orientation (1-8) -> the numpy view that shows the picture upright (as ImageOps.exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
        return int(value) if int(value) in _ORIENT else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        return 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """The 8-bit picture upright: done on our uint8 array (3 bytes a pixel) after Pillow's buffer is
    freed, rather than by Pillow on its own (4 bytes a pixel, plus a second buffer)."""
    if orientation not in _ORIENT:
        return rgb
    return np.ascontiguousarray(_ORIENT[orientation](rgb))


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
    """16-bit -> 8-bit, rounded (v * 255 / 65535), in uint32 integer math."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _wide_full_scale(im: Image.Image) -> float:
    """The value that maps to 255 for a 32-bit int or float grey image: 1.0 for [0, 1] floats, 255 or
    65535 when the values fit, else the image's own maximum (Pillow's extrema: no copy)."""
    try:
        top = float(im.getextrema()[1])
    except Exception:  # noqa: BLE001
        top = math.nan
    if not math.isfinite(top):  # NaN or infinities in a float image: the largest finite value, by strips
        top, rows = 0.0, max(1, STRIP_PIXELS // max(1, im.size[0]))
        for y0 in range(0, im.size[1], rows):
            a = np.asarray(im.crop((0, y0, im.size[0], min(im.size[1], y0 + rows))))
            a = a[np.isfinite(a)]
            top = max(top, float(a.max()) if a.size else 0.0)
    top = max(top, 0.0)
    if im.mode == "F" and top <= 1.0:
        return 1.0
    if top <= 255.0:
        return 255.0
    if top <= 65535.0:
        return 65535.0
    return top


def _wide_to_u8(arr: np.ndarray, full: float) -> np.ndarray:
    """One strip of 32-bit int or float grey -> 8-bit at the image's full scale (float32 strip math)."""
    a = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=full, neginf=0.0)
    return np.clip(np.rint(a * np.float32(255.0 / full)), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 over white, exactly rint((rgb * a + 255 * (255 - a)) / 255) in uint16 math (the
    numerator is at most 65025, and x / 255 is never exactly half-way for integer x)."""
    if (rgba[..., 3] == 255).all():  # opaque (most photos that carry alpha): nothing to blend
        return rgba[..., :3]
    a = rgba[..., 3:4].astype(np.uint16)
    out = rgba[..., :3] * a + (255 - a) * 255
    out += 127
    out //= 255
    return out.astype(np.uint8)


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


def _unidentified(name: str, head: bytes) -> LikenessError:
    head = head[:32]
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return LikenessError("CORRUPT_IMAGE", f"{name} looks like an image but its header is damaged; "
                             "copy or export the photo again.")
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return LikenessError("NOT_AN_IMAGE", f"{name} is a HEIC/AVIF image, which we cannot read; "
                             "export it as JPEG or PNG.")
    return LikenessError("NOT_AN_IMAGE", f"{name} is not an image we can read; use a JPEG or PNG photo.")


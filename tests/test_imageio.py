"""backend.imageio: every image error code from a real bad file, colour modes, EXIF, analysis copy."""
from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.errors import LikenessError
from backend.imageio import MAX_ANALYSIS_SIDE, MIN_SIDE, load_photo, photo_from_array

from tests.conftest import LONDON_NEUTRAL

LONDON_JPG = LONDON_NEUTRAL / "001_03.jpg"


def expect_error(code: str, path, name: str | None = None) -> LikenessError:
    with pytest.raises(LikenessError) as info:
        load_photo(path)
    assert info.value.code == code, info.value
    assert (name or path.name) in info.value.message          # messages name the file
    return info.value


@pytest.fixture(scope="module")
def face_rgb(faces_dir) -> np.ndarray:
    """A real face, 400x400 (downscaled London photo), as plain RGB."""
    return cv2.resize(np.asarray(Image.open(LONDON_JPG).convert("RGB")), (400, 400), interpolation=cv2.INTER_AREA)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_with_size(width: int, height: int) -> bytes:
    """A valid 64x64 PNG whose IHDR (with a correct CRC) claims width x height."""
    png = encode(Image.new("RGB", (64, 64), "red"), "PNG")
    length = struct.unpack(">I", png[8:12])[0]
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[8 + 12 + length:]


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF header claims width x height (walks the segments: the EXIF
    thumbnail has SOF markers of its own)."""
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


# -- error codes ------------------------------------------------------------------------------


def test_missing_path_and_folder(tmp_path):
    expect_error("FILE_NOT_FOUND", tmp_path / "nope.jpg")
    expect_error("FILE_NOT_FOUND", tmp_path, name=str(tmp_path))


def test_empty_file(make_file):
    expect_error("EMPTY_FILE", make_file("empty.jpg", b""))


def test_text_file_named_jpg(make_file):
    err = expect_error("NOT_AN_IMAGE", make_file("notes.jpg", "These are my holiday notes, not a photo.\n" * 20))
    assert "JPEG or PNG" in err.message                          # says what to do


def test_heic_is_named(make_file):
    fake_heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200
    assert "HEIC" in expect_error("NOT_AN_IMAGE", make_file("IMG_0001.heic", fake_heic)).message


def test_truncated_jpeg(make_file, faces_dir):
    data = LONDON_JPG.read_bytes()
    expect_error("CORRUPT_IMAGE", make_file("half.jpg", data[: len(data) // 2]))
    expect_error("CORRUPT_IMAGE", make_file("header_only.jpg", data[:300]))


def test_truncated_png(make_file, face_rgb):
    data = encode(Image.fromarray(face_rgb), "PNG")
    expect_error("CORRUPT_IMAGE", make_file("half.png", data[: len(data) // 2]))


def test_damaged_png_data(make_file, face_rgb):
    data = bytearray(encode(Image.fromarray(face_rgb), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 200: idat + 400] = bytes(200)                    # zeroed compressed data, CRC now wrong
    expect_error("CORRUPT_IMAGE", make_file("damaged.png", bytes(data)))


def test_too_small(make_file):
    expect_error("IMAGE_TOO_SMALL", make_file("dot.png", encode(Image.new("RGB", (1, 1)), "PNG")))
    expect_error("IMAGE_TOO_SMALL", make_file("strip.png", encode(Image.new("RGB", (400, MIN_SIDE - 1)), "PNG")))
    assert load_photo(make_file("ok.png", encode(Image.new("RGB", (MIN_SIDE, MIN_SIDE)), "PNG"))).width == MIN_SIDE


@pytest.mark.parametrize("width,height", [(20000, 20000), (12000, 9000), (10001, 10000), (70000, 70000)])
def test_huge_png_header_refused_before_decoding(make_file, width, height):
    path = make_file(f"huge_{width}x{height}.png", png_with_size(width, height))
    start = time.perf_counter()
    expect_error("IMAGE_TOO_LARGE", path)
    assert time.perf_counter() - start < 1.0                    # no pixels were decoded


@pytest.mark.parametrize("width,height", [(12000, 10000), (15000, 15000)])
def test_huge_jpeg_header_refused(make_file, faces_dir, width, height):
    data = jpeg_with_size(LONDON_JPG.read_bytes(), width, height)
    with pytest.warns(Image.DecompressionBombWarning):
        assert Image.open(io.BytesIO(jpeg_with_size(data, 12000, 10000))).size == (12000, 10000)  # patch works
    expect_error("IMAGE_TOO_LARGE", make_file("huge.jpg", data))


def test_100_megapixels_is_not_too_large(make_file):
    # Exactly 100 MP passes the size check; the pixels are missing, so decoding then fails.
    expect_error("CORRUPT_IMAGE", make_file("big.png", png_with_size(10000, 10000)))


# -- good files -------------------------------------------------------------------------------


def test_london_photo(faces_dir):
    photo = load_photo(LONDON_JPG)
    assert photo.rgb.shape == (1350, 1350, 3) and photo.rgb.dtype == np.uint8
    assert (photo.width, photo.height) == (1350, 1350)
    assert photo.analysis is photo.rgb and photo.analysis_scale == 1.0
    assert photo.name == "001_03.jpg" and photo.path == LONDON_JPG
    assert photo.sha256 == hashlib.sha256(LONDON_JPG.read_bytes()).hexdigest()
    assert photo.focal_35mm is None                              # the London set has no EXIF focal length
    np.testing.assert_array_equal(photo.rgb, np.asarray(Image.open(LONDON_JPG).convert("RGB")))


def test_large_photo_keeps_full_resolution(make_file, face_rgb):
    big = cv2.resize(face_rgb, (3000, 2000), interpolation=cv2.INTER_CUBIC)
    photo = load_photo(make_file("big.png", encode(Image.fromarray(big), "PNG", compress_level=1)))
    np.testing.assert_array_equal(photo.rgb, big)
    assert photo.analysis.shape == (round(2000 * MAX_ANALYSIS_SIDE / 3000), MAX_ANALYSIS_SIDE, 3)
    assert photo.analysis.dtype == np.uint8
    assert photo.analysis_scale == pytest.approx(MAX_ANALYSIS_SIDE / 3000)
    # the analysis copy is the same picture, smaller
    back = cv2.resize(photo.analysis, (3000, 2000), interpolation=cv2.INTER_LINEAR)
    assert np.abs(back.astype(int) - big).mean() < 3


# numpy view of what the camera stored, for each EXIF orientation, given the upright picture
STORED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),          # shown after a clockwise quarter turn
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation(make_file, face_rgb, orientation):
    upright = np.ascontiguousarray(face_rgb[:, 40:340])          # 400 x 300: not square
    stored = np.ascontiguousarray(STORED[orientation](upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = make_file(f"o{orientation}.jpg", encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif))
    photo = load_photo(path)
    assert photo.rgb.shape == upright.shape
    assert np.abs(photo.rgb.astype(int) - upright).mean() < 3   # JPEG noise only
    # the wrong way round would be far off
    assert np.abs(np.rot90(photo.rgb, 2).astype(int) - upright).mean() > 20


def test_exif_focal_length(make_file, face_rgb):
    img = Image.fromarray(face_rgb)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 35                            # FocalLengthIn35mmFilm
    assert load_photo(make_file("f35.jpg", encode(img, "JPEG", exif=exif))).focal_35mm == 35.0

    # A full-frame camera (36 x 24 mm, 6000 x 4000 px) with a 50 mm lens: 50 mm equivalent,
    # from FocalLength and the focal-plane resolution, although the file was resized to 400 px.
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = 50.0                                           # FocalLength
    sub[0xA002], sub[0xA003] = 6000, 4000                        # ExifImageWidth/Height
    sub[0xA20E] = sub[0xA20F] = 6000 / 36 * 25.4                 # FocalPlaneX/YResolution, px per inch
    sub[0xA210] = 2                                              # inches
    assert load_photo(make_file("fp.jpg", encode(img, "JPEG", exif=exif))).focal_35mm == pytest.approx(50.0, abs=0.1)

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x920A] = 4.2                           # a phone's real focal length, no sensor size
    assert load_photo(make_file("f.jpg", encode(img, "JPEG", exif=exif))).focal_35mm is None


def check_rgb8(photo, shape):
    assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == shape
    assert photo.rgb.flags.c_contiguous


def test_grayscale(make_file, face_rgb):
    grey = np.asarray(Image.fromarray(face_rgb).convert("L"))
    photo = load_photo(make_file("grey.png", encode(Image.fromarray(grey), "PNG")))
    check_rgb8(photo, face_rgb.shape)
    for c in range(3):
        np.testing.assert_array_equal(photo.rgb[..., c], grey)
    check_rgb8(load_photo(make_file("bw.png", encode(Image.fromarray(grey).convert("1"), "PNG"))), face_rgb.shape)


def test_rgba_composited_on_white(make_file, face_rgb):
    alpha = np.full(face_rgb.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0                                           # transparent strip
    alpha[:, 100:110] = 128                                      # half-transparent strip
    rgba = np.dstack([face_rgb, alpha])
    rgba[:, :100, :3] = 0                                        # black under the transparent pixels
    photo = load_photo(make_file("cutout.png", encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    check_rgb8(photo, face_rgb.shape)
    assert (photo.rgb[:, :100] == 255).all()
    np.testing.assert_array_equal(photo.rgb[:, 110:], face_rgb[:, 110:])
    expected = np.rint(face_rgb[:, 100:110] * (128 / 255) + 255 * (127 / 255))
    assert np.abs(photo.rgb[:, 100:110] - expected).max() <= 1
    la = Image.fromarray(rgba, "RGBA").convert("LA")
    photo = load_photo(make_file("cutout_la.png", encode(la, "PNG")))
    check_rgb8(photo, face_rgb.shape)
    assert (photo.rgb[:, :100] == 255).all()


def test_palette(make_file, face_rgb):
    pal = Image.fromarray(face_rgb).quantize(64)
    photo = load_photo(make_file("pal.png", encode(pal, "PNG")))
    check_rgb8(photo, face_rgb.shape)
    np.testing.assert_array_equal(photo.rgb, np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0                                 # palette entry 0 transparent
    photo = load_photo(make_file("pal_t.png", encode(pal, "PNG", transparency=0)))
    check_rgb8(photo, face_rgb.shape)
    assert (photo.rgb[np.asarray(pal) == 0] == 255).all()


def test_16bit_grey_scaled_not_clipped(make_file, face_rgb):
    grey16 = (np.asarray(Image.fromarray(face_rgb).convert("L")).astype(np.uint16) * 257)  # full 16-bit range
    grey16[0, :4] = [0, 32896, 65535, 1000]
    path = make_file("grey16.png", b"")
    assert cv2.imwrite(str(path), grey16)
    assert Image.open(path).mode.startswith("I")                 # really read as 16-bit
    photo = load_photo(path)
    check_rgb8(photo, face_rgb.shape)
    assert list(photo.rgb[0, :4, 0]) == [0, 128, 255, 4]
    np.testing.assert_array_equal(photo.rgb[1:, :, 1], (grey16[1:] // 257).astype(np.uint8))


def test_48bit_png(make_file, face_rgb):
    rgb16 = np.minimum(face_rgb.astype(np.int64) * 257 + 100, 65535).astype(np.uint16)
    path = make_file("rgb48.png", b"")
    assert cv2.imwrite(str(path), rgb16[..., ::-1])              # OpenCV writes BGR
    photo = load_photo(path)
    check_rgb8(photo, face_rgb.shape)
    assert np.abs(photo.rgb.astype(int) - face_rgb).max() <= 1   # channel order and scale right


def test_cmyk_jpeg(make_file, face_rgb):
    cmyk = Image.fromarray(face_rgb).convert("CMYK")
    path = make_file("cmyk.jpg", encode(cmyk, "JPEG", quality=95))
    assert Image.open(path).mode == "CMYK"
    photo = load_photo(path)
    check_rgb8(photo, face_rgb.shape)
    assert np.abs(photo.rgb.astype(int) - face_rgb).mean() < 3


def test_float_tiff(make_file, face_rgb):
    grey = np.asarray(Image.fromarray(face_rgb).convert("L"))
    path = make_file("grey.tif", encode(Image.fromarray(grey.astype(np.float32) / 255.0, "F"), "TIFF"))
    photo = load_photo(path)
    check_rgb8(photo, face_rgb.shape)
    assert np.abs(photo.rgb[..., 0].astype(int) - grey).max() <= 1


def test_photo_from_array():
    from skimage import data
    astronaut = data.astronaut()
    photo = photo_from_array(astronaut, "astronaut.png")
    assert photo.name == "astronaut.png" and photo.rgb.shape == (512, 512, 3)
    np.testing.assert_array_equal(photo.rgb, astronaut)
    assert photo.analysis is photo.rgb and photo.focal_35mm is None
    assert photo.sha256 == photo_from_array(astronaut.copy(), "x").sha256 != photo_from_array(astronaut[::-1], "x").sha256
    grey = photo_from_array(data.camera(), "camera")
    assert grey.rgb.shape == (512, 512, 3)
    with pytest.raises(LikenessError) as info:
        photo_from_array(np.zeros((10, 10, 3), np.uint8), "tiny")
    assert info.value.code == "IMAGE_TOO_SMALL"

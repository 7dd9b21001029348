"""Masks of backend/segmentation.py: time per photo, face window vs whole image, contact sheet.

    .venv/bin/python scripts/segmentation_report.py timing [N]        median time of N London photos
    .venv/bin/python scripts/segmentation_report.py window [N]        hair: face window vs whole image
    .venv/bin/python scripts/segmentation_report.py sheet OUT.png [--wild K]

`window` pastes each London photo, at full resolution, into a canvas three times its size (filled
with the photo's background grey), so the face covers a ninth of the image as in a wide shot, and
compares the hair mask found there with the hair mask of the original photo (the reference):
with the face window, and from the whole image alone. `sheet` draws photo / hair / person / skin
rows; --wild adds K photos of wild_dev, whose licence is unclear: never commit such a sheet.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.imageio import load_photo, photo_from_array  # noqa: E402
from backend.landmarks import get_analyzer  # noqa: E402
from backend.segmentation import HAIR_WINDOW, Window, get_segmenter  # noqa: E402

FACES = ROOT.parent / "shared" / "data" / "faces"
LONDON = FACES / "london" / "neutral"
WILD = FACES / "wild_dev"
# London photos for the sheet: a fringe (003, 143), curls and loose strands (001, 069), short
# hair (017), hair tied back on dark skin (099).
SHEET_LONDON = ("003", "143", "001", "069", "017", "099")


def london(n: int) -> list[Path]:
    return sorted(LONDON.glob("*_03.jpg"))[:n]


def timing(n: int) -> None:
    analyzer, segmenter = get_analyzer(), get_segmenter()
    warm = load_photo(london(1)[0])
    segmenter.segment(warm, analyzer.detect(warm))          # first call: XNNPACK set-up
    times = []
    for path in london(n):
        photo = load_photo(path)
        face = analyzer.detect(photo)
        t = time.perf_counter()
        segmenter.segment(photo, face)
        times.append(time.perf_counter() - t)
    print(f"segment(): median {1000 * statistics.median(times):.0f} ms over {len(times)} London photos "
          f"({photo.width}x{photo.height}); min {1000 * min(times):.0f}, max {1000 * max(times):.0f} ms")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def window_study(n: int, factor: int = 3) -> None:
    analyzer, segmenter = get_analyzer(), get_segmenter()
    rows = []
    for path in london(n):
        photo = load_photo(path)
        face = analyzer.detect(photo)
        reference = segmenter.hair(photo, face.box)
        whole_here = segmenter.hair(photo, face.box, window_scale=None)
        # the same pixels in a canvas `factor` times larger, centred
        h, w = photo.height, photo.width
        grey = np.median(photo.rgb[:20].reshape(-1, 3), axis=0).astype(np.uint8)
        canvas = np.empty((h * factor, w * factor, 3), np.uint8)
        canvas[:] = grey
        oy, ox = (factor - 1) * h // 2, (factor - 1) * w // 2
        canvas[oy:oy + h, ox:ox + w] = photo.rgb
        wide = photo_from_array(canvas, path.name)
        wide_face = analyzer.detect(wide)
        windowed = segmenter.hair(wide, wide_face.box)[oy:oy + h, ox:ox + w]
        whole = segmenter.hair(wide, wide_face.box, window_scale=None)[oy:oy + h, ox:ox + w]
        # compare inside the hair window of the original (where the skin mask needs hair)
        win = Window.around(face.box, *HAIR_WINDOW)
        sl = (slice(max(0, win.y0), win.y0 + win.side), slice(max(0, win.x0), win.x0 + win.side))
        rows.append((path.stem, _iou(windowed[sl], reference[sl]), _iou(whole[sl], reference[sl]),
                     float(np.abs(windowed[sl] - reference[sl]).mean()), float(np.abs(whole[sl] - reference[sl]).mean()),
                     _iou(whole_here[sl], reference[sl])))
    print("photo    IoU(window) IoU(whole)  MAE(window) MAE(whole)   [original: IoU whole vs window]")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:10.3f} {r[2]:10.3f} {r[3]:11.3f} {r[4]:10.3f}   {r[5]:.3f}")
    med = np.median(np.array([r[1:] for r in rows]), axis=0)
    print(f"{'median':8s} {med[0]:10.3f} {med[1]:10.3f} {med[2]:11.3f} {med[3]:10.3f}   {med[4]:.3f}")


def sheet(out: Path, wild: int, tile: int = 200) -> None:
    analyzer, segmenter = get_analyzer(), get_segmenter()
    paths = [LONDON / f"{stem}_03.jpg" for stem in SHEET_LONDON]
    paths += sorted(WILD.glob("*.jpg"))[:wild]
    rows = []
    for path in paths:
        photo = load_photo(path)
        masks = segmenter.segment(photo, analyzer.detect(photo))
        skin_overlay = photo.rgb.astype(np.float32)
        skin_overlay[..., 1] += masks.skin * (255.0 - skin_overlay[..., 1]) * 0.6
        panels = [photo.rgb] + [np.repeat(m[..., None] * 255.0, 3, axis=2) for m in (masks.hair, masks.person, masks.skin)]
        panels.append(skin_overlay)
        rows.append(np.hstack([_tile(p, tile) for p in panels]))
    image = np.vstack(rows)
    header = np.full((28, image.shape[1], 3), 255, np.uint8)
    for i, label in enumerate(("photo", "hair", "person", "skin", "skin on photo")):
        cv2.putText(header, label, (i * tile + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.vstack([header, image]), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(out)


def _tile(image: np.ndarray, side: int) -> np.ndarray:
    """The image letterboxed (grey) into a side x side tile."""
    img = np.clip(image, 0, 255).astype(np.uint8)
    scale = side / max(img.shape[:2])
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    tile = np.full((side, side, 3), 128, np.uint8)
    y, x = (side - size[1]) // 2, (side - size[0]) // 2
    tile[y:y + size[1], x:x + size[0]] = small
    return tile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("timing")
    p.add_argument("n", type=int, nargs="?", default=8)
    p = sub.add_parser("window")
    p.add_argument("n", type=int, nargs="?", default=8)
    p = sub.add_parser("sheet")
    p.add_argument("out", type=Path)
    p.add_argument("--wild", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "timing":
        timing(args.n)
    elif args.cmd == "window":
        window_study(args.n)
    else:
        sheet(args.out, args.wild)


if __name__ == "__main__":
    main()

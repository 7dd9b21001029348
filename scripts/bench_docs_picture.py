"""Make docs/bench_contact_sheet.png: one contact-sheet row of the bench for the embedded demo photo
(skimage's astronaut, public domain), so the docs show a picture without any licensed face data.

Usage: python scripts/bench_docs_picture.py [--bundle out/bench/quick/bundles/astronaut]
(the bundle is reconstructed first when it is missing).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backend.bench.evaluate import Evaluator, photo_cells  # noqa: E402
from backend.bench.report import contact_sheet  # noqa: E402
from backend.bench.suite import row_caption  # noqa: E402
from backend.bundle import is_bundle  # noqa: E402
from backend.cli import demo_photo  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=Path("out/bench/quick/bundles/astronaut"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "bench_contact_sheet.png")
    a = ap.parse_args()
    photo = demo_photo()
    if not is_bundle(a.bundle):
        from backend.pipeline import Options, reconstruct
        reconstruct(photo, a.bundle, Options(overwrite=True))
    result = json.loads((a.bundle / "result.json").read_text())
    ev = Evaluator()
    appearance, rendering = ev.appearance(a.bundle, photo.rgb, result)
    rec = {"name": "astronaut.png", "runs": [{"timings_s": result["timings_s"]}], "appearance": appearance}
    cells = photo_cells(a.bundle, photo.rgb, rendering, result)
    contact_sheet([("demo", row_caption(rec), cells)], a.out, ["input", "mesh overlay", "re-render", "diffuse 1001"])
    print(a.out, appearance)
    return 0


if __name__ == "__main__":
    sys.exit(main())

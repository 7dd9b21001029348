"""`python -m backend bench`: speed, memory and reconstruction fidelity (docs/bench.md).

  python -m backend bench --data DIR [--pair-with DIR2] [--out DIR] [--device D] [--limit N] [--repeat K]
  python -m backend bench --synthetic N [--seed S] [--baseline projection|none] [--expressions] [--v0 DIR]
  python -m backend bench --quick
  python -m backend bench --maps N [--seed S] [--maps-tune | --maps-evidence] [--maps-eyes DIR]   (backend/bench/maps_truth.py)
  python -m backend bench --completion [--completion-photos] [--limit N]
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..paths import PROJECT_DIR

SHARED_FACES = PROJECT_DIR.parent / "shared" / "data" / "faces"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="folder of photos (JPEG/PNG; a .tem next to a photo = hand landmarks)")
    p.add_argument("--pair-with", type=Path, help="second folder with the same identities (same file-name prefix)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="also render and reconstruct N synthetic heads")
    p.add_argument("--quick", action="store_true", help="seconds per stage and peak memory for the demo photo")
    p.add_argument("--out", type=Path, help="report folder (default out/bench/<name>)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--limit", type=int, default=None, help="at most N photos per folder")
    p.add_argument("--repeat", type=int, default=None, help="reconstruct each photo K times (timings only; "
                                                              "default 1, --quick 3)")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--ict-dir", default=None)
    p.add_argument("--seed", type=int, default=0, help="synthetic set seed")
    p.add_argument("--textures", type=Path, default=SHARED_FACES / "london" / "neutral",
                   help="photos whose pipeline UV maps texture the synthetic heads")
    p.add_argument("--n-textures", type=int, default=6, help="how many of --textures to use (default 6)")
    p.add_argument("--texture-cache", type=Path, default=Path("out/bench_cache/textures"),
                   help="where the texture photos' bundles are kept between runs")
    p.add_argument("--backgrounds", type=Path, default=SHARED_FACES / "wild_dev",
                   help="photos whose corners become synthetic backgrounds")
    p.add_argument("--expressions", action="store_true",
                   help="synthetic heads with closed eyes (one or both) and crooked mouths instead of random "
                        "expressions (the same heads, poses and lights otherwise)")
    p.add_argument("--v0", type=Path, metavar="DIR",
                   help="a checkout of v0 (e.g. commit edc1308): the synthetic heads are reconstructed with its "
                        "code too, for the eye and mouth rows")
    p.add_argument("--no-exif", action="store_true", help="synthetic JPEGs without the EXIF focal length")
    p.add_argument("--no-appearance", action="store_true", help="skip re-render measures (SSIM/PSNR/LPIPS/identity)")
    p.add_argument("--report-from", type=Path, metavar="DIR",
                   help="only rewrite DIR/report.md from DIR/report.json (after a change to the report layout)")
    p.add_argument("--no-identity", action="store_true", help="skip the dlib identity measure")
    p.add_argument("--texture", default=None, metavar="STRATEGY",
                   help="texture strategy of the measured reconstructions (default: the pipeline's default)")
    p.add_argument("--baseline", default=None, metavar="STRATEGY|none",
                   help="texture strategy the relighting rows compare against (v0: projection). Default: "
                        "projection for --synthetic, none for --data; give it to compare photo sets too")
    p.add_argument("--baseline-rerun", action="store_true",
                   help="reconstruct the baseline even when its options equal the current ones (by default "
                        "the current bundle stands for it: the pipeline is deterministic)")
    p.add_argument("--no-relight", action="store_true",
                   help="skip the relighting rows (albedo, relit, shading and hair leakage, photo re-render)")
    p.add_argument("--maps", type=int, default=0, metavar="N",
                   help="the measured maps' rows: N synthetic heads of known detail normals, specular, roughness "
                        "and iris (backend/bench/maps_truth.py; --seed, --texture-cache for their albedo)")
    p.add_argument("--maps-tune", action="store_true", help="with --maps: grid-search the map settings on --seed")
    p.add_argument("--maps-evidence", action="store_true",
                   help="with --maps: where the specular evidence goes wrong on each head (docs/maps.md), instead of the scores")
    p.add_argument("--maps-eyes", type=Path, metavar="DIR",
                   help="the eyes' row on real photos: iris colour vs the photo's mean iris pixel (Delta E)")
    p.add_argument("--cancel-latency", action="store_true",
                   help="the longest wait a cancel can have, per stage (bench/cancel_latency.py; --texture-size, "
                        "--repeat, --texture)")
    p.add_argument("--completion", action="store_true",
                   help="texture completion on the held-out identities (bench/completion.py)")
    p.add_argument("--completion-data", type=Path, default=Path("out/generator_data"),
                   help="studio heads of scripts/build_generator_data.py (made when missing)")
    p.add_argument("--completion-identities", default=None, metavar="ID,ID,...",
                   help="completion on these London identities instead of the held-out ones (choosing the "
                        "generator's settings on training identities: never tune on the held-out)")
    p.add_argument("--completion-photos", action="store_true",
                   help="also the held-out real photos through the whole pipeline per strategy")
    p.add_argument("--guidance", type=float, default=0.05, help="identity guidance scale of the guided row (0: none)")
    p.add_argument("--variants", action="store_true", help="completion: also the generator's mirror variants")
    return p


def baseline_for(args, kind: str) -> str | None:
    """The baseline strategy of the synthetic set (`kind` "synthetic", on by default) or the photo sets."""
    if args.no_relight or args.baseline == "none":
        return None
    if args.baseline:
        return args.baseline
    return "projection" if kind == "synthetic" else None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.report_from:
        import json
        from . import report as rp
        rep = json.loads((args.report_from / "report.json").read_text())
        writer = rp.quick_markdown if "quick" in rep else rp.write_markdown
        print(writer(rep, args.report_from / "report.md"))
        return 0
    if args.maps or args.maps_eyes:
        from . import maps_truth
        argv_maps = ["--seed", str(args.seed), "--heads", str(args.maps or 1), "--textures", str(args.texture_cache),
                     "--out", str(args.out or Path("out") / "bench" / f"maps_seed{args.seed}")]
        if args.maps_tune:
            argv_maps.append("--tune")
        if args.maps_evidence:
            argv_maps.append("--evidence-diagnosis")
        if args.no_relight:
            argv_maps.append("--no-relight")
        if args.maps_eyes:
            argv_maps += ["--real", str(args.maps_eyes)] + (["--real-limit", str(args.limit)] if args.limit else [])
        return maps_truth.main(argv_maps)
    if args.cancel_latency:
        from .cancel_latency import main as cancel_main
        return cancel_main(["--texture-size", str(args.texture_size), "--repeat", str(args.repeat or 3)]
                           + (["--texture", args.texture] if args.texture else []))
    if args.completion:
        from .completion import main as completion_main
        return completion_main(args)
    if not (args.data or args.synthetic or args.quick):
        build_parser().print_help(sys.stderr)
        print("\nbench: give --data DIR, --synthetic N or --quick", file=sys.stderr)
        return 2
    if args.v0 is not None and not (args.v0 / "backend" / "bench" / "runner.py").is_file():
        print(f"bench: {args.v0} is not a checkout with backend/bench/runner.py", file=sys.stderr)
        return 2
    for d in (args.data, args.pair_with):
        if d is not None and not d.is_dir():
            print(f"bench: {d} is not a folder", file=sys.stderr)
            return 2

    from . import report as rp
    from . import suite

    if args.quick:
        title = "quick"
    elif args.data:
        title = args.data.name + (f"+{args.pair_with.name}" if args.pair_with else "") + (
            f"+synthetic{args.synthetic}" if args.synthetic else "")
    else:
        title = f"synthetic{args.synthetic}" + ("-eyes-mouth" if args.expressions else "")
    out_dir = args.out or Path("out") / "bench" / title
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"device": args.device, "texture_size": args.texture_size, "ict_dir": args.ict_dir}
    if args.texture:
        options["texture"] = args.texture
    meta = {"title": title, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": git_commit(),
            "command": "python -m backend bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "cpu_count": os.cpu_count(), "repeat": args.repeat or (3 if args.quick else 1),
            "load_average": [os.getloadavg()[0]]}
    rep: dict = {"meta": meta}
    t0 = time.perf_counter()
    session = suite.Session(out_dir, options, args.v0)
    meta["torch_threads"] = session.runner.ready.get("torch_threads")
    try:
        if args.quick:
            rep["quick"] = suite.run_quick(session, meta["repeat"])
            meta["load_average"].append(os.getloadavg()[0])
            session.close()
            rep["process_peak_rss_mb"] = session.maxrss_mb
            rep["meta"]["device"] = rep["quick"]["device"]
            text = rp.quick_markdown(rep, out_dir / "report.md")
            rp.write_json(rep, out_dir / "report.json")
            print(text)
            return 0

        from .evaluate import Evaluator
        evaluator = Evaluator(appearance=not (args.no_appearance and args.no_relight),
                              identity=not (args.no_identity or args.no_appearance), device="cpu")
        relight_photos = None if args.no_relight else session.variants(baseline_for(args, "data"), args.baseline_rerun)
        sheet, syn_sheet = [], []
        sets = []
        if args.data:
            for folder in [args.data] + ([args.pair_with] if args.pair_with else []):
                label = folder.name
                s = suite.run_photo_set(session, evaluator, suite.list_photos(folder, args.limit), label,
                                        meta["repeat"], sheet, relight_photos)
                s["landmarks"] = suite.landmark_summary(s["photos"])
                s["appearance"] = suite.appearance_summary(s["photos"])
                if relight_photos:
                    s["relight"] = suite.relight_summary(s["photos"], relight_photos)
                sets.append(s)
            rep["sets"] = sets
            if len(sets) == 2:
                rep["shape_consistency"] = suite.shape_consistency(sets[0], sets[1])
        if args.synthetic:
            variants = None if args.no_relight else session.variants(baseline_for(args, "synthetic"),
                                                                     args.baseline_rerun)
            rep["synthetic"] = suite.run_synthetic(session, args.synthetic, args.seed, args.textures,
                                                   args.backgrounds, not args.no_exif, syn_sheet, args.n_textures,
                                                   args.texture_cache, variants, evaluator.lpips,
                                                   "eyes_mouth" if args.expressions else "random")
        extra = [r["run"] for r in (rep.get("synthetic") or {}).get("samples", []) if r.get("run")]
        rep["speed"] = suite.speed_summary(sets, extra, session.cold_run)
        meta["device"] = ", ".join(rep["speed"].get("devices") or []) or args.device
        session.close()
        rep["process_peak_rss_mb"] = session.maxrss_mb
        pics = {}
        headers = ["input", "mesh overlay", "re-render", "diffuse 1001"]
        if sheet:
            rp.contact_sheet(sheet, out_dir / "contact_sheet.png", headers)
            pics["contact_sheet"] = "contact_sheet.png"
        if syn_sheet:
            rp.contact_sheet(syn_sheet, out_dir / "synthetic_sheet.png",
                             ["synthetic input", "mesh overlay", "pipeline error", "mean-face error",
                              "relit truth", "relit current"])
            pics["synthetic_sheet"] = "synthetic_sheet.png"
        rep["pictures"] = pics
        meta["bench_s"] = time.perf_counter() - t0
        meta["load_average"].append(os.getloadavg()[0])
        rp.write_json(rep, out_dir / "report.json")
        text = rp.write_markdown(rep, out_dir / "report.md")
        print(text.split("## Pictures")[0])
        print(f"bench: report in {(out_dir / 'report.md').absolute()} ({meta['bench_s']:.0f} s)", file=sys.stderr)
        return 0
    finally:
        session.close()
        close_segmenters()


def close_segmenters() -> None:
    """Close the mask nets now: at interpreter exit MediaPipe's dispatcher may already be shut down, and
    segmentation.py's own atexit close then fails noisily."""
    mod = sys.modules.get("backend.segmentation")
    if mod is not None:
        mod._close_segmenters()

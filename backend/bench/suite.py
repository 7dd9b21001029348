"""The bench runs: a folder of photos (optionally paired with a second), synthetic heads, the quick check.

Every reconstruction runs in the runner subprocess (runner.py), one at a time; the measures that
need networks (ST-LPIPS, dlib) run here in the parent *between* reconstructions, so they neither
share the measured process's memory nor compete with it for the CPU.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pipeline import STAGE_NAMES as STAGES
from . import metrics
from .evaluate import Evaluator, photo_cells

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SHEET_ROWS = 24


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def list_photos(folder: Path, limit: int | None = None) -> list[Path]:
    photos = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return photos[:limit] if limit else photos


def prefix_of(name: str) -> str:
    """Identity key of a file name: the part of the stem before the first '_' (001_03.jpg -> 001)."""
    return Path(name).stem.split("_")[0]


@dataclass(frozen=True)
class Variant:
    """A way to reconstruct that the relighting rows compare: the current default, or a baseline."""
    key: str             # "current" or "baseline" (report.json keys)
    label: str           # for people: "current default (projection)", "v0 projection"
    overrides: dict      # options over the session's
    reuse: bool = False  # its options resolve to the current ones: the current bundle stands for it


class Session:
    """One runner process for the whole bench invocation (the first request of it is the cold one)."""

    def __init__(self, out_dir: Path, options: dict, v0_dir: Path | None = None):
        from .runner import RunnerClient
        self.out_dir = out_dir
        self.options = options
        self.runner = RunnerClient(log_path=out_dir / "runner.log")
        # v0's own code (a checkout of it, e.g. commit edc1308) in a runner of its own, for the rows that
        # compare with v0's geometry; started on first use, never timed.
        self.v0_dir = Path(v0_dir) if v0_dir else None
        self.v0_runner = None
        self.cold_done = False
        self.cold_run = None      # the first reconstruct of the process, whatever it was for
        self.maxrss_mb = None

    def current_strategy(self) -> str:
        from ..pipeline import parse_options
        return parse_options({k: v for k, v in self.options.items() if v is not None}).texture

    def variants(self, baseline: str | None, rerun_identical: bool = False) -> list[Variant]:
        """The current default, and the baseline strategy when one is asked for. A baseline whose
        options resolve to the current ones (v0 while projection is the default) would make the same
        bundle byte for byte (the pipeline is deterministic), so it reuses the current one unless
        `rerun_identical`."""
        from ..pipeline import parse_options
        current = Variant("current", f"current default ({self.current_strategy()})", {})
        if not baseline:
            return [current]
        same = (parse_options({k: v for k, v in self.options.items() if v is not None})
                == parse_options({k: v for k, v in dict(self.options, texture=baseline).items() if v is not None}))
        return [current, Variant("baseline", f"v0 {baseline}" if baseline == "projection" else baseline,
                                 {"texture": baseline}, reuse=same and not rerun_identical)]

    def reconstruct(self, photo: str, bundle: Path, options: dict | None = None, **extra) -> dict:
        ans = self.runner.request(op="reconstruct", photo=photo, out=str(Path(bundle).absolute()),
                                  options=dict(self.options, overwrite=True, **(options or {})), **extra)
        ans["cold"] = not self.cold_done
        if ans["cold"]:
            ans["spawn_to_ready_s"] = self.runner.ready["spawn_to_ready_s"]
            ans["import_s"] = self.runner.ready["import_s"]
            ans["warm_up_s"] = self.runner.ready.get("warm_up_s")
        if ans["cold"] and ans.get("event") == "result":
            self.cold_run = run_record(ans)
            self.cold_run["photo"] = Path(photo).name
        self.cold_done = True
        return ans

    def reconstruct_v0(self, photo: str, bundle: Path) -> dict:
        """The photo reconstructed by v0's checkout (--v0), its defaults, into `bundle`."""
        from .runner import RunnerClient
        if self.v0_runner is None:
            self.v0_runner = RunnerClient(log_path=self.out_dir / "runner.v0.log", project_dir=self.v0_dir)
        opts = {k: self.options[k] for k in ("device", "texture_size", "ict_dir") if k in self.options}
        return self.v0_runner.request(op="reconstruct", photo=photo, out=str(Path(bundle).absolute()),
                                      options=dict(opts, overwrite=True))

    def close(self) -> None:
        self.maxrss_mb = self.runner.close()
        if self.v0_runner is not None:
            self.v0_runner.close()


def run_record(ans: dict) -> dict:
    res = ans["result"]
    timings = dict(res["timings_s"])
    rec = {"timings_s": timings, "wall_s": ans["wall_s"], "peak_rss_mb": ans["peak_rss_mb"], "cold": ans["cold"],
           "device": ans.get("device")}
    if "write" not in timings and "total" in timings:
        # result.json is serialised before the write stage ends, so v0 bundles lack it: total minus the rest.
        timings["write"] = round(timings["total"] - sum(timings.get(s, 0.0) for s in STAGES[:-1]), 4)
        rec["write_derived"] = True
    for k in ("spawn_to_ready_s", "import_s", "warm_up_s", "cuda_peak_mb"):
        if k in ans:
            rec[k] = ans[k]
    return rec


def run_photo_set(session: Session, evaluator: Evaluator, photos: list[Path], label: str, repeat: int = 1,
                  sheet_rows: list | None = None, variants: list[Variant] | None = None) -> dict:
    """Reconstruct and measure every photo; returns {"label", "folder", "photos": [records]}. With
    `variants` (Session.variants), the relighting measures of each (a baseline is reconstructed into
    bundles/<label>.<key>/)."""
    from ..imageio import load_photo
    from ..landmarks import read_tem
    bundles = session.out_dir / "bundles" / label
    records = []
    for i, path in enumerate(photos):
        t0 = time.perf_counter()
        tem = path.with_suffix(".tem")
        rec = {"name": path.name, "path": str(path), "ok": False, "runs": []}
        bundle = bundles / path.stem
        ans = session.reconstruct(str(path.absolute()), bundle, detect=tem.exists())
        if ans.get("event") != "result":
            rec["error"] = {"code": ans.get("code"), "message": ans.get("message")}
            records.append(rec)
            log(f"[{label} {i + 1}/{len(photos)}] {path.name}: FAILED {ans.get('code')}: {ans.get('message')}")
            continue
        rec["runs"].append(run_record(ans))
        for _ in range(repeat - 1):
            again = session.reconstruct(str(path.absolute()), session.out_dir / "bundles" / ".repeat")
            if again.get("event") == "result":
                rec["runs"].append(run_record(again))
        res = ans["result"]
        rec.update(ok=True, bundle=str(bundle), device=ans.get("device"), metrics=res["metrics"],
                   warnings=res["warnings"], pose={k: res["pose"][k] for k in ("yaw_deg", "pitch_deg", "roll_deg")},
                   focal_source=res["camera"]["focal_source"])
        photo = load_photo(path)
        if tem.exists():
            try:
                rec["landmarks"] = evaluator.landmarks(bundle, res, ans.get("detection_points"), read_tem(tem))
            except (ValueError, IndexError) as err:
                rec["landmarks_error"] = str(err)
        appearance, rendering = evaluator.appearance(bundle, photo.rgb, res)
        rec["appearance"] = appearance
        if variants:
            with measure_threads():
                rec["relight"] = photo_relight(session, evaluator, path, photo, bundle, res, variants,
                                               session.out_dir / "bundles" / label)
        if sheet_rows is not None and len(sheet_rows) < SHEET_ROWS:
            sheet_rows.append((f"{label}/{path.name}", row_caption(rec), photo_cells(bundle, photo.rgb, rendering, res)))
        records.append(rec)
        a = rec["appearance"]
        lm = rec.get("landmarks", {}).get("fit")
        log(f"[{label} {i + 1}/{len(photos)}] {path.name}: {res['timings_s']['total']:.2f} s, "
            f"peak {ans['peak_rss_mb']:.0f} MB" + (f", NME {np.mean(lm):.3f}" if lm else "")
            + (f", SSIM {a['ssim']:.3f}" if "ssim" in a else "")
            + (f", id {a['id_distance']:.3f}" if "id_distance" in a else "")
            + relight_log(rec.get("relight"))
            + f" (measures {time.perf_counter() - t0 - ans['wall_s'] * repeat:.1f} s)")
    return {"label": label, "folder": str(photos[0].parent) if photos else "", "photos": records}


def measure_threads():
    """Torch threads for the bench's own renders: no more than the idle cores (threads.idle_cpu_threads;
    on a busy 2-core machine 2 threads rasterized 3-5x slower than 1). The runner is idle meanwhile."""
    from ..threads import idle_cpu_threads, torch_threads
    return torch_threads(idle_cpu_threads())


def photo_relight(session: Session, evaluator: Evaluator, path: Path, photo, bundle: Path, result: dict,
                  variants: list[Variant], bundles: Path) -> dict:
    """Shading leakage, photo re-render and hair leakage (relight.photo_measures) of each variant."""
    from ..errors import LikenessError
    from . import relight
    from .render import head_of_bundle
    try:
        skin, hair = relight.photo_masks(photo, result)
    except LikenessError as err:
        return {"error": f"{err.code}: {err.message}"}
    out = {}
    for v in variants:
        if v.reuse:   # the same bundle: the same numbers (variants() puts "current" first)
            out[v.key] = dict(out["current"], reused=True)
            continue
        b = bundle
        if v.key != "current":
            b = bundles.parent / f"{bundles.name}.{v.key}" / path.stem
            ans = session.reconstruct(str(path.absolute()), b, options=v.overrides)
            if ans.get("event") != "result":
                out[v.key] = {"error": f"{ans.get('code')}: {ans.get('message')}"}
                continue
        out[v.key], _ = relight.photo_measures(head_of_bundle(b), photo.rgb, skin, hair, evaluator.lpips)
        out[v.key]["reused"] = False
    return out


def relight_log(rel: dict | None) -> str:
    m = (rel or {}).get("current") or {}
    if "hair_leakage" not in m:
        return ""
    leak = m.get("shading_leakage")
    return (f", hair {100 * m['hair_leakage']:.1f} %, leakage " + ("n/a" if leak is None else f"{leak:.2f}")
            + (f", re-render SSIM {m['rerender_ssim']:.3f}" if "rerender_ssim" in m else ""))


def row_caption(rec: dict) -> str:
    parts = [rec["name"]]
    t = rec["runs"][0]["timings_s"]["total"] if rec.get("runs") else None
    if t is not None:
        parts.append(f"{t:.1f}s")
    lm = rec.get("landmarks", {}).get("fit")
    if lm:
        parts.append(f"NME {np.mean(lm):.3f}")
    a = rec.get("appearance", {})
    if "ssim" in a:
        parts.append(f"SSIM {a['ssim']:.2f}")
    if "lpips" in a:
        parts.append(f"LPIPS {a['lpips']:.2f}")
    if "id_distance" in a:
        parts.append(f"id {a['id_distance']:.2f}")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# Summaries


def speed_summary(sets: list[dict], extra_runs: list[dict] = (), cold_run: dict | None = None) -> dict:
    runs = [r for s in sets for p in s["photos"] for r in p["runs"]] + list(extra_runs)
    warm = [r for r in runs if not r["cold"]]
    cold = [r for r in runs if r["cold"]] or ([cold_run] if cold_run else [])
    use = warm or runs
    out = {"runs": len(runs), "warm_runs": len(warm), "stages": {},
           "write_derived": any(r.get("write_derived") for r in runs)}
    for st in STAGES + ("total",):
        vals = [r["timings_s"].get(st) for r in use if r["timings_s"].get(st) is not None]
        out["stages"][st] = metrics.summarize(vals)
    out["peak_rss_mb"] = metrics.summarize([r["peak_rss_mb"] for r in runs])
    if any("cuda_peak_mb" in r for r in runs):
        out["cuda_peak_mb"] = metrics.summarize([r.get("cuda_peak_mb") for r in runs])
    if cold:
        c = cold[0]
        out["cold"] = {"timings_s": c["timings_s"], "spawn_to_ready_s": c.get("spawn_to_ready_s"),
                       "import_s": c.get("import_s"), "warm_up_s": c.get("warm_up_s"),
                       "process_start_to_bundle_s": (c.get("spawn_to_ready_s") or 0.0) + c["wall_s"],
                       "photo": c.get("photo")}
    out["devices"] = sorted({r.get("device") for r in runs + cold if r.get("device")})
    return out


def landmark_summary(records: list[dict]) -> dict | None:
    from ..landmarks import frl_pairs
    with_lm = [r for r in records if r.get("landmarks")]
    if not with_lm:
        return None
    frl, ibug = frl_pairs()
    out = {"photos": len(with_lm), "pairs": [[int(a), int(b)] for a, b in zip(frl, ibug)], "methods": {}}
    for method in ("fit", "mediapipe", "fit_ict68"):
        rows = [r["landmarks"][method] for r in with_lm if method in r["landmarks"]]
        if not rows:
            continue
        arr = np.asarray(rows)                     # (photos, pairs)
        per_photo = arr.mean(1)
        out["methods"][method] = {"per_photo": metrics.summarize(per_photo), "per_pair_mean": arr.mean(0).tolist(),
                                  "failure_rate_0.08": float((per_photo > 0.08).mean())}
    if "fit" in out["methods"] and "mediapipe" in out["methods"]:
        a = np.asarray([np.mean(r["landmarks"]["fit"]) for r in with_lm if "mediapipe" in r["landmarks"]])
        b = np.asarray([np.mean(r["landmarks"]["mediapipe"]) for r in with_lm if "mediapipe" in r["landmarks"]])
        out["fit_not_worse_share"] = float((a <= b + 1e-9).mean())
    return out


def appearance_summary(records: list[dict]) -> dict | None:
    ok = [r["appearance"] for r in records if r.get("ok") and "ssim" in r.get("appearance", {})]
    if not ok:
        return None
    out = {"photos": len(ok)}
    for k in ("ssim", "psnr_db", "lpips", "id_distance"):
        vals = [a[k] for a in ok if k in a]
        if vals:
            out[k] = metrics.summarize(vals)
    ids = [a["id_distance"] for a in ok if "id_distance" in a]
    if ids:
        out["id_same_share"] = float(np.mean(np.asarray(ids) < metrics.DLIB_SAME_PERSON))
    return out


def relight_summary(records: list[dict], variants: list[Variant]) -> dict | None:
    """Per variant: each photo measure summarised, and its target checked on the mean (relight.TARGETS)."""
    from . import relight
    rows = [r["relight"] for r in records if r.get("ok") and r.get("relight") and "error" not in r["relight"]]
    if not rows:
        return None
    out = {"photos": len(rows), "variants": {v.key: v.label for v in variants},
           "reused": {v.key: v.reuse for v in variants}, "measures": {}, "targets": {}}
    for v in variants:
        got = [r[v.key] for r in rows if v.key in r and "error" not in r[v.key]]
        m = {k: metrics.summarize([g.get(k) for g in got]) for k in relight.PHOTO_MEASURES}
        m["uniform_shading"] = metrics.summarize([g.get("uniform_shading") for g in got])
        m["with_lighting"] = sum(bool(g.get("lighting")) for g in got)
        out["measures"][v.key] = m
        out["targets"][v.key] = {k: relight.check_target(k, m[k]["mean"] if m[k]["n"] else None)
                                 for k in relight.TARGETS}
    return out


def shape_consistency(set_a: dict, set_b: dict) -> dict | None:
    """Neutral-expression (identity-only) shapes of photos with the same file-name prefix vs
    different prefixes: mean per-vertex distance over the narrow face region (mm), no alignment
    (all identity shapes live in the same model frame)."""
    from ..bundle import load_bundle
    from .synthetic import FACE_IDS

    def shapes(s):
        out = {}
        for r in s["photos"]:
            if r.get("ok"):
                out.setdefault(prefix_of(r["name"]), load_bundle(Path(r["bundle"])).basis_vertices[FACE_IDS])
        return out

    a, b = shapes(set_a), shapes(set_b)
    ka, kb = sorted(a), sorted(b)
    common = sorted(set(ka) & set(kb))
    if not common:
        return None
    A = np.stack([a[k] for k in ka]).astype(np.float64)
    B = np.stack([b[k] for k in kb]).astype(np.float64)
    # (|A|, |B|) mean per-vertex distance in mm.
    dist = np.stack([10.0 * np.linalg.norm(A[i][None] - B, axis=-1).mean(1) for i in range(len(A))])
    same_mask = np.array([[x == y for y in kb] for x in ka])
    same, diff = dist[same_mask], dist[~same_mask]
    return {"identities_a": len(ka), "identities_b": len(kb), "same_pairs": int(same_mask.sum()),
            "different_pairs": int((~same_mask).sum()), "same_mm": metrics.summarize(same),
            "different_mm": metrics.summarize(diff), "auc": metrics.verification_auc(same, diff),
            "same_closer_than_all_others_share": float(np.mean([
                dist[i, j] <= dist[i][~same_mask[i]].min() for i, j in zip(*np.nonzero(same_mask))]))}


# ---------------------------------------------------------------------------------------------
# Synthetic


def run_synthetic(session: Session, n: int, seed: int, textures_dir: Path | None, backgrounds_dir: Path | None,
                  exif_focal: bool, sheet_rows: list | None, n_textures: int = 6,
                  cache: Path = Path("out/bench_cache/textures"), variants: list[Variant] | None = None,
                  lpips=None, expression_set: str = "random") -> dict:
    """Render, reconstruct and measure N synthetic heads. With `variants` (Session.variants), the
    relighting measures of each variant (a baseline reconstructed into synthetic/bundles.<key>/). The
    eye and mouth measures of every head (eyes_mouth_errors_mm), for v0 too when the session has --v0;
    `expression_set` "eyes_mouth" gives the heads closed eyes and crooked mouths (sample_eyes_mouth)."""
    from ..facemodel import load_face_model
    from .render import mesh_from_model, render_vertex_colours
    from .synthetic import (FACE_IDS, eyes_mouth_errors_mm, load_backgrounds, make_sample, texture_sources,
                            vertex_errors_mm)

    out_dir = session.out_dir / "synthetic"
    model = load_face_model(session.options.get("ict_dir"), "cpu")
    tex_photos = []
    if textures_dir is not None and Path(textures_dir).is_dir():
        allp = list_photos(textures_dir)
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(allp), size=min(n_textures, len(allp)), replace=False)) if allp else []
        tex_photos = [allp[i] for i in pick]
    log(f"synthetic: texture maps from {len(tex_photos)} photos (cached in {cache})")
    textures = texture_sources(session, tex_photos, cache)
    backgrounds = load_backgrounds(backgrounds_dir)
    mean_face = model.neutral.cpu().numpy()
    from ..pipeline import load_correspondence
    corr = load_correspondence()
    samples = []
    errs = {"fit": [], "landmark_only": [], "true_landmarks": [], "mean_face": []}
    for i in range(n):
        t0 = time.perf_counter()
        s = make_sample(i, seed, model, textures, backgrounds, out_dir, expression_set=expression_set)
        truth = np.load(s.truth)["vertices"]
        rec = {"name": s.name, "image": str(s.image), "params": s.params, "ok": False}
        baseline_path = out_dir / "baseline" / f"{s.name}.npz"
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        bundle = out_dir / "bundles" / s.name
        ans = session.reconstruct(str(s.image.absolute()), bundle, landmark_fit=str(baseline_path.absolute()))
        e_mean = vertex_errors_mm(mean_face, truth)
        rec["mean_face_mm"] = float(e_mean.mean())
        if ans.get("event") != "result":
            rec["error"] = {"code": ans.get("code"), "message": ans.get("message")}
            log(f"[synthetic {i + 1}/{n}] {s.name}: FAILED {ans.get('code')}: {ans.get('message')}")
            samples.append(rec)
            continue
        from ..bundle import load_bundle
        fitted = load_bundle(bundle).vertices
        e_fit = vertex_errors_mm(fitted, truth)
        e_lm = vertex_errors_mm(np.load(baseline_path)["vertices"], truth)
        true_uv = true_landmarks_px(s.truth, corr)
        e_true = vertex_errors_mm(fit_true_landmarks(model, corr, true_uv, s.truth), truth)
        det_nme = detector_nme(ans.get("detection_points"), true_uv, corr)
        errs["fit"].append(e_fit)
        errs["landmark_only"].append(e_lm)
        errs["true_landmarks"].append(e_true)
        errs["mean_face"].append(e_mean)
        res = ans["result"]
        rot_true = np.load(s.truth)["rotation"]
        rel = np.asarray(res["pose"]["rotation"]).T @ rot_true
        pose_err = float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))))
        rec.update(ok=True, bundle=str(bundle), run=run_record(ans), fit_mm=float(e_fit.mean()),
                   landmark_only_mm=float(e_lm.mean()), fitted_yaw_deg=res["pose"]["yaw_deg"],
                   yaw_error_deg=res["pose"]["yaw_deg"] - s.params["yaw_deg"], rotation_error_deg=pose_err,
                   true_landmarks_mm=float(e_true.mean()), detector_nme=det_nme)
        shapes = {"fit": fitted, "landmark_only": np.load(baseline_path)["vertices"], "mean_face": mean_face}
        if session.v0_dir is not None:
            v0_bundle = out_dir / "bundles.v0" / s.name
            v0 = session.reconstruct_v0(str(s.image.absolute()), v0_bundle)
            if v0.get("event") == "result":
                shapes["v0"] = load_bundle(v0_bundle).vertices
            else:
                rec["v0_error"] = {"code": v0.get("code"), "message": v0.get("message")}
        rec["eyes_mouth"] = {k: eyes_mouth_errors_mm(v, truth) for k, v in shapes.items()}
        relit = None
        if variants:
            with measure_threads():
                rec["relight"], relit = synthetic_relight(session, s, i, seed, bundle, model, variants, lpips, out_dir)
        samples.append(rec)
        if sheet_rows is not None and len(sheet_rows) < SHEET_ROWS:
            sheet_rows.append((f"synthetic/{s.name}", f"{s.name}  yaw {s.params['yaw_deg']:+.0f}  "
                               f"fit {e_fit.mean():.2f} mm  mean face {e_mean.mean():.2f} mm"
                               + synthetic_relight_caption(rec.get("relight")),
                               synthetic_cells(s, bundle, model, truth, e_fit, e_mean, relit)))
        log(f"[synthetic {i + 1}/{n}] {s.name}: yaw {s.params['yaw_deg']:+.0f}, fit {e_fit.mean():.2f} mm, "
            f"landmark-only {e_lm.mean():.2f} mm, true landmarks {e_true.mean():.2f} mm, "
            f"mean face {e_mean.mean():.2f} mm, detector NME {det_nme:.3f}, eyes "
            + " / ".join(f"{k} {np.mean(m['eye_closure_mm']):.1f}" for k, m in rec["eyes_mouth"].items())
            + " mm, mouth corners "
            + " / ".join(f"{k} {np.mean(m['mouth_corner_mm']):.1f}" for k, m in rec["eyes_mouth"].items()) + " mm"
            + synthetic_relight_caption(rec.get("relight"), ", ")
            + f" ({time.perf_counter() - t0:.1f} s)")
    ok = [r for r in samples if r["ok"]]
    out = {"n": n, "seed": seed, "succeeded": len(ok), "exif_focal": exif_focal, "expression_set": expression_set,
           "textures": [p.name for p in tex_photos], "backgrounds": str(backgrounds_dir) if backgrounds else "noise",
           "samples": samples, "methods": {}}
    for k, lst in errs.items():
        if lst:
            pooled = np.concatenate(lst)
            out["methods"][k] = {"pooled_mm": metrics.summarize(pooled),
                                 "per_image_mean_mm": metrics.summarize([e.mean() for e in lst])}
    bins = [(0, 20), (20, 40), (40, 61)]
    out["by_yaw"] = []
    for lo, hi in bins:
        sel = [r for r in ok if lo <= abs(r["params"]["yaw_deg"]) < hi]
        out["by_yaw"].append({"yaw": f"{lo}-{min(hi, 60)}", "n": len(sel),
                              "fit_mm": float(np.mean([r["fit_mm"] for r in sel])) if sel else float("nan"),
                              "landmark_only_mm": float(np.mean([r["landmark_only_mm"] for r in sel])) if sel else float("nan"),
                              "mean_face_mm": float(np.mean([r["mean_face_mm"] for r in sel])) if sel else float("nan"),
                              "failed": sum(1 for r in samples if not r["ok"] and lo <= abs(r["params"]["yaw_deg"]) < hi)})
    if variants:
        out["relight"] = synthetic_relight_summary(ok, variants, bins)
    out["eyes_mouth"] = eyes_mouth_summary(ok)
    if ok:
        out["rotation_error_deg"] = metrics.summarize([r["rotation_error_deg"] for r in ok])
        out["yaw_error_deg"] = metrics.summarize([r["yaw_error_deg"] for r in ok])
        out["abs_yaw_error_deg"] = metrics.summarize([abs(r["yaw_error_deg"]) for r in ok])
        out["fit_beats_mean_face_share"] = float(np.mean([r["fit_mm"] < r["mean_face_mm"] for r in ok]))
        out["detector_nme"] = metrics.summarize([r["detector_nme"] for r in ok])
    return out


CLOSED_EYE_MM = 5.0   # a true lid opening under this counts as a closed eye (neutral ICT: 11 mm)


def eyes_mouth_summary(ok: list[dict]) -> dict | None:
    """Per method (fit, landmark_only, mean_face, v0), over the heads every method reconstructed (so the
    rows compare the same eyes): mean eye-closure error over all eyes, over the closed ones (true opening
    under CLOSED_EYE_MM) and the open ones, and the mean mouth-corner error."""
    methods = [k for k in ("fit", "landmark_only", "v0", "mean_face") if any(k in r.get("eyes_mouth", {}) for r in ok)]
    recs = [r for r in ok if r.get("eyes_mouth") and all(k in r["eyes_mouth"] for k in methods)]
    if not recs:
        return None
    opening = np.asarray([r["eyes_mouth"][methods[0]]["true_opening_mm"] for r in recs])      # (heads, 2)
    closed = opening < CLOSED_EYE_MM
    out = {"heads": len(recs), "eyes_closed": int(closed.sum()), "eyes_open": int((~closed).sum()),
           "heads_left_out": len(ok) - len(recs), "methods": {}}
    for k in methods:
        eye = np.asarray([r["eyes_mouth"][k]["eye_closure_mm"] for r in recs])
        mouth = np.asarray([r["eyes_mouth"][k]["mouth_corner_mm"] for r in recs])
        out["methods"][k] = {"eye_closure_mm": metrics.summarize(eye.ravel()),
                             "eye_closure_closed_mm": metrics.summarize(eye[closed]),
                             "eye_closure_open_mm": metrics.summarize(eye[~closed]),
                             "mouth_corner_mm": metrics.summarize(mouth.ravel())}
    return out


def synthetic_relight(session: Session, sample, index: int, seed: int, bundle: Path, model, variants: list[Variant],
                      lpips, out_dir: Path) -> tuple[dict, tuple]:
    """Albedo error, relit error and leakage against the true shading of each variant's bundle; and
    the relit pictures (truth, current) for the sheet."""
    from . import relight
    from .render import head_of_bundle
    from .synthetic import relight_light, truth_head, truth_light
    truth = truth_head(sample.truth, model)   # the truth relit render is shared by the variants
    capture = truth_light(np.load(sample.truth))
    new_light = relight_light(seed, index)
    side = sample.params.get("side", 512)
    truth_relit = relight.relit_render(truth, new_light, side)
    out = {"capture_light": capture.kind, "relight_light": new_light.to_dict()}
    from .evaluate import bbox, square_box
    h, w = truth_relit.covered.shape
    box = square_box(bbox(truth_relit.covered, 0.0), 1.15, w, h) if truth_relit.covered.any() else None
    pictures = (truth_relit.image, None, box)
    for v in variants:
        if v.reuse:   # the same bundle: the same numbers (variants() puts "current" first)
            out[v.key] = dict(out["current"], reused=True)
            continue
        b = bundle
        if v.key != "current":
            b = out_dir / f"bundles.{v.key}" / sample.name
            ans = session.reconstruct(str(sample.image.absolute()), b, options=v.overrides)
            if ans.get("event") != "result":
                out[v.key] = {"error": f"{ans.get('code')}: {ans.get('message')}"}
                continue
        head = head_of_bundle(b)
        m = relight.albedo_error(head, truth)
        rend = relight.relit_render(head, new_light, side, m.get("albedo_gain"))
        m.update(relight.relit_error(rend, truth_relit, lpips))
        m.update(relight.true_shading_leakage(head, truth, capture))
        m.update(relight.oracle_relit_error(head, truth, new_light, truth_relit, side))
        m["reused"] = False
        out[v.key] = m
        if v.key == "current":
            pictures = (truth_relit.image, rend.image, box)
    return out, pictures


def synthetic_relight_caption(rel: dict | None, sep: str = "  ") -> str:
    m = (rel or {}).get("current") or {}
    if "relit_psnr_db" not in m:
        return ""
    return (f"{sep}albedo {m.get('albedo_psnr_db', float('nan')):.1f} dB{sep}relit {m['relit_psnr_db']:.1f} dB"
            f" ({rel['capture_light']} -> {rel['relight_light']['kind']})")


def synthetic_relight_summary(ok: list[dict], variants: list[Variant], bins: list[tuple[int, int]]) -> dict:
    """Each relighting measure per variant: over all samples, per yaw bin (the geometry rows' bins) and
    per capture light; the synthetic targets (relight.synthetic_targets)."""
    from . import relight
    recs = [r for r in ok if r.get("relight")]

    def group(sel: list[dict]) -> dict:
        g = {"n": len(sel)}
        for v in variants:
            got = [r["relight"][v.key] for r in sel if v.key in r["relight"] and "error" not in r["relight"][v.key]]
            g[v.key] = {k: metrics.summarize([x.get(k) for x in got]) for k in relight.SYNTHETIC_MEASURES}
        return g

    by_yaw = []
    for lo, hi in bins:
        b = group([r for r in recs if lo <= abs(r["params"]["yaw_deg"]) < hi])
        by_yaw.append({"yaw": f"{lo}-{min(hi, 60)}", **b})
    out = {"variants": {v.key: v.label for v in variants}, "reused": {v.key: v.reuse for v in variants},
           "all": group(recs), "by_yaw": by_yaw,
           "by_capture_light": {kind: group([r for r in recs if r["relight"]["capture_light"] == kind])
                                for kind in ("sh", "directional")}}
    out["targets"] = relight.synthetic_targets(by_yaw) if any(v.key == "baseline" for v in variants) else None
    return out


def true_landmarks_px(truth_path: Path, corr) -> np.ndarray:
    """(478, 2) where MediaPipe's landmarks truly are in a synthetic image: the correspondence's surface
    points on the true mesh, projected with the true camera."""
    from ..camera import Intrinsics
    from .render import screen_points
    t = np.load(truth_path)
    params = json.loads(str(t["params"]))
    side = params.get("side", 512)
    k = Intrinsics(float(t["focal_px"]), side / 2, side / 2, side, side)
    lm = corr.on_surface(t["vertices"])
    return screen_points(lm, k, t["rotation"], t["translation"]).numpy()[:, :2]


def fit_true_landmarks(model, corr, uv: np.ndarray, truth_path: Path) -> np.ndarray:
    """Landmark-only fitting on the true landmark positions: what the fitter recovers without any
    detector error (an upper bound for landmark-only fitting)."""
    from ..camera import Intrinsics
    from ..fitting import fit_landmarks
    t = np.load(truth_path)
    side = json.loads(str(t["params"])).get("side", 512)
    k = Intrinsics(float(t["focal_px"]), side / 2, side / 2, side, side)
    return fit_landmarks(model, corr, uv.astype(np.float32), k, {}).vertices.cpu().numpy()


def detector_nme(points, true_uv: np.ndarray, corr) -> float:
    """Mean distance of MediaPipe's detections to the true landmark positions (landmarks the fit uses),
    divided by the true outer-eye-corner distance."""
    if points is None:
        return float("nan")
    from ..fitting import inter_ocular_px
    used = corr.weight > 0
    err = np.linalg.norm(np.asarray(points)[used] - true_uv[used], axis=1)
    return float(err.mean() / inter_ocular_px(true_uv))


def error_colours(err_mm: np.ndarray, n_vertices: int, vmax: float = 10.0) -> np.ndarray:
    import cv2
    from .synthetic import FACE_IDS
    v = np.clip(err_mm / vmax, 0, 1)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1]
    out = np.full((n_vertices, 3), 200, np.float32)
    out[FACE_IDS] = lut[np.round(v * 255).astype(int)]
    return out


def synthetic_cells(sample, bundle: Path, model, truth: np.ndarray, e_fit: np.ndarray, e_mean: np.ndarray,
                    relit: tuple | None = None) -> list:
    """input, preview, error maps of the pipeline and the mean face; with `relit` (truth and current
    images under the relighting test light, and the head's box), those two as well."""
    import cv2
    from .evaluate import cell
    from .render import mesh_from_model, render_vertex_colours
    img = cv2.cvtColor(cv2.imread(str(sample.image)), cv2.COLOR_BGR2RGB)
    prev = cv2.cvtColor(cv2.imread(str(bundle / "preview.png")), cv2.COLOR_BGR2RGB)
    mesh = mesh_from_model(model, truth)
    cells = [cell(img), cell(prev),
             cell(render_vertex_colours(mesh, error_colours(e_fit, len(truth)))),
             cell(render_vertex_colours(mesh, error_colours(e_mean, len(truth))))]
    if relit is not None:
        *images, box = relit
        cells += [cell(x, box) if x is not None else np.full_like(cells[0], 96) for x in images]
    return cells


# ---------------------------------------------------------------------------------------------
# Quick


def run_quick(session: Session, repeat: int) -> dict:
    runs = []
    for i in range(max(2, repeat)):
        ans = session.reconstruct("demo", session.out_dir / "bundles" / "astronaut")
        if ans.get("event") != "result":
            raise RuntimeError(f"demo reconstruct failed: {ans.get('code')}: {ans.get('message')}")
        runs.append(run_record(ans))
        log(f"[quick {i + 1}] {ans['result']['timings_s']['total']:.2f} s, peak {ans['peak_rss_mb']:.0f} MB")
    from .render_speed import render_backward
    renders = [render_backward(size) for size in (256, 512)]  # here, in the parent: the runner is idle
    for r in renders:
        log(f"[quick render {r['size']}] forward {r['forward_s'] * 1000:.0f} ms, backward {r['backward_s'] * 1000:.0f} ms")
    return {"runs": runs, "device": ans.get("device"), "render": renders}

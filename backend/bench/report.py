"""report.md (tables first, then pictures), report.json and the contact sheets."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from .suite import STAGES

QUICK_TARGETS = {"total_s": 10.0, "peak_rss_mb": 3 * 1024.0}
PAIR_NAMES = {18: "image-left eye, outer corner", 22: "image-left eye, inner corner",
              23: "image-right eye, inner corner", 27: "image-right eye, outer corner",
              71: "image-left brow, outer end", 82: "image-right brow, outer end", 55: "bottom of nose",
              87: "mouth corner, image-left", 93: "mouth corner, image-right", 90: "top of upper lip",
              106: "bottom of lower lip", 129: "chin"}
LM_METHODS = {"fit": "fitted model (MediaPipe points through the correspondence)",
              "mediapipe": "MediaPipe landmarks (the detector the fit uses)",
              "fit_ict68": "fitted model (ICT-FaceKit's own 68-landmark vertices)"}
SYN_METHODS = {"fit": "pipeline (reconstruct)", "landmark_only": "landmark-only fitting (baseline)",
               "mean_face": "mean face (baseline)",
               "true_landmarks": "landmark-only fitting on the true landmark positions (diagnostic)"}


def f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "inf" if isinstance(x, float) and x == float("inf") else "-"
    if isinstance(x, (int, np.integer)):
        return str(x)
    return f"{x:.{digits}f}"


def pct(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.0f} %"


def clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    return obj


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


# ---------------------------------------------------------------------------------------------


def summary_rows(rep: dict) -> list[list]:
    rows = []
    for s in rep.get("sets", []):
        n_ok = sum(p["ok"] for p in s["photos"])
        rows.append([f"photos reconstructed ({s['label']})", f"{n_ok}/{len(s['photos'])}", "count", "higher"])
    sp = rep.get("speed")
    if sp and sp["stages"]["total"]["n"]:
        t = sp["stages"]["total"]
        rows.append(["reconstruct end to end, median (max)", f"{f(t['median'], 2)} ({f(t['max'], 2)})", "s", "lower"])
        m = sp["peak_rss_mb"]
        rows.append(["peak resident memory per reconstruct, median (max)", f"{f(m['median'], 0)} ({f(m['max'], 0)})",
                     "MB", "lower"])
        if rep.get("process_peak_rss_mb"):
            rows.append(["peak resident memory of the measured process, whole run", f(rep["process_peak_rss_mb"], 0),
                         "MB", "lower"])
        if sp.get("cold"):
            rows.append(["cold start: fresh process to first bundle", f(sp["cold"]["process_start_to_bundle_s"], 2),
                         "s", "lower"])
    for s in rep.get("sets", []):
        lm = s.get("landmarks")
        if lm:
            for k in ("fit", "mediapipe"):
                if k in lm["methods"]:
                    m = lm["methods"][k]["per_photo"]
                    rows.append([f"landmark NME, {'fitted model' if k == 'fit' else 'MediaPipe (reference)'}, "
                                 f"mean (median) ({s['label']})", f"{f(m['mean'], 4)} ({f(m['median'], 4)})",
                                 "x inter-pupil distance", "lower"])
        ap = s.get("appearance")
        if ap:
            lab = s["label"]
            rows.append([f"SSIM in the face-skin mask, mean ({lab})", f(ap["ssim"]["mean"]), "0..1", "higher"])
            rows.append([f"PSNR in the face-skin mask, mean ({lab})", f(ap["psnr_db"]["mean"], 2), "dB", "higher"])
            if "lpips" in ap:
                rows.append([f"ST-LPIPS in the face-skin mask, mean ({lab})", f(ap["lpips"]["mean"]), "0..1", "lower"])
            if "id_distance" in ap:
                rows.append([f"dlib identity distance photo vs render, mean ({lab})", f(ap["id_distance"]["mean"]),
                             "descriptor distance", "lower"])
                rows.append([f"renders under dlib's 0.6 same-person threshold ({lab})", pct(ap["id_same_share"]),
                             "% of photos", "higher"])
    sc = rep.get("shape_consistency")
    if sc:
        rows.append(["same-person shape distance, mean", f(sc["same_mm"]["mean"], 2), "mm", "lower"])
        rows.append(["different-person shape distance, mean", f(sc["different_mm"]["mean"], 2), "mm", "higher"])
        rows.append(["same-vs-different verification AUC", f(sc["auc"]), "0..1", "higher"])
    syn = rep.get("synthetic")
    if syn:
        rows.append(["synthetic images reconstructed", f"{syn['succeeded']}/{syn['n']}", "count", "higher"])
        for k, name in SYN_METHODS.items():
            if k in syn["methods"]:
                m = syn["methods"][k]["pooled_mm"]
                rows.append([f"synthetic vertex error, {name}: mean / median / p90",
                             f"{f(m['mean'], 2)} / {f(m['median'], 2)} / {f(m['p90'], 2)}", "mm", "lower"])
        em = syn.get("eyes_mouth")
        for k, name in EYES_MOUTH_METHODS.items():
            if em and k in em["methods"]:
                m = em["methods"][k]
                rows.append([f"eye-closure error, {name}: all / closed eyes", f"{f(m['eye_closure_mm']['mean'], 2)} / "
                             f"{f(m['eye_closure_closed_mm']['mean'], 2)}", "mm", "lower"])
                rows.append([f"mouth-corner error, {name}", f(m["mouth_corner_mm"]["mean"], 2), "mm", "lower"])
    # Rows of 4 (metric, value, unit, better) get empty baseline and target cells; relighting rows have 6.
    rows = [r[:2] + [""] + r[2:] + [""] if len(r) == 4 else r for r in rows]
    for st in rep.get("sets", []):
        rows += photo_relight_rows(st)
    if syn:
        rows += synthetic_relight_rows(syn)
    return rows


# ---------------------------------------------------------------------------------------------
# Relighting (issue #8)


def _mean(summary: dict | None):
    return summary["mean"] if summary and summary.get("n") else None


def fmt_measure(key: str, x) -> str:
    """A relighting value in its unit: shares as %, dB with 2 decimals, the rest with 3."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if key == "hair_leakage":
        return f"{100 * x:.1f} %"
    return f(x, 2) if key.endswith("_db") else f(x, 3)


def fmt_delta(key: str, cur, base) -> str:
    if cur is None or base is None:
        return "-"
    d = cur - base
    return f"{100 * d:+.1f} pp" if key == "hair_leakage" else (f"{d:+.2f}" if key.endswith("_db") else f"{d:+.3f}")


def verdict(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def target_text(key: str, target: dict | None) -> str:
    """'<= 0.1 (in-the-wild photos): FAIL' for a photo target."""
    if not target:
        return ""
    t = fmt_measure(key, target["target"])
    return f"{'≤' if target['op'] == '<=' else '≥'} {t} ({target['for']}): {verdict(target['pass'])}"


SYN_TARGET_TEXT = {"relit_psnr_db": "≥ v0 + 3 dB in every yaw bin", "albedo_psnr_db": "> v0 in every yaw bin"}


def relight_variants(rel: dict) -> tuple[str, str | None]:
    """Labels of the current variant and of the baseline (None without one)."""
    v = rel["variants"]
    return v["current"], v.get("baseline")


def synthetic_relight_rows(syn: dict) -> list[list]:
    from .relight import SYNTHETIC_MEASURES
    rel = syn.get("relight")
    if not rel:
        return []
    cur_label, base_label = relight_variants(rel)
    rows = []
    for key, (name, unit, better) in SYNTHETIC_MEASURES.items():
        cur = _mean(rel["all"]["current"].get(key))
        base = _mean(rel["all"].get("baseline", {}).get(key)) if base_label else None
        tgt = (rel.get("targets") or {}).get(key)
        rows.append([f"synthetic {name}, mean", fmt_measure(key, cur),
                     f"{fmt_measure(key, base)} ({fmt_delta(key, cur, base)})" if base_label else "",
                     unit, better, f"{SYN_TARGET_TEXT[key]}: {verdict(tgt['pass'])}" if tgt else ""])
    return rows


def photo_relight_rows(s: dict) -> list[list]:
    from .relight import PHOTO_MEASURES
    rel = s.get("relight")
    if not rel:
        return []
    cur_label, base_label = relight_variants(rel)
    rows = []
    for key, (name, unit, better) in PHOTO_MEASURES.items():
        cur = _mean(rel["measures"]["current"][key])
        base = _mean(rel["measures"]["baseline"][key]) if base_label else None
        unit = "%" if key == "hair_leakage" else unit
        rows.append([f"{name}, mean ({s['label']})", fmt_measure(key, cur),
                     f"{fmt_measure(key, base)} ({fmt_delta(key, cur, base)})" if base_label else "",
                     unit, better, target_text(key, rel["targets"]["current"].get(key))])
    return rows


RELIGHT_EXPLAIN_SYNTHETIC = [
    "**Albedo error** (PSNR, SSIM; higher is better). The bundle's diffuse tile 1001 (decoded to linear "
    "light) against the truth albedo (the UV maps the head was textured with), on a 512 x 512 UV grid, over "
    "the visible face texels: narrow-face triangles (vertices 0-6705) whose bundle visibility is above 0.5. "
    "A least-squares gain per channel is applied first (albedo and light trade a scale per channel that no "
    "photo shows); PSNR and SSIM are then computed on sRGB-encoded values. A map that kept the capture light "
    "(v0) carries its shading and shadows into the albedo and scores lower, most on the hard-light samples.",
    "**Relit error** (PSNR, SSIM higher, ST-LPIPS lower is better). A new random light per sample (its own "
    "seed; 2nd-order SH, or 40 % of the time a hard directional light with cast shadows): the reconstruction "
    "(fitted mesh, the bundle's camera and pose, its diffuse map times the albedo gains above) and the truth "
    "(true mesh, pose and albedo) are drawn under it with the same renderer into the same 512 px image, each "
    "shaded with its own mesh's vertex normals (and casting its own shadows), and compared inside the truth's "
    "face-skin coverage, cropped and resized as the appearance rows. This is what a user sees when relighting "
    "the head in Blender: geometry errors count as well as baked-in light, for both variants alike.",
    "**Relit ceiling of this fit** (dB, higher is better; a diagnostic). The relit PSNR of the *truth* albedo "
    "drawn on the reconstruction's mesh, camera and pose: what a perfect map would score with this geometry. "
    "A map can reach it but rarely pass it; the gap between the two is the map's fault (baked-in "
    "light), the rest is the fit's geometry.",
    "**Shading leakage against the true shading** (|r|, lower is better). Pearson's r between the luminance "
    "of the diffuse map and of the true capture shading (the capture light on the true mesh at each texel, "
    "cast shadows included) over the same texels as the albedo error. Defined for every bundle, v0 included, "
    "because the synthetic truth knows the light; the truth albedo's own |r| over the same texels is the "
    "floor (albedo is not independent of shape, and the maps made from photos keep a little studio light).",
]

RELIGHT_EXPLAIN_PHOTOS = [
    "**Shading leakage** (|r|, lower is better; target ≤ 0.1 on in-the-wild photos). Pearson's r between the "
    "luminance of the diffuse map and of the bundle's fitted shading (result.json `lighting`, SH on the texel's "
    "camera-space normal of the fitted mesh) over skin texels: tile-1001 texels with visibility above 0.5 whose "
    "photo pixel is in the skin mask (backend/segmentation.py). A bundle without a fitted lighting (v0) has no "
    "shading to correlate with: n/a.",
    "**Photo re-render** (SSIM, PSNR higher, ST-LPIPS lower is better; targets SSIM ≥ 0.95, PSNR ≥ 35 dB, "
    "ST-LPIPS ≤ 0.04 on the London dev photos; the seed texture paper reports 0.9412 / 37.20 dB / 0.0287). The "
    "diffuse map times the fitted shading, drawn into the photo with the bundle's camera, compared with the "
    "photo inside the rendered face skin that the skin mask also calls skin, cropped and resized as the "
    "appearance rows. Without a fitted lighting the shading is uniform: the photo's mean skin luminance over "
    "the map's at the same texels (about 1 for v0, whose map is the photo: its re-render is the appearance "
    "rows' re-render, on the skin mask).",
    "**Hair leakage** (share of texels, lower is better; target ≤ 1 %). The share of tile-1001 texels seen in "
    "the photo (visibility above 0.5) whose photo pixel the hair mask calls hair (probability above 0.5): hair "
    "painted into the skin map, e.g. a fringe projected onto the forehead.",
]


def synthetic_relight_section(syn: dict) -> list[str]:
    from .relight import SYNTHETIC_MEASURES
    rel = syn.get("relight")
    if not rel:
        return []
    cur_label, base_label = relight_variants(rel)
    n_hard = rel["by_capture_light"]["directional"]["n"]
    out = [f"## Relighting: synthetic truth ({rel['all']['n']} heads, {n_hard} of them lit by a hard directional "
           "light with cast shadows)", ""]
    if base_label and rel["reused"].get("baseline"):
        out += [f"The baseline's options resolve to the current ones ({cur_label} is {base_label}), so the "
                "current bundles stand for it (the pipeline is deterministic; `--baseline-rerun` reconstructs it "
                "anyway): the two columns agree and every difference is 0.", ""]
    for para in RELIGHT_EXPLAIN_SYNTHETIC:
        out += [para, ""]
    groups = [(b["yaw"], b) for b in rel["by_yaw"]] + [("all", rel["all"]),
                                                       ("SH captures", rel["by_capture_light"]["sh"]),
                                                       ("hard-light captures", rel["by_capture_light"]["directional"])]
    targets = rel.get("targets") or {}
    for key, (name, unit, better) in SYNTHETIC_MEASURES.items():
        out += [f"### {name[0].upper() + name[1:]} ({unit}, {better} is better)", ""]
        per_bin = {x["yaw"]: x for x in targets.get(key, {}).get("per_bin", [])}
        rows = []
        for label, g in groups:
            cur = _mean(g["current"].get(key))
            row = [label if label[0].isalpha() else f"{label} deg", g["n"]]
            if base_label:
                base = _mean(g.get("baseline", {}).get(key))
                row += [fmt_measure(key, base), fmt_measure(key, cur), fmt_delta(key, cur, base)]
                if key in targets:
                    row.append(verdict(per_bin[label]["pass"]) if label in per_bin else "")
            else:
                row.append(fmt_measure(key, cur))
            rows.append(row)
        header = ["abs(yaw) / group", "images"] + ([base_label, cur_label, "difference"] if base_label else [cur_label])
        if base_label and key in targets:
            header.append(f"target: {SYN_TARGET_TEXT[key]}")
        out += table(header, rows)
        if key in targets:
            out += ["", f"Target {SYN_TARGET_TEXT[key]}: **{verdict(targets[key]['pass'])}**."]
        out += [""]
    return out


def photo_relight_section(s: dict, explain: bool = True) -> list[str]:
    from .relight import PHOTO_MEASURES
    rel = s.get("relight")
    if not rel:
        return []
    cur_label, base_label = relight_variants(rel)
    m = rel["measures"]["current"]
    out = [f"## Relighting: photos ({s['label']}: {rel['photos']} photos)", ""]
    if explain:
        for para in RELIGHT_EXPLAIN_PHOTOS:
            out += [para, ""]
    if m["with_lighting"] < rel["photos"]:
        out += [f"{rel['photos'] - m['with_lighting']} of {rel['photos']} bundles ({cur_label}) have no fitted "
                "lighting: their shading leakage is n/a and their re-render uses a uniform shading (mean "
                f"{fmt_measure('x', _mean(m['uniform_shading']))}).", ""]
    if base_label and rel["reused"].get("baseline"):
        out += [f"The baseline ({base_label}) resolves to the current options: the current bundles stand for it.", ""]
    rows = []
    for key, (name, unit, better) in PHOTO_MEASURES.items():
        c = m[key]
        row = [name, fmt_measure(key, _mean(c)), fmt_measure(key, c["median"] if c["n"] else None),
               fmt_measure(key, c["p90"] if c["n"] else None)]
        if base_label:
            base = _mean(rel["measures"]["baseline"][key])
            row += [fmt_measure(key, base), fmt_delta(key, _mean(c), base)]
        row += ["%" if key == "hair_leakage" else unit, better, target_text(key, rel["targets"]["current"].get(key))]
        rows.append(row)
    header = ["measure", "mean", "median", "p90"] + ([f"{base_label} mean", "difference"] if base_label else []) + \
             ["unit", "better", "target (mean)"]
    out += table(header, rows)
    over = [p["name"] for p in s["photos"] if (p.get("relight") or {}).get("current", {}).get("hair_leakage") is not None
            and p["relight"]["current"]["hair_leakage"] > rel["targets"]["current"]["hair_leakage"]["target"]]
    if over:
        out += ["", f"Photos over the hair-leakage target: {', '.join(over)}."]
    return out + [""]


def speed_section(rep: dict) -> list[str]:
    sp = rep["speed"]
    load = rep["meta"].get("load_average")
    out = [f"## Speed and memory", "",
           f"Device: **{rep['meta'].get('device', '?')}**; {rep['meta']['cpu_count']} CPU cores visible, "
           f"torch threads {rep['meta'].get('torch_threads', '?')}"
           + (f"; 1-min load average {load[0]:.1f} at the start, {load[-1]:.1f} at the end" if load else "")
           + (" (above the core count: other processes competed for the CPU, times are inflated)"
              if load and max(load) > rep["meta"]["cpu_count"] else "") + ". "
           f"{sp['warm_runs']} warm runs (the first reconstruct of the process is the cold one, listed apart)"
           + (f"; each photo reconstructed {rep['meta']['repeat']} times" if rep["meta"].get("repeat", 1) > 1 else "")
           + ".", ""]
    rows = []
    cold = sp.get("cold", {}).get("timings_s", {})
    for st in STAGES + ("total",):
        m = sp["stages"][st]
        name = {"total": "**end to end**", "write": "write" + (" *" if sp.get("write_derived") else "")}.get(st, st)
        rows.append([name, f(m["median"], 3), f(m["max"], 3), f(cold.get(st), 3)])
    out += table(["stage", "median (s)", "max (s)", "cold run (s)"], rows)
    out += ["", "Lower is better for every row."
            + (" \\* the bundle's result.json has no `write` time (it is serialised before that stage ends): "
               "shown as end to end minus the other stages." if sp.get("write_derived") else "")]
    if sp.get("cold"):
        c = sp["cold"]
        warm = (f"Python + torch import {f(c['import_s'], 2)} s, the worker's warm-up {f(c['warm_up_s'], 2)} s: models, "
                "UV layouts, skin rasters" if c.get("warm_up_s") is not None else "Python + torch import")
        out += ["", f"Cold start ({c.get('photo') or 'first photo'}): process spawn to ready ({warm}) "
                    f"{f(c['spawn_to_ready_s'], 2)} s, then the first reconstruct {f(cold.get('total'), 2)} s: fresh "
                    f"process to first bundle **{f(c['process_start_to_bundle_s'], 2)} s**. In Blender the worker "
                    "starts when a photo is chosen, so Generate waits for the first reconstruct alone when the "
                    "worker is ready by then."]
    m = sp["peak_rss_mb"]
    out += ["", f"Peak resident memory (lower is better): per reconstruct median {f(m['median'], 0)} MB, "
                f"max {f(m['max'], 0)} MB (psutil sampling of the measured process every 5 ms during each reconstruct)"
            + (f"; whole measured process {f(rep.get('process_peak_rss_mb'), 0)} MB "
               f"(getrusage ru_maxrss, kernel-accounted peak over its life)." if rep.get("process_peak_rss_mb") else ".")]
    if "cuda_peak_mb" in sp:
        out += [f"CUDA peak allocated: max {f(sp['cuda_peak_mb']['max'], 0)} MB."]
    return out + [""]


def landmark_section(s: dict) -> list[str]:
    lm = s["landmarks"]
    out = [f"## Landmark accuracy ({s['label']}: {lm['photos']} photos with hand-placed .tem landmarks)", "",
           f"NME = distance to the hand-placed point / inter-pupil distance (FRL points 0, 1), averaged over the {len(lm['pairs'])} "
           "points that the Face Research Lab template and the iBUG 68 scheme share. Lower is better.", ""]
    rows = []
    for k, name in LM_METHODS.items():
        if k in lm["methods"]:
            m = lm["methods"][k]
            p = m["per_photo"]
            rows.append([name, f(p["mean"], 4), f(p["median"], 4), f(p["p90"], 4), f(p["max"], 4),
                         pct(m["failure_rate_0.08"])])
    out += table(["points", "mean NME", "median", "p90", "max", "photos with NME > 0.08"], rows)
    if "fit_not_worse_share" in lm:
        out += ["", f"The fit is not worse than MediaPipe on {pct(lm['fit_not_worse_share'])} of the photos "
                    "(higher is better; the fit should not be worse than the detector it fits to)."]
    out += ["", "Per point (mean NME, lower is better):", ""]
    methods = [k for k in LM_METHODS if k in lm["methods"]]
    rows = []
    for i, (frl, ibug) in enumerate(lm["pairs"]):
        rows.append([f"FRL {frl} / iBUG {ibug}: {PAIR_NAMES.get(frl, '')}"]
                    + [f(lm["methods"][k]["per_pair_mean"][i], 4) for k in methods])
    out += table(["point"] + [{"fit": "fitted", "mediapipe": "MediaPipe", "fit_ict68": "ICT 68 vertices"}[k]
                              for k in methods], rows)
    return out + [""]


def appearance_section(s: dict, explain: bool = True) -> list[str]:
    ap = s["appearance"]
    out = [f"## Appearance ({s['label']}: {ap['photos']} photos)", ""]
    if explain:
        out += ["The fitted, textured head is rasterized back into the photo with the bundle's camera and pose "
                "(backend/raster.py, diffuse UDIM tiles sampled through the corner UVs). Image measures compare "
                "photo and re-render inside the face-skin mask (visible skin polygons of the ICT narrow face "
                "region, vertices 0-6705), on the mask's bounding box resized to 256 px. Identity: dlib's ResNet "
                "face descriptor of the photo and of the re-render (eyes, mouth interior and hair keep the photo's "
                "pixels: v0 textures skin only), both on the photo's dlib face box. v0's texture is projected "
                "from this same photo, so these mostly measure how well the mesh sits on the photo and what "
                "resampling loses.", ""]
    rows = []
    for k, name, unit, better in (("ssim", "SSIM", "0..1", "higher"), ("psnr_db", "PSNR", "dB", "higher"),
                                  ("lpips", "ST-LPIPS (AlexNet, shift-tolerant)", "0..1", "lower"),
                                  ("id_distance", "dlib identity distance photo vs render", "distance", "lower")):
        if k in ap:
            m = ap[k]
            rows.append([name, f(m["mean"]), f(m["median"]), f(m["p90"]), unit, better])
    out += table(["metric", "mean", "median", "p90", "unit", "better"], rows)
    if "id_same_share" in ap:
        out += ["", f"Re-renders under dlib's same-person threshold 0.6: **{pct(ap['id_same_share'])}** (higher is better)."]
    return out + [""]


def shape_section(sc: dict, a: str, b: str) -> list[str]:
    out = [f"## Shape consistency ({a} vs {b})", "",
           "Neutral-expression shapes (`basis_vertices`: identity only) of two photos, mean per-vertex distance over "
           "the narrow face region, in model space without alignment (mm). Same person = same file-name prefix.", ""]
    rows = [["same person", sc["same_pairs"], f(sc["same_mm"]["mean"], 2), f(sc["same_mm"]["median"], 2),
             f(sc["same_mm"]["p90"], 2), "lower"],
            ["different people", sc["different_pairs"], f(sc["different_mm"]["mean"], 2),
             f(sc["different_mm"]["median"], 2), f(sc["different_mm"]["p90"], 2), "higher"]]
    out += table(["pairs", "count", "mean (mm)", "median (mm)", "p90 (mm)", "better"], rows)
    out += ["", f"Verification AUC (same-person distance below different-person distance): **{f(sc['auc'])}** "
                f"(0.5 = chance, 1 = perfect; higher is better). The same person is the nearest of all "
                f"{b} shapes for {pct(sc['same_closer_than_all_others_share'])} of the {a} photos."]
    return out + [""]


EYES_MOUTH_METHODS = {"fit": "pipeline", "landmark_only": "landmark-only", "v0": "v0 (its own code)",
                      "mean_face": "mean face"}


def eyes_mouth_section(syn: dict) -> list[str]:
    em = syn.get("eyes_mouth")
    if not em:
        return []
    what = ("closed eyes (one or both) and crooked mouths" if syn.get("expression_set") == "eyes_mouth"
            else "random expressions")
    out = [f"## Eyes and mouth corners ({em['heads']} synthetic heads with {what}; {em['eyes_closed']} eyes "
           f"closed, {em['eyes_open']} open)", "",
           "Eye-closure error: |fitted - true| distance between the upper and lower lid centre vertices, per eye "
           "(an eye counts as closed when its true opening is under 5 mm; ICT's neutral opening is 11 mm). "
           "Mouth-corner error: distance of the two mouth-corner vertices to the truth after the face error's "
           "similarity alignment. Means in mm; lower is better."
           + (f" {em['heads_left_out']} heads that not every method reconstructed are left out." if em["heads_left_out"] else ""), ""]
    rows = [[name, f(m["eye_closure_mm"]["mean"], 2), f(m["eye_closure_closed_mm"]["mean"], 2),
             f(m["eye_closure_open_mm"]["mean"], 2), f(m["mouth_corner_mm"]["mean"], 2)]
            for k, name in EYES_MOUTH_METHODS.items() if k in em["methods"] for m in [em["methods"][k]]]
    out += table(["method", "eye closure, all eyes", "closed eyes", "open eyes", "mouth corners"], rows)
    return out + [""]


def synthetic_section(syn: dict) -> list[str]:
    out = [f"## Synthetic 3D truth ({syn['succeeded']}/{syn['n']} reconstructed, seed {syn['seed']})", "",
           "Random ICT heads: identity ~ N(0,1) (100 modes), 0-3 random expressions, yaw up to +-60 deg, pitch up "
           "to +-25, roll up to +-10, 35 mm-equivalent focal length 24-85 mm"
           + (" (written to EXIF, as a camera would)" if syn.get("exif_focal") else " (no EXIF)")
           + ", random 2nd-order SH lighting (27 coefficients), skin from UV maps the pipeline made from "
           f"{len(syn['textures'])} photos, eyes/teeth/mouth in plain colours, backgrounds cut from real photos "
           f"({syn['backgrounds']}), sensor noise and JPEG. Error = per-vertex distance over the narrow face region "
           "(vertices 0-6705) after a similarity alignment (scale, rotation, translation) to the truth, pooled over "
           "all vertices of the reconstructed images. Lower is better.", ""]
    rows = []
    for k, name in SYN_METHODS.items():
        if k in syn["methods"]:
            m, pi = syn["methods"][k]["pooled_mm"], syn["methods"][k]["per_image_mean_mm"]
            rows.append([name, f(m["mean"], 2), f(m["median"], 2), f(m["p90"], 2), f(pi["median"], 2)])
    out += table(["method", "mean (mm)", "median (mm)", "p90 (mm)", "median of per-image means (mm)"], rows)
    out += ["", "In v0 the pipeline's fit *is* landmark-only fitting, so the first two rows coincide; the baseline "
                "is run separately (fit_landmarks on the detections) so it stays a baseline when photometric "
                "fitting lands. The diagnostic row fits the same way to where MediaPipe's landmarks truly are "
                "(the correspondence's surface points on the true mesh, projected with the true camera): the gap "
                "between it and the landmark-only row is what detection (and the correspondence's definition of "
                "each landmark) costs; the gap to zero is what the fitter and its priors cost."]
    if "detector_nme" in syn:
        d = syn["detector_nme"]
        out += [f"MediaPipe's detections vs the true landmark positions: mean {f(d['mean'], 4)}, median "
                f"{f(d['median'], 4)}, p90 {f(d['p90'], 4)} x outer-eye-corner distance (lower is better)."]
    if "rotation_error_deg" in syn:
        r, y = syn["rotation_error_deg"], syn["yaw_error_deg"]
        out += [f"Head rotation error of the pipeline (angle between fitted and true rotation): mean {f(r['mean'], 1)} deg, "
                f"median {f(r['median'], 1)}, p90 {f(r['p90'], 1)} (lower is better); yaw error, fitted minus true: "
                f"mean {f(y['mean'], 1)} deg, mean absolute {f(syn['abs_yaw_error_deg']['mean'], 1)} deg."]
    if "fit_beats_mean_face_share" in syn:
        out += [f"The pipeline beats the mean face on {pct(syn['fit_beats_mean_face_share'])} of the images "
                "(higher is better)."]
    out += ["", "By head yaw (mean of per-image mean errors, mm; lower is better):", ""]
    out += table(["abs(yaw) (deg)", "images", "failed", "pipeline", "landmark-only", "mean face"],
                 [[b["yaw"], b["n"], b["failed"], f(b["fit_mm"], 2), f(b["landmark_only_mm"], 2),
                   f(b["mean_face_mm"], 2)] for b in syn["by_yaw"]])
    return out + [""]


def failures_section(rep: dict) -> list[str]:
    rows = []
    for s in rep.get("sets", []):
        for p in s["photos"]:
            if not p["ok"]:
                rows.append([f"{s['label']}/{p['name']}", p["error"]["code"], p["error"]["message"]])
    for p in (rep.get("synthetic") or {}).get("samples", []):
        if not p["ok"]:
            rows.append([f"synthetic/{p['name']} (yaw {p['params']['yaw_deg']:+.0f})", p["error"]["code"],
                         p["error"]["message"]])
    if not rows:
        return []
    return ["## Failures", ""] + table(["photo", "code", "message"], rows) + [""]


def write_markdown(rep: dict, path: Path) -> str:
    meta = rep["meta"]
    lines = [f"# Likeness bench: {meta['title']}", "",
             f"{meta['date']} · commit `{meta.get('commit', '?')}` · `{meta['command']}`"
             + (f" · bench run {meta['bench_s']:.0f} s" if meta.get("bench_s") else ""), "",
             "## Summary", ""]
    summary = summary_rows(rep)
    base_labels = sorted({relight_variants(x["relight"])[1] for x in rep.get("sets", []) + [rep.get("synthetic") or {}]
                          if x.get("relight") and relight_variants(x["relight"])[1]})
    lines += table(["metric", "value", f"{' / '.join(base_labels) or 'baseline'} (difference)", "unit", "better",
                    "target"], summary) + [""]
    if rep.get("speed"):
        lines += speed_section(rep)
    for s in rep.get("sets", []):
        if s.get("landmarks"):
            lines += landmark_section(s)
    for i, s in enumerate(x for x in rep.get("sets", []) if x.get("appearance")):
        lines += appearance_section(s, explain=(i == 0))
    if rep.get("shape_consistency"):
        lines += shape_section(rep["shape_consistency"], rep["sets"][0]["label"], rep["sets"][1]["label"])
    for i, s in enumerate(x for x in rep.get("sets", []) if x.get("relight")):
        lines += photo_relight_section(s, explain=(i == 0))
    if rep.get("synthetic"):
        lines += synthetic_section(rep["synthetic"])
        lines += eyes_mouth_section(rep["synthetic"])
        lines += synthetic_relight_section(rep["synthetic"])
    lines += failures_section(rep)
    pics = rep.get("pictures", {})
    if pics:
        lines += ["## Pictures", ""]
        if "contact_sheet" in pics:
            lines += [f"![contact sheet]({pics['contact_sheet']})", "",
                      "Columns: input photo (face crop), the bundle's preview (mesh wireframe, detected landmarks "
                      "green, fitted landmarks red), re-render of the textured head in the photo, diffuse UDIM tile "
                      "1001.", ""]
        if "synthetic_sheet" in pics:
            lines += [f"![synthetic sheet]({pics['synthetic_sheet']})", "",
                      "Columns: synthetic input, the bundle's preview, per-vertex error of the pipeline on the true "
                      "shape, the same for the mean face (colour scale 0 mm blue to 10 mm and more red); with the "
                      "relighting rows, the truth and the current reconstruction under the relighting test light.", ""]
    text = "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    return text


def quick_markdown(rep: dict, path: Path) -> str:
    q = rep["quick"]
    runs = q["runs"]
    cold, warm = runs[0], runs[1:]
    meta = rep["meta"]
    lines = [f"# Likeness quick bench: the embedded demo photo (astronaut, 512 x 512)", "",
             f"{meta['date']} · commit `{meta.get('commit', '?')}` · device **{q.get('device')}**, "
             f"{meta['cpu_count']} CPU cores · {len(warm)} warm runs after one cold run in a fresh process"
             + (" · 1-min load average " + " -> ".join(f"{x:.1f}" for x in meta["load_average"])
                + (" (above the core count: other processes competed for the CPU, times are inflated)"
                   if max(meta["load_average"]) > meta["cpu_count"] else "") if meta.get("load_average") else ""),
             ""]
    rows = []
    for st in STAGES + ("total",):
        w = [r["timings_s"][st] for r in warm if st in r["timings_s"]]
        rows.append([st if st != "total" else "**reconstruct, end to end**", f(float(np.median(w)), 3) if w else "-",
                     f(max(w), 3) if w else "-", f(cold["timings_s"].get(st), 3),
                     f"< {QUICK_TARGETS['total_s']:.0f} s" if st == "total" else ""])
    lines += table(["stage", "warm median (s)", "warm max (s)", "cold (s)", "target"], rows)
    w_total = float(np.median([r["timings_s"]["total"] for r in warm]))
    start = cold.get("spawn_to_ready_s", 0.0) + cold["wall_s"]
    peak = rep.get("process_peak_rss_mb")
    per = max(r["peak_rss_mb"] for r in runs)
    ok_t = "PASS" if w_total < QUICK_TARGETS["total_s"] else "FAIL"
    ok_cold = "PASS" if start < QUICK_TARGETS["total_s"] else "FAIL"
    ok_m = "PASS" if (peak or per) < QUICK_TARGETS["peak_rss_mb"] else "FAIL"
    lines += ["", "| measure | value | target | |", "|---|---|---|---|",
              f"| reconstruct, warm (median) | {w_total:.2f} s | < 10 s | {ok_t} |",
              f"| fresh process to first bundle (imports + warm-up + first reconstruct) | {start:.2f} s | < 10 s | {ok_cold} |",
              f"| peak resident memory of the reconstructing process | {f(peak, 0)} MB | < 3072 MB | {ok_m} |",
              f"| peak resident memory during one reconstruct (max) | {per:.0f} MB | < 3072 MB | |", "",
              "Lower is better for every row. "
              + ("`write` is end to end minus the other stages (the bundle's result.json lacks it). "
                 if any(r.get("write_derived") for r in runs) else "")
              + "Memory: the reconstructions run in a separate process "
              "(`backend.bench.runner`); its lifetime peak is getrusage(RUSAGE_SELF).ru_maxrss, the per-reconstruct "
              "peak is psutil sampling every 5 ms."]
    if q.get("render"):
        lines += ["", "### Differentiable render + backward (render.py), CPU", "",
                  "The ICT head in a square face crop, rasterized (no gradient), barycentrics recomputed with "
                  "gradients, vertex normals, SH shading of a per-vertex albedo, an L1 loss, backward to identity "
                  "coefficients, albedo and lighting: one step of a photometric fit. Median of "
                  f"{q['render'][0]['repeats']} runs after a warm-up, {q['render'][0]['threads']} torch threads.", ""]
        lines += table(["crop (px)", "covered pixels", "forward (ms)", "backward (ms)", "total (ms)"],
                       [[f"{r['size']} x {r['size']}", r["covered_pixels"], f(r["forward_s"] * 1000, 1),
                         f(r["backward_s"] * 1000, 1), f(r["total_s"] * 1000, 1)] for r in q["render"]])
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


def write_json(rep: dict, path: Path) -> None:
    path.write_text(json.dumps(clean(rep), indent=1), encoding="utf-8")


def contact_sheet(rows: list[tuple[str, str, list[np.ndarray]]], path: Path, headers: list[str]) -> None:
    """One row per photo: a caption line, then the cells side by side."""
    if not rows:
        return
    cell = rows[0][2][0].shape[0]
    ncol = max(len(r[2]) for r in rows)
    cap = 22
    head = np.full((cap, ncol * cell, 3), 255, np.uint8)
    for i, h in enumerate(headers[:ncol]):
        cv2.putText(head, h, (i * cell + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    blocks = [head]
    for _, caption, cells in rows:
        bar = np.full((cap, ncol * cell, 3), 235, np.uint8)
        cv2.putText(bar, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        line = np.full((cell, ncol * cell, 3), 96, np.uint8)
        for i, c in enumerate(cells):
            line[:, i * cell:(i + 1) * cell] = c
        blocks += [bar, line]
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(blocks), cv2.COLOR_RGB2BGR))

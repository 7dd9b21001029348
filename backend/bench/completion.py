"""`python -m backend bench --completion`: texture completion on held-out identities (docs/bench.md).

Each held-out London identity's studio head (partial_views.py: its fitted shape, its de-lit studio
texture = the truth albedo and where the studio photo saw it) is drawn at yaw 30, 45 and 60 degrees
(alternating sides), under a random light (SH plus, in 70% of views, a hard light with cast shadows),
with occluders (hair of another held-out identity in 60%, a hand in 35%), JPEG-compressed. The pipeline's
texture stage runs on each view (segmentation, photometric fit of light and albedo on the known shape),
once per strategy:

- `generated`: the UV diffusion generator fills (backend/generator), without and with identity guidance;
- `delit` (albedo-model fill): mirror, then the fitted albedo model;
- `v0 fill`: v0's mirror and push-pull towards the median skin colour, on the same de-lit colours;
- `projection`: v0 as it is (the photo's light kept), for reference.

Each completed albedo (both tiles side by side, TRUTH_SIZE texels per tile, sRGB 8-bit) is compared with the
truth inside two regions of the texels the studio photo saw (visibility > 0.5): *hidden* = not seen in the
view at all (direct visibility < 0.05: the far side, occluders, hair, deep shadow), *visible* = seen well
(> 0.5). PSNR (dB), SSIM and ST-LPIPS over each region, after per-channel gains fitted on the visible
region (`gain_aligned`: the view's light and exposure trade a scale with the albedo). Identity: dlib's
descriptor distance between the truth albedo and the completed albedo, both drawn on the head in a frontal
view under even light (the identity a completed texture carries), and between the view and the completed
head drawn into it (what guidance works on). On real photos (`--completion-photos`): the held-out neutral
photos through the whole pipeline per strategy, with the bench's re-render measures
(evaluate.Evaluator.appearance).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..colour import encode_srgb8
from . import partial_views as pv

YAWS = (30, 45, 60)
HIDDEN_MAX = 0.05
VISIBLE_MIN = 0.5
TRUTH_MIN = 0.5
GUIDANCE_SCALE = 0.05


def v0_fill(obs, fit, model, size, hooks=None):
    """v0's fill (mirror, then push-pull towards the median skin colour) on the "delit" strategy's colours."""
    from ..texture import delit_recipe, make_texture
    return make_texture(obs, fit, model, size, replace(delit_recipe(obs, fit, albedo_base=False), name="v0-fill"), hooks)


def strategies(guidance: float, variants: bool = False):
    from ..generator import DEFAULT_SETTINGS, generated_texture
    from ..texture import delit_texture, project_texture

    def variant(**kw):
        return lambda obs, fit, model, size, hooks=None: generated_texture(
            obs, fit, model, size, hooks, settings=replace(DEFAULT_SETTINGS, **kw))

    out = {"generated": generated_texture, "delit": delit_texture, "v0-fill": v0_fill, "projection": project_texture}
    if variants:
        out["generated-mirror"] = variant(mirror_from=0.0, mirror_detail=False, prior_detail=False)
        out["generated-gated"] = variant(mirror_from=0.5, mirror_detail=True, prior_detail=True)
        out["generated-nomirror"] = variant(mirror=False, mirror_detail=True, prior_detail=True)
    if guidance > 0:
        out["generated+id"] = variant(guidance_scale=guidance)
    return out


STRATEGY_NAMES = {"generated": "generator (UV diffusion)", "generated+id": "generator + identity guidance",
                  "delit": "albedo-model fill (delit)", "v0-fill": "v0 mirror + push-pull fill (de-lit colours)",
                  "projection": "v0 projection (photo light kept)",
                  "generated-mirror": "generator, mirror into every texel, no detail",
                  "generated-gated": "generator + detail, mirror only into weakly seen texels (from 0.5)",
                  "generated-nomirror": "generator + mirror detail, no mirror step"}


def layout_u8(tiles: dict[int, np.ndarray]) -> np.ndarray:
    return np.concatenate([encode_srgb8(np.clip(tiles[t], 0, 1)) for t in pv.TILES], axis=1)


def region_measures(pred: np.ndarray, truth: np.ndarray, masks: dict[str, np.ndarray], lpips) -> dict:
    from . import metrics
    out = {}
    for name, m in masks.items():
        if m.sum() < 20:
            out[name] = {"texels": int(m.sum())}
            continue
        out[name] = {"texels": int(m.sum()), "psnr_db": metrics.psnr(pred, truth, m), "ssim": metrics.ssim(pred, truth, m),
                     "lpips": lpips(pred, truth, m) if lpips is not None else None}
    return out


def frontal_identity(model, head: pv.StudioHead, tiles: dict[int, np.ndarray], face, truth_desc=None):
    """dlib descriptor of the head drawn frontally under even light with `tiles` (linear)."""
    from .. import render
    spec = pv.ViewSpec(0.0, 0.0, 0.0, 60.0, render.uniform_sh(1.0, dtype=torch.float64).numpy(), None, None, None,
                       (0, 0, 1), None, ((128, 128, 128), (128, 128, 128)), 95, 1.0)
    img = encode_srgb8(pv.draw(model, _with_tiles(head, tiles), spec)[0])
    box = face.find_box(img)
    if box is None:
        return None, img
    return face(img, box), img


def _with_tiles(head: pv.StudioHead, tiles: dict[int, np.ndarray]) -> pv.StudioHead:
    return replace(head, truth=np.stack([tiles[t].transpose(2, 0, 1) for t in pv.TILES]))


def view_identity(model, head, view, tiles, face):
    """Distance between the view and the head drawn with `tiles` in the view's pose and light (no occluders):
    only the texture differs from what the view shows."""
    img = encode_srgb8(pv.draw(model, _with_tiles(head, tiles), view.spec)[0])
    box = face.find_box(view.image)
    if box is None:
        return None
    return float(np.linalg.norm(face(view.image, box) - face(img, box)))


def run_completion(data: Path, out_dir: Path, yaws=YAWS, limit: int | None = None, size: int = pv.TRUTH_SIZE,
                   guidance: float = GUIDANCE_SCALE, seed: int = 0, identity: bool = True, log=print,
                   variants: bool = False, identities: list[str] | None = None) -> dict:
    from ..albedo import load_albedo_model
    from ..facemodel import load_face_model
    from ..pipeline import load_correspondence
    from .metrics import FaceDescriptor, Lpips
    model, corr, albedo_model = load_face_model(), load_correspondence(), load_albedo_model()
    with np.load(Path(__file__).resolve().parents[2] / "weights" / "albedo_model.npz") as z:
        held = [str(x) for x in z["held_out"]]
    held = identities or held
    held = held[:limit] if limit else held
    heads = {}
    for ident in held:
        path = data / "heads" / f"{ident}.npz"
        if not path.exists():
            from ..paths import PROJECT_DIR
            photo = PROJECT_DIR.parent / "shared" / "data" / "faces" / "london" / "neutral" / f"{ident}_03.jpg"
            pv.studio_head(photo, model, corr, albedo_model).save(path)
        heads[ident] = pv.StudioHead.load(path)
    lpips = Lpips()
    face = FaceDescriptor() if identity else None
    strats = strategies(guidance, variants)
    samples = []
    sheet = []
    t0 = time.time()
    for n, ident in enumerate(held):
        head = heads[ident]
        donors = [heads[i] for i in held if i != ident]
        truth_tiles = head.tiles()
        truth_u8 = layout_u8({t: _resize(truth_tiles[t], size) for t in pv.TILES})
        truth_conf = np.concatenate([_resize(head.confidence[i], size) for i in range(2)], axis=1)
        truth_desc = frontal_identity(model, head, truth_tiles, face)[0] if face is not None else None
        for i, y in enumerate(yaws):
            sign = 1 if (n + i) % 2 == 0 else -1
            rng = np.random.default_rng([seed, int(ident), int(y)])
            spec = pv.random_view(rng, len(donors), yaw=sign * y)
            v = pv.make_view(model, corr, head, spec, donors)
            obs, fit = pv.observe_view(model, corr, head, v, albedo_model)
            rec = {"identity": ident, "yaw": sign * y, "hard_light": spec.light_dir is not None,
                   "hair": spec.hair_donor is not None, "hand": spec.hand is not None, "strategies": {}}
            cells = [v.image]
            vis = None
            for name, fn in strats.items():
                ts = time.perf_counter()
                tex = fn(obs, fit, model, size)
                seconds = time.perf_counter() - ts
                if vis is None or name == "delit":
                    vis = np.concatenate([tex.maps["visibility"][t] for t in pv.TILES], axis=1)
                pred = layout_u8(tex.maps["diffuse"])
                rec["strategies"][name] = {"pred": pred, "seconds": seconds, "info": tex.info.get("generator")}
                cells.append(pred)
            masks = {"hidden": (truth_conf > TRUTH_MIN) & (vis < HIDDEN_MAX),
                     "visible": (truth_conf > TRUTH_MIN) & (vis > VISIBLE_MIN)}
            rec["hidden_share"] = float(masks["hidden"].sum() / max(1, (truth_conf > TRUTH_MIN).sum()))
            truth_lin = _decode(truth_u8)
            for name, s in rec["strategies"].items():
                pred, gains = gain_aligned(s.pop("pred"), truth_lin, masks["visible"])
                s["gain"] = gains.tolist()
                s.update(region_measures(pred, truth_u8, masks, lpips))
                if face is not None:
                    tiles = {t: _decode(pred[:, i * size:(i + 1) * size]) for i, t in enumerate(pv.TILES)}
                    d, _ = frontal_identity(model, head, tiles, face)
                    s["id_frontal"] = float(np.linalg.norm(d - truth_desc)) if d is not None and truth_desc is not None else None
                    s["id_view"] = view_identity(model, head, v, tiles, face)
            samples.append(rec)
            sheet.append((f"{ident} yaw {sign * y:+d}", cells + [truth_u8]))
            log(f"completion {ident} yaw {sign * y:+d}: " + ", ".join(
                f"{k} {s['hidden'].get('psnr_db', float('nan')):.2f}/{s['visible'].get('psnr_db', float('nan')):.2f} dB"
                for k, s in rec["strategies"].items()) + f" ({time.time() - t0:.0f} s)")
    rep = {"samples": samples, "yaws": list(yaws), "identities": held, "size": size, "guidance_scale": guidance,
           "summary": summarise(samples, list(strats), yaws)}
    _sheet(sheet, out_dir / "completion_sheet.png", ["view"] + list(strats) + ["truth"])
    return rep


def gain_aligned(pred_u8: np.ndarray, truth_lin: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prediction with per-channel gains (least squares in linear light over the visible region) that
    map it onto the truth: light and albedo trade a scale per channel (the views' exposure varies too), and
    every strategy shares the direct view there, so what remains in the hidden region is the completion's
    own error (the relightable-skin rows align the albedo the same way: relight.channel_gains)."""
    from .relight import channel_gains
    lin = _decode(pred_u8)
    if visible.sum() < 20:
        return pred_u8, np.ones(3)
    gains = channel_gains(lin[visible].astype(np.float64), truth_lin[visible].astype(np.float64))
    return encode_srgb8(np.clip(lin * gains.astype(np.float32), 0, 1)), gains


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2
    return img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _decode(u8: np.ndarray) -> np.ndarray:
    from ..colour import decode_srgb8
    return decode_srgb8(u8)


def summarise(samples: list[dict], names: list[str], yaws) -> dict:
    out = {}
    for y in yaws:
        rows = [s for s in samples if abs(s["yaw"]) == y]
        out[str(y)] = {}
        for name in names:
            r = {}
            for region in ("hidden", "visible"):
                for m in ("psnr_db", "ssim", "lpips"):
                    vals = [s["strategies"][name][region].get(m) for s in rows]
                    vals = [v for v in vals if v is not None and np.isfinite(v)]
                    r[f"{region}_{m}"] = float(np.mean(vals)) if vals else None
            for m in ("id_frontal", "id_view", "seconds"):
                vals = [s["strategies"][name].get(m) for s in rows]
                vals = [v for v in vals if v is not None]
                r[m] = float(np.mean(vals)) if vals else None
            r["hidden_share"] = float(np.mean([s["hidden_share"] for s in rows])) if rows else None
            out[str(y)][name] = r
    return out


def _sheet(rows, path: Path, headers: list[str], cell_h: int = 128) -> None:
    import cv2
    out = []
    for label, cells in rows[:30]:
        line = []
        for c in cells:
            s = cell_h / c.shape[0]
            line.append(cv2.resize(c, (round(c.shape[1] * s), cell_h), interpolation=cv2.INTER_AREA))
        img = np.concatenate(line, axis=1)
        cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(img)
    width = max(r.shape[1] for r in out)
    out = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in out]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(out, axis=0), cv2.COLOR_RGB2BGR))


def run_real_photos(photos: list[Path], out_dir: Path, names: list[str], evaluator, log=print) -> dict:
    """The held-out photos through the whole pipeline per strategy, with the bench's re-render measures."""
    from ..imageio import load_photo
    from ..pipeline import Options, reconstruct
    rows = {n: [] for n in names}
    for p in photos:
        rgb = load_photo(p).rgb
        for n in names:
            bundle = out_dir / "completion_bundles" / f"{p.stem}.{n}"
            ts = time.perf_counter()
            result = reconstruct(p, bundle, Options(texture=n, overwrite=True))
            meas, _ = evaluator.appearance(bundle, rgb, result)
            meas["seconds"] = time.perf_counter() - ts
            meas["timings_s"] = result["timings_s"]
            rows[n].append({"photo": p.name, **meas})
            log(f"real {p.name} {n}: " + ", ".join(f"{k} {meas.get(k, float('nan')):.3f}"
                                                  for k in ("ssim", "psnr_db", "lpips", "id_distance")))
    summary = {}
    for n, rs in rows.items():
        summary[n] = {k: float(np.mean([r[k] for r in rs if r.get(k) is not None])) if rs else None
                      for k in ("ssim", "psnr_db", "lpips", "id_distance", "seconds")}
        summary[n]["texture_s"] = float(np.median([r["timings_s"]["texture"] for r in rs])) if rs else None
    return {"photos": rows, "summary": summary}


def markdown(rep: dict) -> str:
    from .report import f, table
    lines = ["# Texture completion", "",
             f"{len(rep['identities'])} identities ({', '.join(rep['identities'])}) x yaw {', '.join(map(str, rep['yaws']))} degrees, "
             f"{rep['size']} texels per tile; regions of the texels the studio photo saw: hidden = not seen in the "
             "view, visible = seen well. PSNR/SSIM higher is better, ST-LPIPS and identity distances lower.", ""]
    s = rep["summary"]
    for region in ("hidden", "visible"):
        lines += [f"## {region.capitalize()} region", ""]
        rows = []
        for y in rep["yaws"]:
            for name, r in s[str(y)].items():
                rows.append([y, STRATEGY_NAMES.get(name, name), f(r[f"{region}_psnr_db"], 2), f(r[f"{region}_ssim"]),
                             f(r[f"{region}_lpips"])] + ([pct_(r["hidden_share"])] if region == "hidden" else []))
        lines += table(["yaw", "strategy", "PSNR dB", "SSIM", "ST-LPIPS"] + (["hidden share"] if region == "hidden" else []),
                       rows) + [""]
    lines += ["## Identity", "", "dlib descriptor distance (same person below 0.6): *frontal* = completed albedo vs "
              "truth albedo, both drawn frontally under even light; *view* = the view vs the completed head drawn "
              "into it under the view's light.", ""]
    rows = []
    for y in rep["yaws"]:
        for name, r in s[str(y)].items():
            rows.append([y, STRATEGY_NAMES.get(name, name), f(r["id_frontal"]), f(r["id_view"]), f(r["seconds"], 2)])
    lines += table(["yaw", "strategy", "id frontal", "id view", "texture s"], rows) + [""]
    if rep.get("real"):
        lines += ["## Real photos (held-out neutral photos, whole pipeline)", ""]
        rows = [[STRATEGY_NAMES.get(n, n), f(r["ssim"]), f(r["psnr_db"], 2), f(r["lpips"]), f(r["id_distance"]),
                 f(r["texture_s"], 2), f(r["seconds"], 2)] for n, r in rep["real"]["summary"].items()]
        lines += table(["strategy", "re-render SSIM", "PSNR dB", "ST-LPIPS", "id distance", "texture stage s",
                        "reconstruct s"], rows) + [""]
    lines += ["![completion sheet](completion_sheet.png)", ""]
    return "\n".join(lines)


def pct_(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def main(args) -> int:
    import sys
    from ..paths import PROJECT_DIR
    out_dir = args.out or Path("out") / "bench" / "completion"
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    data = Path(args.completion_data)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    ids = [x.strip() for x in args.completion_identities.split(",")] if args.completion_identities else None
    rep = run_completion(data, out_dir, limit=args.limit, guidance=args.guidance, seed=args.seed, identities=ids,
                         identity=not args.no_identity, log=log, variants=args.variants)
    if args.completion_photos:
        from .evaluate import Evaluator
        with np.load(PROJECT_DIR / "weights" / "albedo_model.npz") as z:
            held = [str(x) for x in z["held_out"]]
        held = held[:args.limit] if args.limit else held
        london = PROJECT_DIR.parent / "shared" / "data" / "faces" / "london" / "neutral"
        photos = [london / f"{i}_03.jpg" for i in held]
        ev = Evaluator(appearance=True, identity=not args.no_identity)
        rep["real"] = run_real_photos(photos, out_dir, ["delit", "generated"], ev, log)
    rep["seconds"] = time.time() - t0
    from .report import clean
    (out_dir / "completion.json").write_text(json.dumps(clean(rep), indent=1))
    text = markdown(rep)
    (out_dir / "completion.md").write_text(text)
    print(text)
    return 0

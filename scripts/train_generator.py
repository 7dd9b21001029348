"""Train the UV texture generator (backend/generator) in two stages; write weights/generator.npz.

    .venv/bin/python scripts/train_generator.py --stage 1 --steps 2000 --minutes 30   # face crops, backbone only
    .venv/bin/python scripts/train_generator.py --stage 2 --steps 6000 --minutes 95   # UV pairs, most weights frozen
    .venv/bin/python scripts/train_generator.py --export                              # EMA weights -> weights/

Data: scripts/build_generator_data.py (out/generator_data). Each stage checkpoints every --save-every steps
into --work (model, EMA, optimiser, step; a resumed run re-seeds its data order from the step) and resumes
from there when run again; it stops at --steps, at --stop-at, or after --minutes, whichever comes first
(the learning-rate schedule spans --steps). The same script runs on a GPU (--device cuda, larger --batch).
Losses go to <work>/stage<N>.log.

Stage 1: the backbone alone learns to denoise 64 x 128 crops of the training identities' face photos
(random scale 0.75-1.5 photo px per texel, random flips). Stage 2: the backbone's encoder half (input conv,
down path, middle, time embedding) and its deepest decoder block stay as stage 1 left them; the condition
encoders, their zero convolutions and the rest of the decoder learn the UV pairs: x0 = the studio truth,
the loss weighted by the truth's confidence (texels the studio photo never saw count 0.05, outside the
layout 0), doubled where the input did not see the texel; half of each batch through the UV mirror map, and
every sample's colours under one random gain and tint.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.colour import linear_to_srgb  # noqa: E402
from backend.facemodel import load_face_model  # noqa: E402
from backend.generator import conditions as C  # noqa: E402
from backend.generator.model import T_STEPS, GeneratorNet, NetConfig, add_noise, alpha_bar, parameter_count  # noqa: E402
from backend.generator.weights import GENERATOR_PATH, save_weights  # noqa: E402

DATA = ROOT / "out" / "generator_data"
WORK = ROOT / "out" / "generator_train"


def frozen_in_stage2(net: GeneratorNet) -> list[torch.nn.Parameter]:
    b = net.backbone
    return list(b.encoder_parameters()) + list(b.up[0].parameters())


# ---------------------------------------------------------------------------------------------
# Data


class Crops:
    """Stage 1: random 64 x 128 windows of the face crops, sRGB in [-1, 1]."""

    def __init__(self, crops: np.ndarray):
        self.crops = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0   # (N, 3, 192, 192)

    def batch(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        out = []
        side = self.crops.shape[-1]
        for _ in range(n):
            img = self.crops[rng.integers(len(self.crops))]
            f = rng.uniform(0.75, 1.5)
            h, w = int(C.RES * f), int(2 * C.RES * f)
            y, x = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
            win = img[:, y:y + h, x:x + w]
            if rng.random() < 0.5:
                win = win.flip(-1)
            out.append(F.interpolate(win[None], size=(C.RES, 2 * C.RES), mode="bilinear", align_corners=False,
                                     antialias=True)[0])
        return torch.stack(out).clamp(-1, 1)


class Pairs:
    """Stage 2: the views (direct view at 128, albedo prior at 64) and their identity's truth at 64."""

    def __init__(self, data: Path, model, held_out: set[str]):
        files = sorted((data / "views").glob("*_v*.npz"))
        firsts, priors, ids = [], [], []
        for f in files:
            with np.load(f) as z:
                ident = str(z["identity"])
                if ident in held_out:
                    raise RuntimeError(f"{f} belongs to held-out identity {ident}")
                firsts.append(torch.from_numpy(z["first"]))
                priors.append(torch.from_numpy(z["prior"]))
                ids.append(ident)
        self.files = files
        self.first = torch.stack(firsts)         # (N, T, 4, 128, 128) float16
        self.prior = torch.stack(priors)         # (N, T, 3, 64, 64) float16
        names = sorted(set(ids))
        self.index = torch.tensor([names.index(i) for i in ids])
        truth, conf = [], []
        for ident in names:
            with np.load(data / "heads" / f"{ident}.npz") as z:
                t = torch.from_numpy(z["truth"]).float()             # (T, 3, 256, 256) linear
                c = torch.from_numpy(z["confidence"]).float()        # (T, 256, 256)
            f = t.shape[-1] // C.RES
            truth.append(F.avg_pool2d(t, f).clamp(0, 1))
            conf.append(F.avg_pool2d(c[:, None], f)[:, 0])
        self.truth = torch.stack(truth)          # (I, T, 3, 64, 64) linear
        self.conf = torch.stack(conf)            # (I, T, 64, 64)
        self.model = model
        self.identities = names

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, rng: np.random.Generator, n: int, gain: float = 0.15, tint: float = 0.04):
        """(x0, spatial, freq, weight) with the second half of the batch seen through the mirror map. Each
        sample's colours (direct view, prior, truth alike) get one random gain and tint in linear light:
        another skin tone, the same completion problem (76 identities are few)."""
        sel = torch.from_numpy(rng.integers(len(self), size=n))
        g = torch.from_numpy(np.exp(rng.normal(0, gain, (n, 1)) + rng.normal(0, tint, (n, 3))).astype(np.float32))
        half = n // 2
        parts = []
        for idx, gi, mirror in ((sel[:half], g[:half], False), (sel[half:], g[half:], True)):
            if len(idx) == 0:
                continue
            first = self.first[idx].float()
            first[:, :, :3] *= gi[:, None, :, None, None]
            first[:, :, :3] = torch.minimum(first[:, :, :3], first[:, :, 3:4])   # colour <= 1 (premultiplied)
            prior = (self.prior[idx].float() * gi[:, None, :, None, None]).clamp(0, 1)
            spatial, freq = C.make_conditions(first, prior, self.model, mirror=mirror)
            truth, conf = self.truth[self.index[idx]], self.conf[self.index[idx]]
            truth = linear_to_srgb((truth * gi[:, None, :, None, None]).clamp(0, 1)) * 2 - 1
            if mirror:
                m = C.mirror_map(self.model, C.RES)
                truth, conf = m.apply(truth), m.apply(conf[:, :, None])[:, :, 0]
            cov = C.mirror_map(self.model, C.RES).coverage[None]
            w = C.to_layout((cov * conf.clamp_min(0.05))[:, :, None])[:, 0]
            seen = (spatial[:, 3] * 2.0).clamp(0, 1)           # the input's direct confidence (channel 3)
            w = w * (2.0 - seen)
            parts.append((C.to_layout(truth), spatial, freq, w))
        return tuple(torch.cat(x) for x in zip(*parts))


# ---------------------------------------------------------------------------------------------
# Training


def load_state(path: Path, net: GeneratorNet, ema: GeneratorNet, opt, dev) -> tuple[int, dict]:
    ck = torch.load(path, map_location=dev, weights_only=False)
    net.load_state_dict(ck["net"])
    ema.load_state_dict(ck["ema"])
    if opt is not None and ck.get("opt") is not None:
        try:
            opt.load_state_dict(ck["opt"])
        except ValueError:
            print("optimiser state does not fit (new stage): fresh optimiser", file=sys.stderr)
    return int(ck.get("step", 0)), ck.get("meta", {})


def save_state(path: Path, net, ema, opt, step: int, meta: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict() if opt else None,
                "step": step, "meta": meta}, tmp)
    tmp.replace(path)


def train(a) -> int:
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng([a.seed, a.stage])
    a.work.mkdir(parents=True, exist_ok=True)
    net = GeneratorNet(NetConfig()).to(dev)
    ema = copy.deepcopy(net).requires_grad_(False)
    ck_path = a.work / f"stage{a.stage}.pt"
    log = open(a.work / f"stage{a.stage}.log", "a")
    meta = {}
    if a.stage == 2 and not ck_path.exists():
        if not (a.work / "stage1.pt").exists():
            print("stage 2 needs stage 1's checkpoint", file=sys.stderr)
            return 2
        _, meta1 = load_state(a.work / "stage1.pt", net, ema, None, dev)
        net.load_state_dict(ema.state_dict())     # stage 2 starts from stage 1's EMA weights
        meta = {"stage1": meta1}
    if a.stage == 2:
        frozen = {id(p) for p in frozen_in_stage2(net)}
        for p in net.parameters():
            p.requires_grad_(id(p) not in frozen)
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = list(net.backbone.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    step = 0
    if ck_path.exists():
        step, meta = load_state(ck_path, net, ema, opt, dev)
        rng = np.random.default_rng([a.seed, a.stage, step])
        print(f"resumed stage {a.stage} at step {step}", file=sys.stderr)
    n_train = sum(p.numel() for p in params)
    print(f"stage {a.stage}: {n_train} trainable of {parameter_count(net)} parameters", file=sys.stderr)
    model = load_face_model() if a.stage == 2 else None
    if a.stage == 1:
        with np.load(a.data / "crops.npz") as z:
            data = Crops(z["crops"])
        n_items = len(data.crops)
    else:
        with np.load(ROOT / "weights" / "albedo_model.npz") as z:
            held = {str(x) for x in z["held_out"]}
        data = Pairs(a.data, model, held)
        n_items = len(data)
    print(f"{n_items} training items", file=sys.stderr)
    ab = alpha_bar(dev)
    t0 = time.time()
    meta.setdefault("runs", []).append({"start_step": step, "argv": sys.argv[1:], "items": n_items,
                                        "device": str(dev), "threads": a.threads})
    run = meta["runs"][-1]
    seconds0 = meta.get(f"stage{a.stage}_seconds", 0.0)
    losses = []
    stop = min(a.steps, a.stop_at or a.steps)
    while step < stop and time.time() - t0 < a.minutes * 60:
        if a.stage == 1:
            x0 = data.batch(rng, a.batch).to(dev)
            spatial = freq = None
            weight = torch.ones_like(x0[:, 0])
        else:
            x0, spatial, freq, weight = (x.to(dev) for x in data.batch(rng, a.batch))
        t = torch.from_numpy(rng.integers(0, T_STEPS, size=len(x0))).to(dev)
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32)).to(dev)
        xt = add_noise(x0, t, noise, ab)
        lr = a.lr * min(1.0, (step + 1) / 200) * (0.5 * (1 + math.cos(math.pi * min(1.0, step / a.steps))) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        pred = net(xt, t.float() / T_STEPS, spatial, freq)
        loss = ((pred - x0).square().mean(1) * weight).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(a.ema, (1 + step) / (10 + step))
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(pn.detach(), alpha=1 - d)
        step += 1
        losses.append(float(loss))
        if step % a.log_every == 0:
            el = time.time() - t0
            msg = (f"step {step} loss {np.mean(losses):.5f} lr {lr:.2e} {el:.0f} s "
                   f"({a.log_every / max(el - run.get('_last', 0.0), 1e-9):.2f} it/s)")
            run["_last"] = el
            print(msg, file=log, flush=True)
            print(msg, file=sys.stderr, flush=True)
            losses = []
        if step % a.save_every == 0 or step >= stop:
            meta[f"stage{a.stage}_seconds"] = seconds0 + time.time() - t0
            run["end_step"] = step
            save_state(ck_path, net, ema, opt, step, meta)
    meta[f"stage{a.stage}_seconds"] = seconds0 + time.time() - t0
    run["end_step"] = step
    run.pop("_last", None)
    save_state(ck_path, net, ema, opt, step, meta)
    print(f"stage {a.stage} at step {step} ({meta[f'stage{a.stage}_seconds']:.0f} s in all)", file=sys.stderr)
    return 0


def export(a) -> int:
    net = GeneratorNet(NetConfig())
    ema = copy.deepcopy(net)
    step, meta = load_state(a.work / "stage2.pt", net, ema, None, "cpu")
    meta["stage2_steps"] = step
    save_weights(ema, a.out, meta, load_face_model())
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes) from stage 2 step {step}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", type=int, choices=[1, 2], default=1)
    ap.add_argument("--export", action="store_true", help="write the stage-2 EMA weights to --out")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=GENERATOR_PATH)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--stop-at", type=int, default=0, help="stop at this step (the schedule still spans --steps): "
                                                           "repeats a run that --minutes ended")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=250)
    a = ap.parse_args()
    return export(a) if a.export else train(a)


if __name__ == "__main__":
    sys.exit(main())

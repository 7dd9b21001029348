"""The generator's network and its DDIM schedule.

A small pixel-space UNet denoiser (the *backbone*: x_t and the noise level in, the clean image x0 out) with
two condition encoders, as in cross-domain guided diffusion: a *spatial* encoder of the partial de-lit
texture, its confidence, its mirror image and the albedo prior (conditions.py), and a *frequency* encoder
of the texture's wavelet high-frequency bands. Each encoder gives one feature map per UNet level; those are
added to the backbone's features at the input of every level through 1x1 convolutions that start at zero
(so a stage-1 backbone is unchanged when stage 2 begins, as in ControlNet).

Training (scripts/train_generator.py): stage 1, the backbone alone on face photos (no conditions), learns
skin; stage 2 freezes the backbone's encoder half (input convolution, down path, middle, time embedding)
and trains the condition encoders, their zero convolutions and the decoder half on UV pairs.

Diffusion: T = 1000 steps of a cosine schedule (Nichol & Dhariwal 2021), x0-parameterised; sampling is
DDIM with eta = 0 (deterministic given the starting noise) on `steps` evenly spaced steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .conditions import FREQ_CHANNELS, SPATIAL_CHANNELS

T_STEPS = 1000


@dataclass
class NetConfig:
    channels: tuple[int, ...] = (16, 32, 64, 96)
    time_dim: int = 64
    spatial_channels: int = SPATIAL_CHANNELS
    freq_channels: int = FREQ_CHANNELS
    encoder_width: int = 32

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 4 if c % 4 == 0 else 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(tdim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.conv2(F.silu(h)) + self.skip(x)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (the step over T)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class Backbone(nn.Module):
    """UNet: one residual block per level down and up, two in the middle; x0 out."""

    def __init__(self, cfg: NetConfig):
        super().__init__()
        ch, tdim = cfg.channels, cfg.time_dim
        self.time_dim = tdim
        self.time_mlp = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inc = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = ch[0]
        for i, co in enumerate(ch):
            self.down.append(ResBlock(c, co, tdim))
            c = co
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(ch) - 1 else nn.Identity())
        self.mid = nn.ModuleList([ResBlock(c, c, tdim), ResBlock(c, c, tdim)])
        self.up = nn.ModuleList()
        for co in reversed(ch):
            self.up.append(ResBlock(c + co, co, tdim))
            c = co
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))

    def encoder_parameters(self):
        for m in (self.time_mlp, self.inc, self.down, self.downsample, self.mid):
            yield from m.parameters()

    def decoder_parameters(self):
        for m in (self.up, self.out):
            yield from m.parameters()

    def forward(self, x: torch.Tensor, t: torch.Tensor, inject: list[torch.Tensor] | None = None) -> torch.Tensor:
        temb = self.time_mlp(time_embedding(t, self.time_dim))
        h = self.inc(x)
        skips = []
        for i, (block, down) in enumerate(zip(self.down, self.downsample)):
            if inject is not None:
                h = h + inject[i]
            h = block(h, temb)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, temb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), temb)
        return self.out(h)


class ConditionEncoder(nn.Module):
    """A conv pyramid: one feature map per backbone level, each through a zero-initialised 1x1 conv."""

    def __init__(self, cin: int, width: int, channels: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.stages = nn.ModuleList()
        self.zero = nn.ModuleList()
        c = width
        for i, co in enumerate(channels):
            w = max(width, co)
            stride = 1 if i == 0 else 2
            self.stages.append(nn.Sequential(nn.Conv2d(c, w, 3, stride=stride, padding=1), nn.SiLU(),
                                             nn.Conv2d(w, w, 3, padding=1), nn.SiLU()))
            z = nn.Conv2d(w, co, 1)
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)
            self.zero.append(z)
            c = w

    def forward(self, x: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        h = self.stem(x)
        out = []
        for stage, zero, size in zip(self.stages, self.zero, sizes):
            h = stage(h)
            if h.shape[-2:] != size:
                h = F.interpolate(h, size=size, mode="nearest")
            out.append(zero(h))
        return out


class GeneratorNet(nn.Module):
    def __init__(self, cfg: NetConfig = NetConfig()):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        inputs = (cfg.channels[0],) + tuple(cfg.channels[:-1])   # what each level's first block takes in
        self.spatial = ConditionEncoder(cfg.spatial_channels, cfg.encoder_width, inputs)
        self.freq = ConditionEncoder(cfg.freq_channels, max(8, cfg.encoder_width // 2), inputs)

    def level_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        out = []
        for _ in self.cfg.channels:
            out.append((h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
        return out

    def encode(self, spatial: torch.Tensor, freq: torch.Tensor) -> list[torch.Tensor]:
        """The conditions' features per level (computed once per sample, reused at every step)."""
        sizes = self.level_sizes(*spatial.shape[-2:])
        return [a + b for a, b in zip(self.spatial(spatial, sizes), self.freq(freq, sizes))]

    def forward(self, x: torch.Tensor, t: torch.Tensor, spatial: torch.Tensor | None = None,
                freq: torch.Tensor | None = None, features: list[torch.Tensor] | None = None) -> torch.Tensor:
        if features is None and spatial is not None:
            features = self.encode(spatial, freq)
        return self.backbone(x, t, features)


# ---------------------------------------------------------------------------------------------
# Schedule and DDIM


def alpha_bar(device=None) -> torch.Tensor:
    """(T,) cumulative signal level of the cosine schedule, alpha_bar[T - 1] ~ 0."""
    s = 0.008
    steps = torch.arange(T_STEPS + 1, dtype=torch.float64, device=device) / T_STEPS
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    ab = (f / f[0])[1:]
    return ab.clamp(1e-5, 0.9999).float()


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    a = ab[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def ddim_timesteps(steps: int) -> list[int]:
    """`steps` evenly spaced steps from T - 1 down to 0."""
    steps = max(1, int(steps))
    return [int(round(x)) for x in torch.linspace(T_STEPS - 1, 0, steps).tolist()]


@dataclass
class StepInfo:
    index: int           # 0-based step
    steps: int
    t: int
    x0: torch.Tensor     # (B, 3, H, W) the clean image predicted at this step (after guidance)
    extras: dict = field(default_factory=dict)


def ddim_sample(net: GeneratorNet, spatial: torch.Tensor, freq: torch.Tensor, steps: int, seed: int = 0,
                guide=None, on_step=None) -> torch.Tensor:
    """x0 (B, 3, H, W) in [-1, 1] by deterministic DDIM (eta 0). The starting noise comes from a CPU generator
    seeded with `seed` (the same numbers on every device). `guide(i, t, x0) -> x0'` may move the predicted
    clean image at step i (identity guidance); `on_step(StepInfo)` is called after every step (progress,
    previews, cancel: it may raise)."""
    dev = spatial.device
    ab = alpha_bar(dev)
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((spatial.shape[0], 3, *spatial.shape[-2:]), generator=gen).to(dev)
    ts = ddim_timesteps(steps)
    with torch.no_grad():
        features = net.encode(spatial, freq)
    x0 = x
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t / T_STEPS, device=dev)
        with torch.no_grad():
            x0 = net(x, tt, features=features).clamp(-1.0, 1.0)
        extras = {}
        if guide is not None:
            x0, extras = guide(i, t, x0)
        a = ab[t]
        if i + 1 < len(ts):
            a_next = ab[ts[i + 1]]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        if on_step is not None:
            on_step(StepInfo(i, len(ts), t, x0, extras))
    return x0


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Identity guidance of the generator's sampling (as FitDiff does): at the last steps, the predicted clean
texture x0 moves down the gradient of an identity loss between the photo and the textured head rendered
in the photo's camera.

The render: the fitted head (skin, eyes, teeth, mouth as occluders) rasterized once into a square crop of
the photo around the face; each skin pixel's colour is the texture the texture stage will make there,
approximately: the photo's own de-lit texel where the direct view saw it (weight by confidence, as the
fill blends, texture.BLEND_WEIGHT) and the generator's x0 elsewhere, times the fitted SH shading; all
other pixels keep the photo. The loss: the distance between dlib's face descriptors of that render and of
the photo (backend/face_descriptor.py, differentiable through the chip alignment) when its weights are
installed; otherwise a perceptual stand-in (the colour and gradient differences of the blurred images over
the face skin). The step: x0 <- x0 - scale * g / rms(g) (rms over the texels the gradient reaches), so
`scale` is the RMS change in x0's units ([-1, 1] sRGB) per guided step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import render
from ..colour import linear_to_srgb, srgb_to_linear
from ..facemodel import PART_NAMES
from ..texture import BLEND_WEIGHT
from .conditions import TILES

CROP_SIDE = 256
CROP_MARGIN = 0.3


@dataclass
class IdentityGuide:
    pixel: torch.Tensor          # (N,) flat crop pixels of the skin
    grid: torch.Tensor           # (N, 2) grid_sample coordinates in the layout (RES x 2 RES)
    direct: torch.Tensor         # (N, 3) linear de-lit photo colour of the direct view
    alpha: torch.Tensor          # (N,) its blend weight
    shading: torch.Tensor        # (N, 3)
    photo: torch.Tensor          # (3, H, W) sRGB 0..255 crop of the photo
    points: torch.Tensor         # (478, 2) landmarks in crop px
    target: torch.Tensor | None  # (128,) the photo's descriptor (None: perceptual stand-in)
    scale: float
    start: int                   # first guided step
    net: object = None
    history: list = field(default_factory=list)

    @classmethod
    def build(cls, obs, fit, model, first: dict[int, torch.Tensor], scale: float, start: int, device) -> "IdentityGuide":
        from ..photometric import make_crop
        dev = torch.device("cpu") if device is None else torch.device(device)
        x0, y0, x1, y1 = obs.detection.box
        side = max(x1 - x0, y1 - y0) * (1 + 2 * CROP_MARGIN)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (int(cx - side / 2), int(cy - side / 2), int(math.ceil(cx + side / 2)), int(math.ceil(cy + side / 2)))
        W, H = obs.photo.width, obs.photo.height
        box = (max(0, box[0]), max(0, box[1]), min(W, box[2]), min(H, box[3]))
        crop = make_crop(obs, box, CROP_SIDE, dev)
        kc = crop.intrinsics
        topo = model.topology
        parts = topo.polygon_part[topo.triangle_polygon]
        drawn = torch.from_numpy(
            (parts == PART_NAMES.index("skin")) | (parts == PART_NAMES.index("eyes")) |
            (parts == PART_NAMES.index("teeth")) | (parts == PART_NAMES.index("mouth"))).nonzero().squeeze(1)
        tris = torch.from_numpy(topo.triangles).to(dev)
        cam = render.to_camera(fit.vertices.detach().float().to(dev), fit.rotation.float().to(dev),
                               fit.translation.float().to(dev))
        r = render.rasterize(render.project(cam, kc), tris[drawn], kc.height, kc.width, cull_backfaces=True)
        frags = render.fragments(r)
        tri = drawn.to(dev)[frags.triangle]
        skin = torch.from_numpy(parts == PART_NAMES.index("skin")).to(dev)[tri]
        corner_uv = torch.from_numpy(topo.triangle_uvs.astype("float32")).to(dev)[tri]        # (N, 3, 2)
        uv = (corner_uv * frags.bary[..., None]).sum(1)
        tile = torch.floor(corner_uv[:, :, 0].min(1).values).long() + 1001
        keep = skin & ((tile == 1001) | (tile == 1002))
        sel = keep.nonzero().squeeze(1)
        uv, tile = uv[sel], tile[sel]
        local_u = uv[:, 0] - (tile - 1001).float()
        normals = render.vertex_normals(cam, tris)
        n = F.normalize((normals[frags.vertex[sel]] * frags.bary[sel][..., None]).sum(1), dim=1)
        shading = render.sh_shading(n, fit.lighting.float().to(dev)).clamp_min(0.0)
        # The direct view (premultiplied) at the pixels' texels.
        direct = torch.zeros(len(sel), 3, device=dev)
        weight = torch.zeros(len(sel), device=dev)
        for t in TILES:
            m = (tile == t).nonzero().squeeze(1)
            if len(m) == 0:
                continue
            g = torch.stack([local_u[m] * 2 - 1, 1 - 2 * uv[m, 1]], 1)
            s = render.sample_image(first[t].float().to(dev), g)                               # (4, M)
            direct[m] = (s[:3] / s[3].clamp_min(1e-4)).T
            weight[m] = s[3]
        grid = torch.stack([((tile - 1001).float() + local_u) - 1.0, 1 - 2 * uv[:, 1]], 1)   # layout: 2 tiles wide
        photo = (linear_to_srgb(crop.image.permute(2, 0, 1)) * 255.0).float()
        s = kc.width / (box[2] - box[0])
        pts = torch.from_numpy((obs.detection.points - [box[0], box[1]]) * s).float().to(dev)
        guide = cls(frags.pixel[sel], grid, direct.clamp(0, 1), render.smoothstep(*BLEND_WEIGHT, weight), shading,
                    photo, pts, None, float(scale), int(start))
        try:
            from ..face_descriptor import descriptor, load_face_descriptor
            guide.net = load_face_descriptor(device=str(dev))
            with torch.no_grad():
                guide.target = descriptor(photo, pts, guide.net)
        except Exception:  # noqa: BLE001 - no dlib weights installed: the perceptual stand-in
            guide.net = None
        return guide

    @property
    def kind(self) -> str:
        return "dlib-descriptor" if self.net is not None else "perceptual"

    def render(self, x0: torch.Tensor) -> torch.Tensor:
        """(3, H, W) sRGB 0..255 crop with the head textured by x0 ((1, 3, RES, 2 RES) sRGB [-1, 1])."""
        lin = srgb_to_linear(((x0 + 1.0) * 0.5).clamp(0, 1))
        gen = F.grid_sample(lin, self.grid[None, None].to(lin.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)[0, :, 0].T                                   # (N, 3)
        a = self.alpha[:, None]
        colour = (a * self.direct + (1 - a) * gen) * self.shading
        img = self.photo.reshape(3, -1).clone()
        img[:, self.pixel] = (linear_to_srgb(colour.clamp(0, 1)) * 255.0).T
        return img.view_as(self.photo)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        img = self.render(x0)
        if self.net is not None:
            from ..face_descriptor import descriptor
            return torch.linalg.vector_norm(descriptor(img, self.points, self.net) - self.target)
        a, b = (F.avg_pool2d(x[None] / 255.0, 4)[0] for x in (img, self.photo))
        gx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
        gy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
        return (a - b).abs().mean() + (gx(a) - gx(b)).abs().mean() + (gy(a) - gy(b)).abs().mean()

    def __call__(self, i: int, t: int, x0: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if i < self.start or self.scale <= 0:
            return x0, {}
        with torch.enable_grad():
            x = x0.detach().float().requires_grad_(True)
            value = self.loss(x)
            (g,) = torch.autograd.grad(value, x)
        reached = g.abs().sum(1, keepdim=True) > 0
        rms = (g.square().sum() / (reached.sum() * 3).clamp_min(1)).sqrt().clamp_min(1e-12)
        out = (x0 - self.scale * g / rms).clamp(-1, 1)
        self.history.append({"step": i, "loss_before": float(value)})
        return out.to(x0.dtype), {"identity_loss": float(value)}

    def report(self) -> dict:
        return {"kind": self.kind, "steps": self.history}

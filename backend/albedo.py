"""The skin albedo model we own: mean and principal components of diffuse albedo in ICT's UV layout
(tiles 1001 and 1002), learned from the London photos (scripts/build_albedo_model.py; weights/MANIFEST.md).

albedo(c) = mean + sum_k c_k basis_k, linear light, with the components scaled by their standard
deviation so that c ~ N(0, 1). Its brightness scale is the London studio's: a training photo's fitted
shading averages about 1 over the face, so albedo is "the colour under that light". A photo's
lighting then carries its own exposure.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import render
from .cache import BoundedCache
from .paths import ALBEDO_PATH


@dataclass
class AlbedoModel:
    tiles: tuple[int, ...]        # UDIM tiles, in the order of the arrays
    mean: torch.Tensor            # (T, 3, R, R) linear albedo
    basis: torch.Tensor           # (K, T, 3, R, R) components times their standard deviation
    model_hash: str               # the face model (UV layout) it was learned on
    sha256: str = ""              # of the weights file (provenance)

    @property
    def num_components(self) -> int:
        return self.basis.shape[0]

    @property
    def resolution(self) -> int:
        return self.mean.shape[-1]

    def images(self, coeffs: torch.Tensor | None = None, tile: int | None = None) -> torch.Tensor:
        """(T, 3, R, R) albedo for coefficients (K,) (None: the mean), or (3, R, R) of one `tile` only
        (half the work: the fit samples one tile at every step); differentiable."""
        mean = self.mean if tile is None else self.mean[self.tiles.index(tile)]
        if coeffs is None or self.num_components == 0:
            return mean
        k = min(len(coeffs), self.num_components)
        basis = self.basis[:k] if tile is None else self.basis[:k, self.tiles.index(tile)]
        return mean + (coeffs[:k] @ basis.reshape(k, -1)).view_as(mean)

    def image(self, tile: int, coeffs: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        """(3, S, S) albedo of one tile, resampled to `size` (in linear light). For the texture stage: one
        thread for the product (a multi-threaded matrix-vector product may round differently) and exact
        2x upsampling steps, so the texture's bytes do not depend on the thread count."""
        from .threads import torch_threads
        with torch_threads(1):
            img = self.images(coeffs, tile)
        return img if size is None or size == img.shape[-1] else render.upsample(img, size)

    def sample(self, uv: torch.Tensor, coeffs: torch.Tensor | None = None, tile: int = 1001) -> torch.Tensor:
        """Albedo (N, 3) at UDIM uv (N, 2) of one tile (bilinear), differentiable in the coefficients."""
        img = self.images(coeffs, tile)
        grid = torch.stack([(uv[:, 0] - (tile - 1001)) * 2.0 - 1.0, 1.0 - 2.0 * uv[:, 1]], dim=1)
        out = F.grid_sample(img[None], grid[None, None].to(img.dtype), mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out[0, :, 0].T


_MODELS = BoundedCache(256 << 20)


def load_albedo_model(path: Path | str | None = None, device: str = "cpu") -> AlbedoModel | None:
    """The committed albedo model (float32 on `device`), loaded once; None when the file is absent
    (the photometric fit then uses a constant albedo: how the model itself was bootstrapped)."""
    path = Path(path or ALBEDO_PATH)
    if not path.is_file():
        return None

    def load() -> AlbedoModel:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            tiles = tuple(int(t) for t in z["tiles"])
            mean = torch.from_numpy(z["mean"].astype(np.float32)).to(device)
            basis = torch.from_numpy(z["basis"].astype(np.float32)).to(device)
            model_hash = str(z["model_hash"])
        return AlbedoModel(tiles, mean, basis, model_hash, hashlib.sha256(data).hexdigest())
    return _MODELS.get((str(path.resolve()), str(device)), load)

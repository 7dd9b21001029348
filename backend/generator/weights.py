"""The generator's weights file (weights/generator.npz): parameters in float16, the network's config and the
training record, in one npz without pickles (weights/MANIFEST.md)."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..cache import BoundedCache
from ..paths import GENERATOR_PATH
from .model import GeneratorNet, NetConfig

ENV_VAR = "LIKENESS_GENERATOR"          # another weights file (experiments, the bench on a checkpoint)
FORMAT = "likeness-uv-generator-1"


def save_weights(net: GeneratorNet, path: Path, meta: dict, model=None) -> None:
    """`model` (the face model): its mirror maps at the generator's resolutions go into the file too, so a
    fresh process does not rasterize the UV layout at those sizes first (conditions.mirror_map)."""
    arrays = {f"p/{k}": v.detach().cpu().numpy().astype(np.float16) for k, v in net.state_dict().items()}
    if model is not None:
        from .conditions import COND_RES, RES, mirror_map
        arrays["mirror/model_hash"] = np.array(model.hash)
        for res in (RES, COND_RES):
            m = mirror_map(model, res)
            arrays[f"mirror/{res}/dst"] = m.dst.numpy().astype(np.int32)
            arrays[f"mirror/{res}/src"] = m.src.numpy().astype(np.int32)
            arrays[f"mirror/{res}/w"] = m.w.numpy().astype(np.float32)
            arrays[f"mirror/{res}/coverage"] = m.coverage.numpy().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, format=np.array(FORMAT), config=np.array(json.dumps(net.cfg.to_dict())),
                        meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)


class LoadedGenerator:
    def __init__(self, net: GeneratorNet, meta: dict, sha256: str, path: Path):
        self.net, self.meta, self.sha256, self.path = net, meta, sha256, path


_NETS = BoundedCache(64 << 20)


def weights_path(path: Path | str | None = None) -> Path:
    """The weights file a run uses: `path`, else $LIKENESS_GENERATOR, else weights/generator.npz."""
    return Path(path or os.environ.get(ENV_VAR) or GENERATOR_PATH)


def load_generator(path: Path | str | None = None, device: str = "cpu") -> LoadedGenerator | None:
    """The generator in float32 on `device`, loaded once per (file, device); None when the file is absent."""
    path = weights_path(path)
    if not path.is_file():
        return None

    def load() -> LoadedGenerator:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if str(z["format"]) != FORMAT:
                raise ValueError(f"{path} is not a {FORMAT} file")
            net = GeneratorNet(NetConfig.from_dict(json.loads(str(z["config"]))))
            state = {k[2:]: torch.from_numpy(z[k].astype(np.float32)) for k in z.files if k.startswith("p/")}
            meta = json.loads(str(z["meta"]))
            if "mirror/model_hash" in z.files:
                from .conditions import preload_mirror_map
                for key in z.files:
                    if key.startswith("mirror/") and key.endswith("/dst"):
                        res = int(key.split("/")[1])
                        preload_mirror_map(str(z["mirror/model_hash"]), res, *(
                            torch.from_numpy(z[f"mirror/{res}/{k}"].astype(t)) for k, t in
                            (("dst", np.int64), ("src", np.int64), ("w", np.float32), ("coverage", np.float32))))
        net.load_state_dict(state)
        net = net.to(device).eval().requires_grad_(False)
        return LoadedGenerator(net, meta, hashlib.sha256(data).hexdigest(), path)
    return _NETS.get((str(path.resolve()), str(device)), load)

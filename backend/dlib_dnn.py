"""Reader for dlib's DNN serialisation, enough for `dlib_face_recognition_resnet_model_v1.dat`.

Pure Python + numpy: no dlib at run time. What the file holds (dlib's `serialize` of a
`loss_metric<fc_no_bias<... input_rgb_image_sized<150>>>` network):

- integers are varints: a control byte (low nibble = number of bytes, bit 7 = negative) and then
  the magnitude in little-endian bytes; strings are a varint length and the bytes; bools are the
  characters '0'/'1'; floats and doubles are two varints, mantissa and base-2 exponent;
- tensors are a varint version (2), four varint dimensions (n, k, rows, cols) and the values as
  raw little-endian float32 (read in one `np.frombuffer`, not value by value);
- the loss layer comes first (its version, its name and parameters), then the network from the
  outside in: every wrapper writes its version *before* its sub-network, and a computational
  layer (`add_layer`, version 2) writes its own parameters *after* it. So the file reads as
  the loss, a run of versions (outermost layer first), the input layer, then the layers' details
  from the input towards the output. The tag and skip wrappers of the residual blocks
  (`add_tag_layer`, `add_skip_layer`) are the version-1 entries of that run and write nothing
  else: the file says where they are but not their ids, nor which is a tag and which a skip.

`read_network` returns the layers from the input to the output, with the tag/skip wrappers in
place as `Marker`s; `face_descriptor_ops` (below) gives them their meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DlibFormatError(ValueError):
    """The file is not the dlib network this reader understands."""


# ---------------------------------------------------------------------------------------------
# Layers as the file describes them (weights as float32 numpy arrays)


@dataclass
class InputRGB:
    mean_rgb: tuple[float, float, float]   # subtracted per channel; dlib then divides by 256
    rows: int
    cols: int


@dataclass
class Conv:
    weight: np.ndarray          # (out, in, kh, kw)
    bias: np.ndarray            # (out,)
    stride: tuple[int, int]     # (y, x)
    padding: tuple[int, int]    # (y, x)


@dataclass
class Affine:
    """Batch norm folded into a per-channel scale and shift (dlib's `affine` in CONV mode)."""
    gamma: np.ndarray           # (channels,)
    beta: np.ndarray


@dataclass
class Relu:
    pass


@dataclass
class Pool:
    kind: str                   # "max" or "avg"
    size: tuple[int, int]       # (rows, cols); (0, 0) = the whole input (avg_pool_everything)
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class AddPrev:
    """Adds the output of a tagged layer; the file does not say which tag (see module doc)."""


@dataclass
class Marker:
    """A tag or skip wrapper (a version-1 entry): position known, kind and id not."""


@dataclass
class FullyConnected:
    weight: np.ndarray          # (in, out): dlib computes output = input @ weight
    bias: np.ndarray | None


@dataclass
class MetricLoss:
    margin: float
    distance_threshold: float


@dataclass
class Network:
    loss: MetricLoss
    input: InputRGB
    layers: list = field(default_factory=list)   # input -> output, Markers included


# ---------------------------------------------------------------------------------------------
# Primitive reader


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"file ends at byte {len(self.data)}, needed {n} more at {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte {control:#x} at {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def peek_int(self) -> int:
        pos = self.pos
        value = self.int()
        self.pos = pos
        return value

    def string(self) -> str:
        n = self.int()
        return self._take(n).decode("latin-1")

    def bool(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {c!r} at {self.pos - 1}")
        return c == b"1"

    def real(self) -> float:
        """dlib's portable float/double: mantissa * 2**exponent."""
        mantissa = self.int()
        exponent = self.int()
        return float(mantissa) * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} at {self.pos}, expected 2")
        dims = tuple(self.int() for _ in range(4))
        count = int(np.prod(dims))
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"alias_tensor version {version} at {self.pos}, expected 1")
        return tuple(self.int() for _ in range(4))


# ---------------------------------------------------------------------------------------------
# Layer details (the part an add_layer writes after its sub-network)


def _read_con(r: _Reader) -> Conv:
    params = r.tensor().ravel()
    out, rows, cols = r.int(), r.int(), r.int()
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    filters = r.alias_tensor()
    biases = r.alias_tensor()
    for _ in range(4):           # learning-rate and weight-decay multipliers (training only)
        r.real()
    n_filter = int(np.prod(filters))
    if filters[0] != out or filters[2:] != (rows, cols) or params.size != n_filter + int(np.prod(biases)):
        raise DlibFormatError(f"con_4 shapes disagree: filters {filters}, biases {biases}, params {params.size}")
    weight = params[:n_filter].reshape(filters)
    return Conv(weight, params[n_filter:].copy(), stride, padding)


def _read_affine(r: _Reader) -> Affine:
    params = r.tensor().ravel()
    gamma = r.alias_tensor()
    beta = r.alias_tensor()
    mode = r.int()
    n = int(np.prod(gamma))
    if mode != 0 or gamma[1] != n or params.size != n + int(np.prod(beta)):
        raise DlibFormatError(f"affine_ not in per-channel (CONV) mode or shapes disagree: mode {mode}, {gamma}")
    return Affine(params[:n].copy(), params[n:].copy())


def _read_pool(kind: str):
    def read(r: _Reader) -> Pool:
        size = (r.int(), r.int())
        stride = (r.int(), r.int())
        padding = (r.int(), r.int())
        return Pool(kind, size, stride, padding)
    return read


def _read_fc(r: _Reader) -> FullyConnected:
    n_out = r.int()
    n_in = r.int()
    params = r.tensor().ravel()
    weights = r.alias_tensor()
    biases = r.alias_tensor()
    bias_mode = r.int()         # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    for _ in range(4):
        r.real()
    if weights[:2] != (n_in, n_out):
        raise DlibFormatError(f"fc_2 weights {weights} do not match {n_in} -> {n_out}")
    w = params[:n_in * n_out].reshape(n_in, n_out)
    bias = params[n_in * n_out:].copy() if bias_mode == 0 else None
    return FullyConnected(w, bias)


LAYER_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "relu_": lambda r: Relu(),
    "max_pool_2": _read_pool("max"),
    "avg_pool_2": _read_pool("avg"),
    "add_prev_": lambda r: AddPrev(),
    "fc_2": _read_fc,
}

ADD_LAYER_VERSION = 2            # a computational layer (add_layer)
FIRST_LAYER_VERSION = 3          # the add_layer whose sub-network is the input layer
WRAPPER_VERSION = 1              # add_tag_layer / add_skip_layer


def _read_add_layer_trailer(r: _Reader, version: int) -> None:
    """The state an add_layer keeps for training: three flags and three (here empty) tensors;
    the first layer also keeps the input's sample expansion factor."""
    for _ in range(3):
        r.bool()
    for _ in range(3):           # x_grad, cached_output, params_grad (grad_final for the first)
        r.tensor()
    if version == FIRST_LAYER_VERSION:
        r.int()


def read_network(path: str | Path) -> Network:
    """Every layer of a dlib `loss_metric` network file, from the input to the output."""
    r = _Reader(Path(path).read_bytes())
    if r.int() != 1:
        raise DlibFormatError("not a dlib add_loss_layer (version 1 expected first)")
    name = r.string()
    if name != "loss_metric_2":
        raise DlibFormatError(f"loss layer {name!r}, expected loss_metric_2")
    loss = MetricLoss(r.real(), r.real())

    # The versions of the wrappers, outermost first, down to the first layer's (3), whose
    # sub-network is the input layer.
    versions = []
    while not versions or versions[-1] != FIRST_LAYER_VERSION:
        version = r.int()
        if version not in (ADD_LAYER_VERSION, WRAPPER_VERSION, FIRST_LAYER_VERSION):
            raise DlibFormatError(f"unexpected layer version {version} at byte {r.pos}")
        versions.append(version)

    name = r.string()
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"input layer {name!r}, expected input_rgb_image_sized")
    mean = (r.real(), r.real(), r.real())
    net = Network(loss, InputRGB(mean, r.int(), r.int()))

    for version in reversed(versions):           # innermost (next to the input) first
        if version == WRAPPER_VERSION:
            net.layers.append(Marker())
            continue
        name = r.string()
        reader = LAYER_READERS.get(name)
        if reader is None:
            raise DlibFormatError(f"layer {name!r} at byte {r.pos} is not one this reader knows")
        net.layers.append(reader(r))
        _read_add_layer_trailer(r, version)
    if r.pos != len(r.data):
        raise DlibFormatError(f"{len(r.data) - r.pos} bytes left after the last layer")
    return net


# ---------------------------------------------------------------------------------------------
# Tags and skips of dlib's face ResNet


@dataclass
class Tag:
    id: int                      # remember the current output as tag `id`


@dataclass
class Skip:
    id: int                      # continue from the output of tag `id`


@dataclass
class AddTagged:
    id: int                      # current output + tag `id`, zero-padded to the larger shape


def face_descriptor_ops(layers: list) -> list:
    """The layer list with the Markers and AddPrevs resolved to tags, skips and residual adds.

    dlib's face ResNet (dnn_face_recognition_ex.cpp) has two residual templates:
      residual      = add_prev1<block<tag1<x>>>                                  -> x + block(x)
      residual_down = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<tag1<x>>>>>>   -> avg_pool(x) + block(x)
    Read from the input, a lone Marker is `tag1`, and a pair of Markers right after a block is
    `tag2` then `skip1` (the skip goes back to tag1's x, which is pooled and added to tag2).
    So an AddPrev adds tag2 when a skip came since the last tag1, and tag1 otherwise."""
    ops: list = []
    skipped = False
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, Marker):
            if i + 1 < len(layers) and isinstance(layers[i + 1], Marker):
                ops += [Tag(2), Skip(1)]
                skipped = True
                i += 2
                continue
            ops.append(Tag(1))
            skipped = False
        elif isinstance(layer, AddPrev):
            ops.append(AddTagged(2 if skipped else 1))
            skipped = False
        else:
            ops.append(layer)
        i += 1
    return ops


def summary(layers: list) -> dict[str, int]:
    """Counts by layer kind, e.g. {"conv": 29, "affine": 29, "add_prev": 14, ...}."""
    names = {Conv: "conv", Affine: "affine", Relu: "relu", AddPrev: "add_prev", Marker: "marker",
             FullyConnected: "fc"}
    counts: dict[str, int] = {}
    for layer in layers:
        key = f"{layer.kind}_pool" if isinstance(layer, Pool) else names[type(layer)]
        counts[key] = counts.get(key, 0) + 1
    return counts


__all__ = ["Network", "read_network", "face_descriptor_ops", "summary", "DlibFormatError",
           "InputRGB", "Conv", "Affine", "Relu", "Pool", "AddPrev", "Marker", "FullyConnected",
           "Tag", "Skip", "AddTagged"]

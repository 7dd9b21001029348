"""Linear light and sRGB: the one place where colours change encoding.

Photos arrive as 8-bit sRGB; every colour operation of the backend (sampling, resampling, mirroring,
filling, blending, shading) runs on linear values, and the diffuse map is encoded to sRGB only when it
is written. Specular and normal maps are data (Blender's "Non-Color") and never pass through here.
The transfer function is the piecewise sRGB curve of IEC 61966-2-1, not a 2.2 power.
"""
from __future__ import annotations

import numpy as np
import torch

_A, _GAMMA, _KNEE_ENC, _KNEE_LIN, _SLOPE = 0.055, 2.4, 0.04045, 0.0031308, 12.92


# Torch computes the power in float64 and rounds back: its vectorised float32 pow (SLEEF) and the scalar
# pow used for the elements left over at the end of each thread's chunk differ in the last bit, so a
# float32 result would depend on the thread count; rounded from float64 it does not.


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] -> linear light (numpy or torch, any shape)."""
    if isinstance(x, torch.Tensor):
        d = x.double()
        return torch.where(d <= _KNEE_ENC, d / _SLOPE, ((d.clamp_min(_KNEE_ENC) + _A) / (1 + _A)) ** _GAMMA).to(x.dtype)
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= _KNEE_ENC, x / _SLOPE, ((np.maximum(x, _KNEE_ENC) + _A) / (1 + _A)) ** _GAMMA).astype(np.float32)


def linear_to_srgb(x):
    """Linear light -> sRGB-encoded values (inputs clamped to [0, 1]; numpy or torch)."""
    if isinstance(x, torch.Tensor):
        d = x.double().clamp(0.0, 1.0)
        return torch.where(d <= _KNEE_LIN, d * _SLOPE, (1 + _A) * d.clamp_min(_KNEE_LIN) ** (1 / _GAMMA) - _A).to(x.dtype)
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= _KNEE_LIN, x * _SLOPE, (1 + _A) * np.maximum(x, _KNEE_LIN) ** (1 / _GAMMA) - _A).astype(np.float32)


# Decoding 8-bit images through a 256-entry table is exact and costs one gather per channel.
SRGB8_TO_LINEAR = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)


# An 8-bit value at the top of the range was clipped (by the sensor, the camera's tone curve or the JPEG
# encoder): the scene was at least that bright, by how much is unknown. How clipped each 8-bit value is,
# 0 up to CLIP_8BIT[0] and 1 from CLIP_8BIT[1], smooth in between: JPEG ringing spreads a clipped 255 over
# 245..255, so a hard 255 test would miss most clipped skin.
CLIP_8BIT = (244.0, 252.0)
_t = np.clip((np.arange(256, dtype=np.float32) - CLIP_8BIT[0]) / (CLIP_8BIT[1] - CLIP_8BIT[0]), 0.0, 1.0)
SRGB8_CLIPPED = (_t * _t * (3.0 - 2.0 * _t)).astype(np.float32)
del _t


def decode_srgb8(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB image -> float32 linear, same shape."""
    return SRGB8_TO_LINEAR[np.asarray(image, dtype=np.uint8)]


def encode_srgb8(linear) -> np.ndarray:
    """Linear float image (numpy or torch) -> uint8 sRGB (rounded)."""
    enc = linear_to_srgb(linear)
    if isinstance(enc, torch.Tensor):
        return (enc * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return (enc * 255.0 + 0.5).astype(np.uint8)


def to_unorm8(x) -> np.ndarray:
    """Data in [0, 1] (numpy or torch) -> uint8, no transfer curve (Non-Color maps)."""
    if isinstance(x, torch.Tensor):
        return (x.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return (np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

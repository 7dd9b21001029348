"""ARKit's 52 blend shapes from ICT-FaceKit's 53 expressions: pure Python and numpy (no bpy, no torch).

ICT names its expressions after ARKit but splits two of them into halves and lacks one:
- `browInnerUp` and `cheekPuff` are `browInnerUp_L`/`_R` and `cheekPuff_L`/`_R`: the ARKit shape is
  the two halves together (sum of their offsets), as ARKit moves both sides with one value;
- `tongueOut` has no ICT shape: it is made as a key with zero offsets, so that everything that binds
  ARKit's 52 names (Live Link Face, Unreal's and Unity's ARKit rigs) finds all of them; it moves nothing.
Every other name is ICT's with `_L`/`_R` spelt `Left`/`Right`.
"""
from __future__ import annotations

import numpy as np

# Apple's ARFaceAnchor.BlendShapeLocation, in the order of Apple's documentation (and Live Link Face).
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
COMBINED = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"), "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}
MADE_EMPTY = ("tongueOut",)
FITTED_KEY = "FittedExpression"  # one word: USD names must be identifiers
# Directions, not sides: ICT spells these as ARKit does.
UNSIDED = ("jawLeft", "jawRight", "mouthLeft", "mouthRight")


def ict_name(arkit: str) -> str:
    """`eyeBlinkLeft` -> ICT's `eyeBlink_L` (names without a side, and jawLeft etc., are the same)."""
    if arkit in UNSIDED:
        return arkit
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if arkit.endswith(side):
            return arkit[: -len(side)] + suffix
    return arkit


def sources(arkit: str) -> tuple[str, ...]:
    """The ICT expressions whose offsets add up to the ARKit shape (empty: a shape ICT lacks)."""
    if arkit in COMBINED:
        return COMBINED[arkit]
    if arkit in MADE_EMPTY:
        return ()
    return (ict_name(arkit),)


def arkit_matrix(ict_names) -> np.ndarray:
    """(52, E) float32: ARKit shape k = sum_j M[k, j] * ICT expression j. KeyError names an ICT
    expression the mapping needs and the model lacks."""
    index = {str(n): j for j, n in enumerate(ict_names)}
    m = np.zeros((len(ARKIT_NAMES), len(index)), np.float32)
    for k, name in enumerate(ARKIT_NAMES):
        for src in sources(name):
            if src not in index:
                raise KeyError(f"the face model has no expression {src!r} (needed for ARKit {name!r})")
            m[k, index[src]] = 1.0
    return m


def arkit_deltas(ict_names, deltas: np.ndarray) -> np.ndarray:
    """(52, V, 3) float32 offsets of the ARKit shapes from ICT's (E, V, 3) expression offsets."""
    m = arkit_matrix(ict_names)
    d = np.asarray(deltas, dtype=np.float32)
    return np.tensordot(m, d, axes=(1, 0)).astype(np.float32)


def arkit_values(ict_names, coefficients) -> dict[str, float]:
    """The fitted expression as ARKit values: a combined shape takes the mean of its halves (the one
    value that moves both halves by as much as they moved on average), tongueOut is 0."""
    w = dict(zip((str(n) for n in ict_names), (float(c) for c in coefficients)))
    out = {}
    for name in ARKIT_NAMES:
        src = sources(name)
        out[name] = float(np.mean([w.get(s, 0.0) for s in src])) if src else 0.0
    return out

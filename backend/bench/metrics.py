"""Measures of the bench: landmark error, image similarity, shape error, verification AUC, identity.

Pure functions on numpy arrays (plus two lazily loaded networks: ST-LPIPS and dlib's face
descriptor, the latter run in torch by backend/face_descriptor.py), so each one can be checked on
hand-made cases (tests/test_metrics.py).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

# dlib's documented threshold: descriptors closer than this are the same person (LFW 99.38%).
DLIB_SAME_PERSON = 0.6


# ---------------------------------------------------------------------------------------------
# Landmarks


def point_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distance per point, (N,)."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(truth, np.float64), axis=-1)


def nme(pred: np.ndarray, truth: np.ndarray, normaliser: float) -> float:
    """Mean point error divided by a length (e.g. the inter-pupil distance)."""
    return float(point_errors(pred, truth).mean() / normaliser)


def frl_nme(ibug68: np.ndarray, tem_points: np.ndarray) -> np.ndarray:
    """Per-pair error of iBUG-68 points against the hand-placed FRL points that mean the same
    (landmarks.FRL_TO_IBUG68: 12 pairs; issue 4 says 13 but lists these 12), divided by the inter-pupil distance (FRL points 0, 1)."""
    from ..landmarks import frl_pairs, inter_pupil_distance
    frl, ibug = frl_pairs()
    return point_errors(np.asarray(ibug68)[ibug], np.asarray(tem_points)[frl]) / inter_pupil_distance(tem_points)


# ---------------------------------------------------------------------------------------------
# Images (uint8 or float arrays of the same shape; `mask` (H, W) bool selects the pixels compared)


def _check(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if mask is None:
        return np.ones(a.shape[:2], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image {a.shape[:2]}")
    return mask


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over the masked pixels (all channels); inf when identical."""
    mask = _check(a, b, mask)
    if not mask.any():
        return float("nan")
    diff = a.astype(np.float64)[mask] - b.astype(np.float64)[mask]
    mse = float(np.mean(diff ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004: Gaussian window, sigma 1.5) over the masked
    pixels; the SSIM map is computed on the whole image, so the window sees context at the mask edge."""
    from skimage.metrics import structural_similarity
    mask = _check(a, b, mask)
    if not mask.any():
        return float("nan")
    kw = dict(data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
    if a.ndim == 3:
        kw["channel_axis"] = 2
    _, smap = structural_similarity(a.astype(np.float64), b.astype(np.float64), **kw)
    if smap.ndim == 3:
        smap = smap.mean(axis=2)
    return float(smap[mask].mean())


def _stub_missing(names: list[str]) -> None:
    """stlpips_pytorch imports torchvision, torchsummary and IPython at module level but needs none
    of them for the shift-tolerant AlexNet (its weights file holds the whole network). Stand-ins are
    put in sys.modules only for modules that are not installed."""
    for name in names:
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            mod = types.ModuleType(name)
            mod.__dict__.update(models=None, summary=None, embed=None)
            sys.modules[name] = mod
    if isinstance(sys.modules.get("torchvision"), types.ModuleType) and sys.modules["torchvision"].__dict__.get("models") is None:
        if "torchvision.models" not in sys.modules:
            sys.modules["torchvision.models"] = types.ModuleType("torchvision.models")
        sys.modules["torchvision"].models = sys.modules["torchvision.models"]


class Lpips:
    """ST-LPIPS (Ghildyal & Liu 2022, shift-tolerant LPIPS, AlexNet trunk), from the
    stlpips-pytorch wheel, which ships all its weights: no network access. 0 = identical."""

    def __init__(self, device: str = "cpu"):
        import torch
        _stub_missing(["torchvision", "torchvision.models", "torchsummary", "IPython"])
        from stlpips_pytorch.stlpips import LPIPS
        self.torch = torch
        self.device = torch.device(device)
        self.net = LPIPS(net="alex", variant="shift_tolerant", spatial=True, verbose=False).to(self.device).eval()
        weights = Path(sys.modules["stlpips_pytorch.stlpips"].__file__).parent / "weights/vST0.0/alex_shift_tolerant.pth"
        state = torch.load(weights, map_location="cpu")
        missing = set(self.net.state_dict()) - set(state)
        # lins.k is the same module as link (an alias in a ModuleList); anything else would be random.
        if any(not k.startswith("lins.") for k in missing):
            raise RuntimeError(f"ST-LPIPS weights do not cover {sorted(missing)[:5]}")

    def __call__(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
        """Mean of the spatial LPIPS map over the masked pixels (images uint8 RGB)."""
        torch = self.torch
        mask = _check(a, b, mask)
        if not mask.any():
            return float("nan")

        def tens(x):
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / 127.5 - 1.0)
            return t.permute(2, 0, 1)[None].to(self.device)

        with torch.no_grad():
            dmap = self.net(tens(a), tens(b))[0, 0].cpu().numpy()
        return float(dmap[mask].mean())


class FaceDescriptor:
    """dlib's 128-D face descriptor (ResNet, models from the face-recognition-models wheel).
    The package itself is not imported (its __init__ needs pkg_resources): only its files are used.
    dlib still finds the face (HOG box, 68-point shape) and cuts the chip; the network runs in
    torch (backend/face_descriptor.py: the same numbers as dlib's to ~1e-7, and the same
    network as the differentiable identity distance)."""

    def __init__(self, device: str = "cpu"):
        import dlib
        from ..face_descriptor import CHIP_SIZE, load_face_descriptor
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("face-recognition-models is not installed")
        models = Path(list(spec.submodule_search_locations)[0]) / "models"
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
        self.net = load_face_descriptor(models / "dlib_face_recognition_resnet_model_v1.dat", device)
        self.chip_size = CHIP_SIZE

    def find_box(self, rgb: np.ndarray, fallback: tuple[float, float, float, float] | None = None):
        """dlib's HOG face box (largest face), else `fallback` (x0, y0, x1, y1), else None."""
        rgb = np.ascontiguousarray(rgb)
        scale = min(1.0, 800.0 / max(rgb.shape[:2]))
        small = rgb if scale == 1.0 else _resize(rgb, scale)
        rects = self.detector(small, 1 if max(small.shape[:2]) > 300 else 2)
        if rects:
            r = max(rects, key=lambda r: r.area())
            return self.dlib.rectangle(int(r.left() / scale), int(r.top() / scale),
                                       int(r.right() / scale), int(r.bottom() / scale))
        if fallback is not None:
            x0, y0, x1, y1 = fallback
            return self.dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        return None

    def __call__(self, rgb: np.ndarray, box) -> np.ndarray:
        """What dlib's compute_face_descriptor(rgb, shape) computes: the net on
        get_face_chip(rgb, shape, 150, 0.25)."""
        import torch
        rgb = np.ascontiguousarray(rgb)
        chip = self.dlib.get_face_chip(rgb, self.shape(rgb, box), size=self.chip_size, padding=0.25)
        x = torch.from_numpy(chip).permute(2, 0, 1).float()[None].to(self.net.mean.device)
        with torch.no_grad():
            return self.net(x)[0].cpu().numpy().astype(np.float64)


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    import cv2
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# Shapes


def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`src` (N, 3) moved by the similarity (scale, rotation, translation) that best fits it to
    `dst` in the least-squares sense (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (a ** 2).sum() / len(src)
    scale = float((s * d).sum() / var_s) if var_s > 0 else 1.0
    return scale * a @ rot.T + mu_d


def aligned_vertex_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-vertex distance (same units as the input) after a similarity alignment of pred to truth."""
    return point_errors(similarity_align(pred, truth), truth)


# ICT-FaceKit vertices of the eye and mouth measures (docs/bench.md), per side [L, R] (ICT's: L = the
# subject's left, +x). Upper lid centre: the face vertex that eyeBlink_<side> = 1 moves furthest (L 4163,
# R 1964); lower lid centre: the vertex below it (> 7 mm on the neutral head) that lies closest to it with
# that eye closed (L 2824, R 583). Neutral opening 11.2 / 11.5 mm, 1.9 / 2.5 mm at eyeBlink = 1 (ICT's
# lids stop short of touching). Mouth corners: the outermost vertex of the triangle that holds MediaPipe's
# corner landmark (291 -> L 6238, 61 -> R 5733; mirror images, x = +-2.53 cm). tests/test_geometry.py
# derives them again from the model.
EYELID_VERTICES = np.array([[4163, 2824], [1964, 583]])        # [L, R] x [upper, lower]
MOUTH_CORNER_VERTICES = np.array([6238, 5733])                # [L, R]


def eyelid_openings(vertices: np.ndarray) -> np.ndarray:
    """(2,) [L, R] distance between the upper and lower lid centre vertices (the mesh's units)."""
    v = np.asarray(vertices, np.float64)
    return point_errors(v[EYELID_VERTICES[:, 0]], v[EYELID_VERTICES[:, 1]])


def eye_closure_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(2,) [L, R] |opening(pred) - opening(truth)|: how well the fit closed (or opened) each eye. An
    opening is a distance within one mesh, so no alignment is needed."""
    return np.abs(eyelid_openings(pred) - eyelid_openings(truth))


def mouth_corner_errors(pred: np.ndarray, truth: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(2,) [L, R] error of the mouth-corner vertices after the similarity alignment of `region` (sorted
    vertex ids that hold both corners: the face error's region) of pred to truth."""
    region = np.asarray(region)
    at = np.searchsorted(region, MOUTH_CORNER_VERTICES)
    if not np.array_equal(region[np.minimum(at, len(region) - 1)], MOUTH_CORNER_VERTICES):
        raise ValueError("the region does not hold both mouth corners")
    return aligned_vertex_errors(np.asarray(pred)[region], np.asarray(truth)[region])[at]


def mean_vertex_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-vertex distance without any alignment (both shapes in the same model frame)."""
    return float(point_errors(a, b).mean())


# ---------------------------------------------------------------------------------------------
# Statistics


def verification_auc(same: np.ndarray, different: np.ndarray) -> float:
    """Area under the ROC curve when a *smaller* distance should mean the same person:
    P(d_same < d_different), ties counted half (the Mann-Whitney U statistic)."""
    same = np.asarray(same, np.float64).ravel()
    diff = np.asarray(different, np.float64).ravel()
    if len(same) == 0 or len(diff) == 0:
        return float("nan")
    allv = np.concatenate([same, diff])
    from scipy.stats import rankdata
    ranks = rankdata(allv)
    # Rank-sum of the "different" distances: large distances for different people = good.
    r_diff = ranks[len(same):].sum()
    u = r_diff - len(diff) * (len(diff) + 1) / 2.0
    return float(u / (len(same) * len(diff)))


def summarize(values) -> dict:
    """mean, median, p90, max, n of the finite values (NaN when there are none)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), "max": float(v.max())}

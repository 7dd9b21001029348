"""ICT-FaceKit Light as a torch morphable model: mesh = neutral + identity + expression.

Everything is in the asset's units and axes: centimetres, +Y up, the face looking down +Z,
+X towards the subject's left. Topology (polygons, per-corner UVs, parts) comes from the upstream
OBJ, so the bundle keeps ICT's quads and UDIM layout.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from .cache import BoundedCache
from .paths import find_ict_dir

# Inclusive vertex ranges of the asset README, in vertex order.
VERTEX_RANGES = {
    "face": (0, 9408),
    "head_neck": (9409, 11247),
    "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677),
    "eye_socket_right": (13678, 14061),
    "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "eyeball_left": (21451, 23020),
    "eyeball_right": (23021, 24590),
    "lacrimal_left": (24591, 24794),
    "lacrimal_right": (24795, 24998),
    "eye_blend_left": (24999, 25022),
    "eye_blend_right": (25023, 25046),
    "eye_occlusion_left": (25047, 25198),
    "eye_occlusion_right": (25199, 25350),
    "eyelashes_left": (25351, 26034),
    "eyelashes_right": (26035, 26718),
}
NARROW_FACE_LAST_VERTEX = 6705  # face without ears and top of forehead (asset README)

# Material parts of the bundle (docs/bundle.md) and which vertex ranges feed each.
PART_NAMES = ("skin", "eyes", "teeth", "mouth", "lashes", "eye_wet")
_RANGE_TO_PART = {
    "face": "skin", "head_neck": "skin", "eye_socket_left": "skin", "eye_socket_right": "skin",
    "mouth_socket": "mouth", "gums_tongue": "mouth", "teeth": "teeth",
    "eyeball_left": "eyes", "eyeball_right": "eyes",
    "lacrimal_left": "eye_wet", "lacrimal_right": "eye_wet", "eye_blend_left": "eye_wet",
    "eye_blend_right": "eye_wet", "eye_occlusion_left": "eye_wet", "eye_occlusion_right": "eye_wet",
    "eyelashes_left": "lashes", "eyelashes_right": "lashes",
}


@dataclass
class Topology:
    """Polygon mesh data shared by every fitted head (numpy, CPU)."""
    face_sizes: np.ndarray           # (P,) int32, 3 or 4
    face_vertex_indices: np.ndarray  # (C,) int32, polygon corners, flat
    corner_uvs: np.ndarray           # (C, 2) float32, UDIM u (tile 1001 -> 0..1, 1002 -> 1..2)
    polygon_part: np.ndarray         # (P,) int8 index into PART_NAMES
    triangles: np.ndarray            # (T, 3) int64 vertex indices (quads split along a-c)
    triangle_corners: np.ndarray     # (T, 3) int64 indices into corner arrays
    triangle_polygon: np.ndarray     # (T,) int64

    @property
    def triangle_uvs(self) -> np.ndarray:
        return self.corner_uvs[self.triangle_corners]


def parse_obj_topology(obj_path: Path, num_vertices: int) -> Topology:
    uvs, corner_v, corner_vt, sizes = [], [], [], []
    with open(obj_path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("vt "):
                uvs.append(line.split()[1:3])
            elif line.startswith("f "):
                corners = line.split()[1:]
                sizes.append(len(corners))
                for c in corners:
                    v, vt = c.split("/")[:2]
                    corner_v.append(v)
                    corner_vt.append(vt)
    uv = np.asarray(uvs, dtype=np.float32)
    face_sizes = np.asarray(sizes, dtype=np.int32)
    fvi = np.asarray(corner_v, dtype=np.int32) - 1
    corner_uvs = uv[np.asarray(corner_vt, dtype=np.int64) - 1]
    assert fvi.max() < num_vertices and set(np.unique(face_sizes)) <= {3, 4}

    starts = np.concatenate([[0], np.cumsum(face_sizes)[:-1]])
    tri_a = np.stack([starts, starts + 1, starts + 2], axis=1)
    quads = np.flatnonzero(face_sizes == 4)
    tri_b = np.stack([starts[quads], starts[quads] + 2, starts[quads] + 3], axis=1)
    triangle_corners = np.concatenate([tri_a, tri_b]).astype(np.int64)
    triangle_polygon = np.concatenate([np.arange(len(face_sizes)), quads]).astype(np.int64)
    order = np.argsort(triangle_polygon, kind="stable")
    triangle_corners, triangle_polygon = triangle_corners[order], triangle_polygon[order]

    first_vertex = fvi[starts]
    range_ends = np.array([hi for lo, hi in VERTEX_RANGES.values()])
    range_names = list(VERTEX_RANGES)
    part_of_range = np.array([PART_NAMES.index(_RANGE_TO_PART[n]) for n in range_names], dtype=np.int8)
    polygon_part = part_of_range[np.searchsorted(range_ends, first_vertex)]
    return Topology(face_sizes, fvi, corner_uvs, polygon_part,
                    fvi[triangle_corners].astype(np.int64), triangle_corners, triangle_polygon)


def vertex_parts(num_vertices: int) -> np.ndarray:
    """(V,) int8 index into PART_NAMES of every vertex (from VERTEX_RANGES)."""
    out = np.zeros(num_vertices, dtype=np.int8)
    for name, (lo, hi) in VERTEX_RANGES.items():
        out[lo:hi + 1] = PART_NAMES.index(_RANGE_TO_PART[name])
    return out


def mirror_map(points: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each point the index of the point nearest its mirror image across x = 0, and that distance;
    with `groups` (one label per point), searched only among points of the same label (skin mirrors
    onto skin, never onto a lash or an eye shell lying close to it)."""
    mirrored = points * np.array([-1.0, 1.0, 1.0], dtype=points.dtype)
    labels = np.zeros(len(points), np.int64) if groups is None else np.asarray(groups)
    idx = np.empty(len(points), np.int64)
    dist = np.empty(len(points), np.float32)
    for g in np.unique(labels):
        members = np.flatnonzero(labels == g)
        d, i = cKDTree(points[members]).query(mirrored[members])
        idx[members], dist[members] = members[i], d
    return idx, dist


def model_hash(ict_dir: Path) -> str:
    """sha256 over the asset files the model is built from: names a model (and its cache) exactly."""
    h = hashlib.sha256()
    for name in ("shape_modes.npz", "generic_neutral_mesh.obj", "vertex_indices.json"):
        h.update(name.encode() + b"\0" + hashlib.sha256((Path(ict_dir) / name).read_bytes()).digest())
    return h.hexdigest()


class FaceModel:
    """The ICT-FaceKit linear model on one torch device."""

    def __init__(self, ict_dir: Path, device: str | torch.device = "cpu"):
        self.ict_dir = Path(ict_dir)
        self.device = torch.device(device)
        data = np.load(self.ict_dir / "shape_modes.npz")
        indices = json.loads((self.ict_dir / "vertex_indices.json").read_text())
        all_exp = [str(n) for n in data["expression_names"]]
        self.expression_names: list[str] = list(indices["expressions"])  # the 53 ARKit-named shapes
        exp_rows = [all_exp.index(n) for n in self.expression_names]
        self.identity_names: list[str] = [str(n) for n in data["identity_names"]]
        neutral = data["neutral"].astype(np.float32)
        self.num_vertices = len(neutral)
        self.neutral = torch.from_numpy(neutral).to(self.device)
        self.identity = torch.from_numpy(data["identity"]).to(self.device)                   # (100, V, 3)
        self.expression = torch.from_numpy(data["expression"][exp_rows]).to(self.device)     # (53, V, 3)
        self.landmarks68 = np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64)
        self.topology = parse_obj_topology(self.ict_dir / "generic_neutral_mesh.obj", self.num_vertices)
        self.vertex_part = vertex_parts(self.num_vertices)
        self.vertex_symmetry, self.symmetry_error_cm = mirror_map(neutral, self.vertex_part)
        self.hash = model_hash(self.ict_dir)

    @property
    def num_identity(self) -> int:
        return self.identity.shape[0]

    @property
    def num_expression(self) -> int:
        return self.expression.shape[0]

    def vertices(self, identity: torch.Tensor | None = None, expression: torch.Tensor | None = None) -> torch.Tensor:
        """Mesh vertices (V, 3) for the given coefficients (None: all zero)."""
        out = self.neutral
        if identity is not None:
            out = out + torch.einsum("k,kvc->vc", identity, self.identity)
        if expression is not None:
            out = out + torch.einsum("k,kvc->vc", expression, self.expression)
        return out

    def surface_basis(self, vertex_ids: np.ndarray, bary: np.ndarray) -> "SurfaceBasis":
        """The linear model restricted to points given as barycentric coordinates on triangles."""
        ids = torch.as_tensor(vertex_ids.reshape(-1), device=self.device)
        w = torch.as_tensor(bary, dtype=torch.float32, device=self.device)[..., None]   # (L, 3, 1)

        def at(basis):  # (..., V, 3) -> (..., L, 3)
            return (basis[..., ids, :].reshape(*basis.shape[:-2], -1, 3, 3) * w).sum(-2)
        return SurfaceBasis(at(self.neutral), at(self.identity).flatten(1), at(self.expression).flatten(1))


@dataclass
class SurfaceBasis:
    """mean + alpha @ identity + beta @ expression at L surface points: small dense matrices, so
    evaluating it inside an optimisation loop costs microseconds."""
    mean: torch.Tensor        # (L, 3)
    identity: torch.Tensor    # (K_id, L*3)
    expression: torch.Tensor  # (K_exp, L*3)

    def points(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return self.mean + (alpha @ self.identity + beta @ self.expression).reshape(-1, 3)


# A model on one device is about 55 MB (identity and expression modes): CPU and CUDA copies fit.
_MODELS = BoundedCache(600 << 20)


def load_face_model(ict_dir: str | Path | None = None, device: str = "cpu") -> FaceModel:
    """The model, loaded once per process for each (folder, device)."""
    folder, dev = str(find_ict_dir(ict_dir)), str(torch.device(device))
    return _MODELS.get((folder, dev), lambda: FaceModel(Path(folder), dev))

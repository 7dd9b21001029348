"""ICT-FaceKit as loaded: counts from the asset README, linearity, parts, the mirror map."""
from __future__ import annotations

import numpy as np
import torch

from backend.facemodel import PART_NAMES, VERTEX_RANGES, load_face_model


def test_counts_match_the_asset_readme():
    m = load_face_model()
    assert m.num_vertices == 26719 and m.num_identity == 100 and m.num_expression == 53
    topo = m.topology
    assert len(topo.face_sizes) == 26384 and (topo.face_sizes == 4).sum() == 25836
    assert len(topo.triangles) == 25836 * 2 + 548
    assert "jawOpen" in m.expression_names and "eyeBlink_L" in m.expression_names


def test_model_is_linear_in_its_coefficients():
    m = load_face_model()
    torch.manual_seed(0)
    a, b = torch.randn(100), torch.rand(53)
    full = m.vertices(a, b)
    assert torch.allclose(m.vertices(), m.neutral)
    assert torch.allclose(full - m.neutral, (m.vertices(a) - m.neutral) + (m.vertices(None, b) - m.neutral), atol=1e-4)


def test_polygon_parts_follow_the_vertex_ranges():
    m = load_face_model()
    topo = m.topology
    starts = np.concatenate([[0], np.cumsum(topo.face_sizes)[:-1]])
    first = topo.face_vertex_indices[starts]
    lo, hi = VERTEX_RANGES["teeth"]
    assert (topo.polygon_part[(first >= lo) & (first <= hi)] == PART_NAMES.index("teeth")).all()
    lo, hi = VERTEX_RANGES["eyelashes_left"]
    assert (topo.polygon_part[(first >= lo) & (first <= hi)] == PART_NAMES.index("lashes")).all()
    assert (topo.polygon_part[first <= VERTEX_RANGES["head_neck"][1]] == PART_NAMES.index("skin")).all()


def test_mirror_map_of_face_and_head():
    m = load_face_model()
    skin = np.arange(VERTEX_RANGES["head_neck"][1] + 1)
    sym = m.vertex_symmetry[skin]
    neutral = m.neutral.numpy()
    assert (m.vertex_symmetry[sym] == skin).mean() > 0.99            # an involution
    assert np.abs(neutral[sym] * [-1, 1, 1] - neutral[skin]).max() < 0.01  # cm
    left, right = m.landmarks68[36], m.landmarks68[45]                   # outer eye corners
    assert m.vertex_symmetry[left] == right


def test_lash_cards_lie_on_the_strips_the_strand_image_draws():
    """export_layout.lash_image draws strands on LASH_STRIPS, roots at each strip's top edge: every lash
    corner's UV lies on a strip, in the eye's half of tile 1007, and each strip's top row lies behind its
    bottom row (the tips stick out towards the viewer)."""
    import export_layout
    m = load_face_model()
    topo = m.topology
    part = np.repeat(topo.polygon_part, topo.face_sizes)
    lash = part == PART_NAMES.index("lashes")
    uv = topo.corner_uvs[lash].astype(np.float64)
    xyz = m.neutral.numpy()[topo.face_vertex_indices[lash]]
    assert (np.floor(uv[:, 0]) == 6).all()                                  # tile 1007
    strip = np.full(len(uv), -1)
    for k, (v0, v1) in enumerate(export_layout.LASH_STRIPS):
        strip[(uv[:, 1] >= v0 - 1e-3) & (uv[:, 1] <= v1 + 1e-3)] = k
    assert (strip >= 0).all()
    u = uv[:, 0] - 6
    assert ((u > 0.5) == (xyz[:, 0] > 0)).all()        # the subject's left eye (+x) on the right half
    centre_y = m.neutral.numpy()[VERTEX_RANGES["eyeball_left"][0]:VERTEX_RANGES["eyeball_left"][1] + 1, 1].mean()
    for k, (v0, v1) in enumerate(export_layout.LASH_STRIPS):
        top = (strip == k) & (uv[:, 1] > v1 - 1e-3)
        bottom = (strip == k) & (uv[:, 1] < v0 + 1e-3)
        # roots at the lid margin, tips sticking out towards the viewer (+z): 2.5-7.6 mm on the neutral head
        assert 0.15 < xyz[bottom, 2].mean() - xyz[top, 2].mean() < 1.2, k
        assert (k >= 3) == (xyz[strip == k, 1].mean() > centre_y), k     # strips 3-5 are the upper lid's

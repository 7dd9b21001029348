"""The texture stage on a real scene: the ICT head rendered with a known UV texture, projected back.

The scene helpers (known_texture, scene_camera, render_textured) are also used by
scripts/texture_scene.py to look at the output.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend import camera
from backend.colour import linear_to_srgb
from backend.facemodel import PART_NAMES, FaceModel, load_face_model
from backend.raster import rasterize
from backend.scene import Hooks, TextureResult, known_scene
from backend.render import upsample2x
from backend.texture import FLAT_NORMAL, SKIN_SPECULAR_LEVEL, _seam_samples, project_texture, push_pull

BACKGROUND = (0.1, 0.8, 0.2)  # green: background bleeding into the texture is easy to find
SIZE = 512                     # texture tiles in these tests (the stage's default is 1024)


def known_texture(size: int, tile: int) -> np.ndarray:
    """(S, S, 3) float 0..1: skin-like colour ramps and a checker, mirror-symmetric about u = 0.5."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (x + 0.5) / size, 1.0 - (y + 0.5) / size
    a = np.abs(u - 0.5)
    n = 16 if tile == 1001 else 8
    check = ((np.floor(a * n) + np.floor(v * n)) % 2).astype(np.float32)
    r = 0.55 + 0.25 * v + 0.1 * check
    g = 0.35 + 0.4 * a + 0.1 * check
    b = 0.3 + 0.1 * np.cos(6.0 * v) + 0.1 * check
    return np.clip(np.stack([r, g, b], -1), 0, 1)


def scene_camera(width: int = 1350, height: int = 1350, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
                 fill: float = 0.55):
    """Intrinsics, R, t: the head faces the camera, turned by yaw (about +Y) and pitch (about +X)."""
    k = camera.Intrinsics.for_image(width, height)
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = torch.tensor([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    dist = k.focal_px * 34.0 / (fill * height)  # the head (34 cm with the neck) fills `fill` of the height
    return k, (ry @ rx).float(), torch.tensor([0.0, 2.0, -dist])


def render_textured(model: FaceModel, vertices: torch.Tensor, rot, trans, k: camera.Intrinsics,
                    textures: dict[int, np.ndarray]) -> np.ndarray:
    """The head with its skin textured from UV tiles (other parts flat) on BACKGROUND -> (H, W, 3) uint8."""
    topo = model.topology
    parts = topo.polygon_part[topo.triangle_polygon]
    keep = np.flatnonzero(np.isin(parts, [PART_NAMES.index(p) for p in ("skin", "eyes", "teeth", "mouth")]))
    keep_t = torch.from_numpy(keep)
    screen = camera.project(camera.to_camera(vertices, rot, trans), k)
    r = rasterize(screen, torch.from_numpy(topo.triangles)[keep_t], k.height, k.width, cull_backfaces=True)
    img = torch.tensor(BACKGROUND).repeat(k.height, k.width, 1)
    tri = keep_t[r.triangle[r.mask]]
    corner_uv = torch.from_numpy(topo.corner_uvs)[torch.from_numpy(topo.triangle_corners)[tri]]
    uv = (corner_uv * r.bary[r.mask][..., None]).sum(1)
    tile = torch.floor(uv[:, 0]).long() + 1001
    tri_part = torch.from_numpy(parts.astype(np.int64))[tri]
    col = torch.tensor([0.9, 0.9, 0.85]).repeat(len(tri), 1)  # eyes, teeth
    col[tri_part == PART_NAMES.index("mouth")] = torch.tensor([0.4, 0.1, 0.1])
    for t, tex in textures.items():
        sel = (tile == t) & (tri_part == PART_NAMES.index("skin"))
        grid = torch.stack([(uv[sel, 0] - (t - 1001)) * 2 - 1, 1 - 2 * uv[sel, 1]], 1)
        timg = torch.from_numpy(tex).permute(2, 0, 1).float()
        col[sel] = F.grid_sample(timg[None], grid[None, None], align_corners=False)[0, :, 0].T
    img[r.mask] = col
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def model():
    return load_face_model()


@pytest.fixture(scope="module")
def textures():
    return {t: known_texture(SIZE, t) for t in (1001, 1002)}


def _scene(model, textures, yaw, width=900):
    k, rot, trans = scene_camera(width, width, yaw_deg=yaw)
    photo = render_textured(model, model.neutral, rot, trans, k, textures)
    obs, fit = known_scene(photo, k, rot, trans, model.neutral)
    return photo, project_texture(obs, fit, model, SIZE)


@pytest.fixture(scope="module")
def frontal(model, textures):
    return _scene(model, textures, 0.0)


@pytest.fixture(scope="module")
def yawed(model, textures):
    return _scene(model, textures, 35.0)


def _vis(tex: TextureResult, tile: int) -> np.ndarray:
    return tex.maps["visibility"][tile]


def _srgb(tex: TextureResult, tile: int) -> np.ndarray:
    """The diffuse tile as the sRGB values the scene's texture holds (the stage works in linear light)."""
    return linear_to_srgb(tex.maps["diffuse"][tile])


def _err(tex: TextureResult, textures, tile: int) -> np.ndarray:
    return np.abs(_srgb(tex, tile) - textures[tile]).mean(-1)


def test_outputs_have_the_bundle_layout(frontal):
    _, tex = frontal
    assert tex.strategy == "projection" and tex.size == SIZE
    for tile in (1001, 1002):
        m = {role: tex.maps[role][tile] for role in ("diffuse", "visibility", "specular", "normal")}
        assert m["diffuse"].shape == (SIZE, SIZE, 3) and m["diffuse"].dtype == np.float32
        assert 0.0 <= m["diffuse"].min() and m["diffuse"].max() <= 1.0
        assert m["visibility"].shape == (SIZE, SIZE) and 0.0 <= m["visibility"].min() <= m["visibility"].max() <= 1.0
        assert (m["specular"] == SKIN_SPECULAR_LEVEL).all() and m["specular"].shape == (SIZE, SIZE)
        assert (m["normal"] == np.array(FLAT_NORMAL, dtype=np.float32)).all() and m["normal"].shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("scene", ["frontal", "yawed"])
def test_recovers_the_known_texture_where_seen(scene, textures, request):
    _, maps = request.getfixturevalue(scene)
    vis = _vis(maps, 1001)
    seen = vis > 0.5
    assert seen.mean() > 0.25
    assert _err(maps, textures, 1001)[seen].mean() < 0.02


def test_visibility_is_high_on_the_face_and_zero_behind(frontal):
    _, maps = frontal
    vis = _vis(maps, 1001)
    # The middle of the face in tile 1001 (forehead, cheeks, chin: the UV layout is a frontal unwrap).
    centre = vis[int(0.25 * SIZE):int(0.7 * SIZE), int(0.3 * SIZE):int(0.7 * SIZE)]
    assert np.median(centre) > 0.9
    # The back of the head (the middle of tile 1002) is never seen from the front.
    back = _vis(maps, 1002)[int(0.3 * SIZE):int(0.6 * SIZE), int(0.35 * SIZE):int(0.65 * SIZE)]
    assert back.max() == 0.0


def test_mirror_fills_the_hidden_cheek(yawed, textures):
    """Turned 35 degrees, one cheek is barely seen; the known texture is symmetric, so the mirror
    fill must bring back its pattern (not just a smooth fill)."""
    _, maps = yawed
    vis = _vis(maps, 1001)
    mirror_vis = vis[:, ::-1]  # the UV layout of the face is symmetric about u = 0.5
    hidden = (vis < 0.05) & (mirror_vis > 0.8)
    assert hidden.sum() > 0.03 * SIZE * SIZE
    err = _err(maps, textures, 1001)[hidden]
    assert err.mean() < 0.03
    # A flat fill would miss the checker: its error is about half the checker contrast.
    flat = np.abs(textures[1001][hidden] - textures[1001][hidden].mean(0)).mean()
    assert err.mean() < 0.5 * flat


@pytest.mark.parametrize("scene", ["frontal", "yawed"])
def test_no_holes_and_no_background(scene, request):
    _, maps = request.getfixturevalue(scene)
    for tile in (1001, 1002):
        img = _srgb(maps, tile)
        lum = img.mean(-1)
        assert lum.min() > 0.25 * np.median(lum), f"dark texels in tile {tile}"
        greenish = img[..., 1] - np.maximum(img[..., 0], img[..., 2])
        assert (greenish > 0.1).mean() < 1e-4, f"background colour in tile {tile}"


def test_no_step_across_the_seam_between_tiles(model, frontal):
    _, maps = frontal
    texel, src = _seam_samples(model, model.topology.polygon_part[model.topology.triangle_polygon] == 0,
                               1002, 1001, SIZE)
    a = _srgb(maps, 1002).reshape(-1, 3)[texel]
    x = np.clip((src[:, 0] * SIZE).astype(int), 0, SIZE - 1)
    y = np.clip(((1 - src[:, 1]) * SIZE).astype(int), 0, SIZE - 1)
    b = _srgb(maps, 1001)[y, x]
    assert len(texel) > 500
    assert np.abs(a - b).mean() < 0.03


def test_cancel_check_is_called_and_stops_the_stage(model, frontal):
    photo, _ = frontal
    k, rot, trans = scene_camera(900, 900)
    obs, fit = known_scene(photo, k, rot, trans, model.neutral)
    calls, fractions = [], []

    def count():
        calls.append(1)

    project_texture(obs, fit, model, SIZE, Hooks(cancel_check=count, progress=fractions.append))
    assert len(calls) >= 6
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 5

    class Cancelled(Exception):
        pass

    def cancel_at_third():
        calls.append(1)
        if len(calls) >= 3:
            raise Cancelled

    calls.clear()
    with pytest.raises(Cancelled):
        project_texture(obs, fit, model, SIZE, Hooks(cancel_check=cancel_at_third))


def test_push_pull_keeps_data_and_fills_smoothly():
    g = torch.Generator().manual_seed(0)
    colour = torch.rand(3, 64, 64, generator=g)
    weight = torch.zeros(64, 64)
    weight[10:20, 10:20] = 1.0
    weight[40:60, 30:50] = 1.0
    out = push_pull(colour, weight)
    assert torch.allclose(out[:, weight > 0], colour[:, weight > 0])
    hole = weight == 0
    assert (out[:, hole] >= colour[:, ~hole].min() - 1e-5).all() and (out[:, hole] <= colour[:, ~hole].max() + 1e-5).all()
    # Smooth where it filled: neighbouring hole pixels differ far less than the random data does.
    dx = (out[:, :, 1:] - out[:, :, :-1]).abs()[:, hole[:, 1:] & hole[:, :-1]]
    assert dx.mean() < 0.02
    # Far from all data (farther the smaller its weight), the prior decides; near data, the data.
    prior = torch.tensor([0.2, 0.4, 0.6])
    out = push_pull(colour, weight, prior, 1e-2)
    assert torch.allclose(out[:, 0, 63], prior, atol=0.05)
    assert torch.allclose(out[:, weight > 0], colour[:, weight > 0], atol=0.02)


def test_output_does_not_depend_on_the_thread_count(model, textures, monkeypatch):
    """The same bytes whatever the thread count (the stage picks it from the load average)."""
    import backend.texture as texture_module
    from backend.colour import encode_srgb8
    k, rot, trans = scene_camera(900, 900, yaw_deg=30.0)
    obs, fit = known_scene(render_textured(model, model.neutral, rot, trans, k, textures), k, rot, trans, model.neutral)
    out = []
    for n in (1, 2, 3):
        monkeypatch.setattr(texture_module, "idle_cpu_threads", lambda n=n: n)
        tex = project_texture(obs, fit, model, SIZE)
        out.append({t: (encode_srgb8(tex.maps["diffuse"][t]), tex.maps["visibility"][t]) for t in (1001, 1002)})
    for other in out[1:]:
        for t in (1001, 1002):
            assert np.array_equal(out[0][t][0], other[t][0]) and np.array_equal(out[0][t][1], other[t][1])


def test_upsample2x_is_bilinear_and_exact():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 17, 10, generator=g)
    ref = F.interpolate(x[None], scale_factor=2, mode="bilinear", align_corners=False)[0]
    assert upsample2x(x).shape == (3, 34, 20)
    assert torch.allclose(upsample2x(x), ref, atol=1e-6)


def test_mirror_map_stays_within_each_part(model):
    """Skin mirrors onto skin (not onto lashes or eye shells lying close to it), and nearly every skin
    triangle finds its mirrored polygon, so the mirror fill reaches it."""
    from backend.texture import _mirror_corners
    part = model.vertex_part
    assert (part[model.vertex_symmetry] == part).all()
    topo = model.topology
    skin = np.flatnonzero(topo.polygon_part[topo.triangle_polygon] == PART_NAMES.index("skin"))
    found = (_mirror_corners(model, skin) >= 0).all(1)
    assert found.mean() > 0.995, f"{1 - found.mean():.2%} of skin triangles have no mirror"


def _same_layout(a, b) -> None:
    (lays_a, seams_a), (lays_b, seams_b) = a, b
    for la, lb in zip(lays_a, lays_b, strict=True):
        assert la.tile == lb.tile and sorted(la.mirror) == sorted(lb.mirror)
        for name in ("texel", "vertex", "bary", "outer", "mouth", "right"):
            ta, tb = getattr(la, name), getattr(lb, name)
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), name
        for mt in la.mirror:
            assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(la.mirror[mt], lb.mirror[mt]))
    assert (seams_a.tile, seams_a.source) == (seams_b.tile, seams_b.source)
    assert torch.equal(seams_a.texel, seams_b.texel) and torch.equal(seams_a.grid, seams_b.grid)


def test_a_new_process_reads_the_uv_layout_from_disk_instead_of_drawing_it(model, tmp_path, monkeypatch):
    """Drawing the UV layout costs seconds in every new process (2-3 s at 1024 px, 8-10 s at 2048 on 2 cores):
    the first draw is saved in the user cache, and a later process reads back the same tensors, to the bit.
    A file from other code (another fingerprint) is replaced; a damaged file is drawn again."""
    from backend import texture
    monkeypatch.setattr(texture, "LAYOUT_DISK_DIR", tmp_path)
    drawn = []
    real = texture._compute_uv_layout
    monkeypatch.setattr(texture, "_compute_uv_layout", lambda *a: drawn.append(a[1]) or real(*a))
    path = texture._layout_path(model, 256, "cpu")
    assert path.parent == tmp_path
    stale = path.with_name(path.name.rsplit("-", 1)[0] + "-000000000000.npz")
    stale.write_bytes(b"older code's layout")
    first = texture._stored_uv_layout(model, 256, "cpu", lambda: None)
    assert drawn == [256] and path.is_file() and not stale.exists()
    again = texture._stored_uv_layout(model, 256, "cpu", lambda: None)   # a new process: nothing in memory
    assert drawn == [256]
    _same_layout(first, again)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])       # cut off (a full disk, a crash)
    _same_layout(first, texture._stored_uv_layout(model, 256, "cpu", lambda: None))
    assert drawn == [256, 256] and texture.read_npz(path) is not None     # drawn again and saved whole

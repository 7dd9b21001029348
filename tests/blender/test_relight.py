"""Relight presets on a plain mesh: placement relative to the bounding box, switching, restoring."""
from __future__ import annotations

import bpy
import pytest
from mathutils import Vector


@pytest.fixture
def head(empty_scene):
    # A stand-in head: 0.2 x 0.25 x 0.3 m box centred at (1, 2, 1.5), marked like an imported head.
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(1.0, 2.0, 1.5))
    ob = bpy.context.active_object
    ob.scale = (0.2, 0.25, 0.3)
    ob["likeness_head"] = True
    # A fitted photo lighting, as the importer stores it: uniform shading 0.8 plus light from above.
    sh = [[0.0] * 3 for _ in range(9)]
    sh[0] = [0.8 / 0.282095] * 3
    sh[1] = [0.4] * 3   # +Y in camera space: from above
    ob["likeness_lighting"] = [v for row in sh for v in row]
    ob["likeness_pose_rotation"] = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    bpy.context.view_layer.update()
    return ob


def test_every_preset(head):
    from likeness.operators import relight
    scene = bpy.context.scene
    centre, size = relight.head_bounds([head])
    assert (centre - Vector((1.0, 2.0, 1.5))).length < 1e-5 and abs(size - 0.3) < 1e-5
    assert set(relight.PRESETS) >= {"STUDIO", "OVERCAST", "GOLDEN", "RIM", "NEUTRAL", "PHOTO"}
    for key, spec in relight.PRESETS.items():
        assert bpy.ops.likeness.relight(preset=key) == {"FINISHED"}
        lights = relight.preset_lights(scene)
        assert len(lights) == len(spec["lights"]) and all(o.type == "LIGHT" for o in lights)
        assert all(o[relight.PROP_PRESET] == key for o in lights)
        assert scene.world is not None and scene.world[relight.PROP_PRESET] == key
        assert relight.current_preset(scene) == key
        for o, ls in zip(lights, spec["lights"]):
            offset = o.location - centre
            assert abs(offset.length - ls["dist"] * size) < 1e-4, (key, o.name)
            # aimed at the head: the light's -Z axis points to the centre
            aim = o.matrix_world.to_quaternion() @ Vector((0, 0, -1))
            assert aim.dot(-offset.normalized()) > 0.999, (key, o.name)
    # a key light is in front of the face (face looks down -Y) for the studio preset
    bpy.ops.likeness.relight(preset="STUDIO")
    key = next(o for o in relight.preset_lights(scene) if "Key" in o.name)
    assert key.location.y < centre.y - 0.3 * size


def test_switch_removes_only_previous_preset_lights(head):
    from likeness.operators import relight
    scene = bpy.context.scene
    user_light = bpy.data.objects.new("My Lamp", bpy.data.lights.new("My Lamp", "POINT"))
    scene.collection.objects.link(user_light)
    user_world = bpy.data.worlds.new("My World")
    scene.world = user_world

    bpy.ops.likeness.relight(preset="STUDIO")
    studio = {o.name for o in relight.preset_lights(scene)}
    bpy.ops.likeness.relight(preset="RIM")
    names = {o.name for o in scene.objects}
    assert "My Lamp" in names and head.name in names
    assert not studio & names, "the studio lights must be gone"
    assert len(relight.preset_lights(scene)) == 3
    assert sum(1 for w in bpy.data.worlds if w.get(relight.PROP_PRESET)) == 1, "old preset world removed"
    assert "My World" in bpy.data.worlds

    bpy.ops.likeness.clear_lighting()
    assert relight.preset_lights(scene) == []
    assert scene.world == user_world
    assert "My Lamp" in {o.name for o in scene.objects}
    assert not any(w.get(relight.PROP_PRESET) for w in bpy.data.worlds)
    assert not any(c.get(relight.PROP_PRESET + "_collection") for c in bpy.data.collections)


def test_preset_scales_with_head(empty_scene):
    from likeness.operators import relight
    bpy.ops.mesh.primitive_cube_add(size=2.0)  # 2 m "head"
    big = relight.apply_preset("STUDIO")
    d_big = max(o.location.length for o in big)
    e_big = max(o.data.energy for o in big)
    bpy.context.active_object.scale = (0.1, 0.1, 0.1)
    bpy.context.view_layer.update()
    small = relight.apply_preset("STUDIO")
    assert abs(max(o.location.length for o in small) * 10 - d_big) < 1e-3
    # same irradiance at the head: power scales with distance squared
    assert abs(max(o.data.energy for o in small) * 100 - e_big) / e_big < 1e-3


def test_as_photographed_builds_the_fitted_light_and_cleans_it_up(head):
    """An environment whose radiance reproduces the fitted SH: brighter above the head (camera +Y =
    world +Z for this pose), never negative; switching presets removes its image."""
    import numpy as np
    from likeness.operators import relight
    scene = bpy.context.scene
    assert bpy.ops.likeness.relight(preset="PHOTO") == {"FINISHED"}
    env = next(n for n in scene.world.node_tree.nodes if n.type == "TEX_ENVIRONMENT")
    img = env.image
    px = np.asarray(img.pixels[:], np.float32).reshape(img.size[1], img.size[0], 4)[..., :3]
    assert px.min() >= 0.0
    top, bottom = px[-8:].mean(), px[:8].mean()   # Blender's rows start at the bottom
    assert top > bottom * 1.5, (top, bottom)
    name = img.name
    bpy.ops.likeness.relight(preset="STUDIO")
    assert name not in bpy.data.images


def test_as_photographed_needs_a_fitted_light(head):
    del head["likeness_lighting"]
    with pytest.raises(RuntimeError, match="photo lighting"):
        bpy.ops.likeness.relight(preset="PHOTO")

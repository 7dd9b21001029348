"""Relight presets: a few lights and a world, placed relative to the head's bounding box.

Lights the add-on creates carry the custom property `likeness_preset` and live in the collection
"Likeness Lights"; switching presets removes only those. The scene's previous (user) world is
remembered on the scene and restored by "Remove Lighting".
"""

from __future__ import annotations

import math

import bpy
import numpy as np
from mathutils import Vector

from .. import sh_lighting
from .importer import PROP_LIGHTING, PROP_POSE, find_heads

PROP_PRESET = "likeness_preset"
PROP_PREV_WORLD = "likeness_previous_world"
LIGHTS_COLLECTION = "Likeness Lights"

# Light positions are head-relative: azimuth 0 = in front of the face (-Y), +90 = the subject's
# left (+X); elevation above the head's centre; distance in head sizes (largest bbox dimension).
# `irradiance` is what the light delivers at the head's centre (W/m^2, as a sun's strength).
PRESETS = {
    "STUDIO": {
        "label": "Studio Three-Point",
        "description": "Warm key, soft fill and a cool rim light on a dark background",
        "world": (0.03, 0.03, 0.03), "world_strength": 1.0,
        "lights": [
            {"name": "Key", "type": "AREA", "az": -40, "el": 30, "dist": 3.0, "irradiance": 5.0,
             "size": 1.2, "color": (1.0, 0.96, 0.9)},
            {"name": "Fill", "type": "AREA", "az": 50, "el": 10, "dist": 3.5, "irradiance": 1.5,
             "size": 2.0, "color": (0.92, 0.96, 1.0)},
            {"name": "Rim", "type": "SPOT", "az": 160, "el": 35, "dist": 3.0, "irradiance": 6.0,
             "spot_deg": 45, "color": (0.85, 0.92, 1.0)},
        ],
    },
    "OVERCAST": {
        "label": "Soft Overcast",
        "description": "A bright grey-blue sky and one very large soft light from above",
        "world": (0.50, 0.55, 0.62), "world_strength": 1.0,
        "lights": [
            {"name": "Sky", "type": "AREA", "az": 0, "el": 70, "dist": 4.0, "irradiance": 1.5,
             "size": 6.0, "color": (0.93, 0.96, 1.0)},
        ],
    },
    "GOLDEN": {
        "label": "Golden Hour Sun",
        "description": "A low warm sun from the side and a blue sky fill",
        "world": (0.22, 0.30, 0.48), "world_strength": 0.7,
        "lights": [
            {"name": "Sun", "type": "SUN", "az": -65, "el": 12, "dist": 4.0, "irradiance": 4.0,
             "angle_deg": 1.5, "color": (1.0, 0.60, 0.30)},
        ],
    },
    "RIM": {
        "label": "Rim / Dramatic",
        "description": "Two strong back lights outline the head; almost no front light",
        "world": (0.003, 0.003, 0.004), "world_strength": 1.0,
        "lights": [
            {"name": "Rim L", "type": "SPOT", "az": 125, "el": 20, "dist": 2.5, "irradiance": 12.0,
             "spot_deg": 40, "color": (0.80, 0.88, 1.0)},
            {"name": "Rim R", "type": "SPOT", "az": -125, "el": 20, "dist": 2.5, "irradiance": 12.0,
             "spot_deg": 40, "color": (1.0, 0.85, 0.70)},
            {"name": "Glow", "type": "AREA", "az": -20, "el": -15, "dist": 3.0, "irradiance": 0.25,
             "size": 1.0, "color": (1.0, 0.9, 0.8)},
        ],
    },
    "PHOTO": {
        "label": "As Photographed",
        "description": "The light the fit found in the photo (an environment from its 27 SH coefficients), "
                       "to compare the head with the photo",
        "world": (0.0, 0.0, 0.0), "world_strength": 1.0, "environment": "photo",
        "lights": [],
    },
    "NEUTRAL": {
        "label": "Neutral White World",
        "description": "Uniform white light from every direction, no lights (to judge the texture)",
        "world": (1.0, 1.0, 1.0), "world_strength": 1.0,
        "lights": [],
    },
}

PRESET_ITEMS = [(k, v["label"], v["description"]) for k, v in PRESETS.items()]


def head_bounds(objects=None, scene=None) -> tuple[Vector, float]:
    """Centre and size (largest dimension, m) of the world-space bounding box of `objects`
    (default: Likeness heads in the scene, else all meshes; else the origin and 0.3 m)."""
    scene = scene or bpy.context.scene
    if not objects:
        objects = find_heads(scene) or [o for o in scene.objects if o.type == "MESH"]
    pts = [o.matrix_world @ Vector(c) for o in objects for c in o.bound_box]
    if not pts:
        return Vector((0.0, 0.0, 0.0)), 0.3
    lo = Vector((min(p.x for p in pts), min(p.y for p in pts), min(p.z for p in pts)))
    hi = Vector((max(p.x for p in pts), max(p.y for p in pts), max(p.z for p in pts)))
    size = max(hi - lo)
    return (lo + hi) / 2, (size if size > 1e-6 else 0.3)


def _direction(az_deg: float, el_deg: float) -> Vector:
    az, el = math.radians(az_deg), math.radians(el_deg)
    return Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)))


def _lights_collection(scene) -> bpy.types.Collection:
    for c in scene.collection.children_recursive:
        if c.get(PROP_PRESET + "_collection"):
            return c
    coll = bpy.data.collections.new(LIGHTS_COLLECTION)
    coll[PROP_PRESET + "_collection"] = True
    scene.collection.children.link(coll)
    return coll


def preset_lights(scene=None) -> list:
    scene = scene or bpy.context.scene
    return [o for o in scene.objects if o.get(PROP_PRESET)]


def current_preset(scene=None) -> str:
    scene = scene or bpy.context.scene
    w = scene.world
    if w is not None and w.get(PROP_PRESET):
        return str(w[PROP_PRESET])
    lights = preset_lights(scene)
    return str(lights[0][PROP_PRESET]) if lights else ""


def _remove_preset_lights(scene) -> None:
    for o in preset_lights(scene):
        data = o.data
        bpy.data.objects.remove(o, do_unlink=True)
        if data is not None and data.users == 0:
            bpy.data.lights.remove(data)
    for c in list(scene.collection.children_recursive):
        if c.get(PROP_PRESET + "_collection") and not c.all_objects:
            bpy.data.collections.remove(c)


ENVIRONMENT_WIDTH = 128  # px of the "As Photographed" equirectangular image (the light is band-limited)


def photo_lighting_head(objects=None, scene=None):
    """The head whose photo lighting "As Photographed" uses: the first given (or in the scene) that has it."""
    scene = scene or bpy.context.scene
    for o in list(objects or []) + find_heads(scene):
        if PROP_LIGHTING in o and PROP_POSE in o:
            return o
    return None


def _photo_environment(head) -> bpy.types.Image:
    sh = np.asarray(head[PROP_LIGHTING], np.float64).reshape(9, 3)
    pose = np.asarray(head[PROP_POSE], np.float64).reshape(3, 3)
    rot = np.array(head.matrix_world.to_3x3().normalized(), np.float64)
    env = sh_lighting.environment_image(sh, pose, rot, ENVIRONMENT_WIDTH)
    h, w = env.shape[:2]
    img = bpy.data.images.new(f"Likeness photo light {head.name}", w, h, alpha=False, float_buffer=True)
    rgba = np.concatenate([env, np.ones((h, w, 1), np.float32)], axis=2)[::-1]  # Blender's rows go up
    img.pixels.foreach_set(np.ascontiguousarray(rgba).ravel())  # a float image holds scene-linear radiance
    img.pack()
    img[PROP_PRESET] = "PHOTO"
    return img


def _make_world(preset_id: str, spec: dict, head=None) -> bpy.types.World:
    world = bpy.data.worlds.new(f"Likeness {spec['label']}")
    world[PROP_PRESET] = preset_id
    if world.node_tree is None:
        world.use_nodes = True
    bg = next((n for n in world.node_tree.nodes if n.type == "BACKGROUND"), None)
    if bg is None:
        bg = world.node_tree.nodes.new("ShaderNodeBackground")
        out = next(n for n in world.node_tree.nodes if n.type == "OUTPUT_WORLD")
        world.node_tree.links.new(bg.outputs[0], out.inputs["Surface"])
    bg.inputs["Color"].default_value = (*spec["world"], 1.0)
    bg.inputs["Strength"].default_value = spec["world_strength"]
    world.color = spec["world"]
    if spec.get("environment") == "photo":
        env = world.node_tree.nodes.new("ShaderNodeTexEnvironment")
        env.image = _photo_environment(head)
        env.interpolation = "Linear"
        world.node_tree.links.new(env.outputs["Color"], bg.inputs["Color"])
        world.color = tuple(float(x) for x in np.asarray(env.image.pixels[:]).reshape(-1, 4)[:, :3].mean(0))
    return world


def apply_preset(preset_id: str, scene=None, objects=None) -> list:
    """Replace the previous preset's lights (only those) and world; returns the new light objects."""
    scene = scene or bpy.context.scene
    spec = PRESETS[preset_id]
    head = None
    if spec.get("environment") == "photo":
        head = photo_lighting_head(objects, scene)
        if head is None:
            raise ValueError("no head with a fitted photo lighting here (bundles made before schema 2 "
                             "or without a photometric fit have none)")
    centre, size = head_bounds(objects, scene)
    _remove_preset_lights(scene)

    old = scene.world
    if old is None or not old.get(PROP_PRESET):
        # Remember the user's world (an ID property keeps it alive) to restore it later.
        if old is not None:
            scene[PROP_PREV_WORLD] = old
        elif PROP_PREV_WORLD in scene:
            del scene[PROP_PREV_WORLD]
    world = _make_world(preset_id, spec, head)
    scene.world = world
    if old is not None and old.get(PROP_PRESET) and old.users == 0:
        _remove_world(old)

    coll = _lights_collection(scene)
    made = []
    for ls in spec["lights"]:
        d = ls["dist"] * size
        direction = _direction(ls["az"], ls["el"])
        light = bpy.data.lights.new(f"Likeness {ls['name']}", ls["type"])
        light.color = ls["color"]
        if ls["type"] == "SUN":
            light.energy = ls["irradiance"]
            light.angle = math.radians(ls.get("angle_deg", 1.0))
        elif ls["type"] == "AREA":
            light.shape = "DISK"
            light.size = ls.get("size", 1.0) * size
            light.energy = ls["irradiance"] * math.pi * d * d
        else:  # POINT / SPOT: radiant intensity P / (4 pi)
            light.energy = ls["irradiance"] * 4.0 * math.pi * d * d
            light.shadow_soft_size = 0.1 * size
            if ls["type"] == "SPOT":
                light.spot_size = math.radians(ls.get("spot_deg", 45))
                light.spot_blend = 0.5
        obj = bpy.data.objects.new(f"Likeness {ls['name']}", light)
        obj.location = centre + direction * d
        # Lights shine down their local -Z: aim at the head's centre.
        obj.rotation_euler = (-direction).to_track_quat("-Z", "Y").to_euler()
        obj[PROP_PRESET] = preset_id
        coll.objects.link(obj)
        made.append(obj)
    return made


def _remove_world(world) -> None:
    """A preset world and the environment image it made."""
    images = [n.image for n in world.node_tree.nodes if n.type == "TEX_ENVIRONMENT" and n.image is not None
              and n.image.get(PROP_PRESET)] if world.node_tree else []
    bpy.data.worlds.remove(world)
    for img in images:
        if img.users == 0:
            bpy.data.images.remove(img)


def clear_preset(scene=None) -> None:
    """Remove the preset lights and give the scene its previous world back."""
    scene = scene or bpy.context.scene
    _remove_preset_lights(scene)
    w = scene.world
    if w is not None and w.get(PROP_PRESET):
        prev = scene.get(PROP_PREV_WORLD)
        scene.world = prev if isinstance(prev, bpy.types.World) else None
        if w.users == 0:
            _remove_world(w)
    if PROP_PREV_WORLD in scene:
        del scene[PROP_PREV_WORLD]


class LIKENESS_OT_relight(bpy.types.Operator):
    """Light the head with a preset (replaces the previous preset's lights only)"""
    bl_idname = "likeness.relight"
    bl_label = "Relight Head"
    bl_options = {"REGISTER", "UNDO"}

    preset: bpy.props.EnumProperty(name="Preset", items=PRESET_ITEMS, default="STUDIO")

    @classmethod
    def description(cls, context, props):
        return PRESETS[props.preset]["description"] if props else cls.__doc__

    def execute(self, context):
        heads = [o for o in context.selected_objects if o.get("likeness_head")] or None
        try:
            lights = apply_preset(self.preset, context.scene, heads)
        except ValueError as ex:
            self.report({"ERROR"}, str(ex))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{PRESETS[self.preset]['label']}: {len(lights)} lights")
        return {"FINISHED"}


class LIKENESS_OT_clear_lighting(bpy.types.Operator):
    """Remove the preset lights and restore the scene's previous world"""
    bl_idname = "likeness.clear_lighting"
    bl_label = "Remove Lighting"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        clear_preset(context.scene)
        return {"FINISHED"}


classes = (LIKENESS_OT_relight, LIKENESS_OT_clear_lighting)

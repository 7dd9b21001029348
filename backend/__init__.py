"""Likeness backend: one photo -> fitted ICT-FaceKit head + UV textures, as a result bundle.

Runs in its own Python (with torch); Blender's Python never imports this package.
Stages: imageio -> landmarks -> facemodel/fitting -> texture -> bundle (see pipeline.py).
"""

__version__ = "0.1.0"

"""Likeness backend: one photo -> fitted ICT-FaceKit head + UV textures, as a result bundle.

Runs in its own Python (with torch); Blender's Python never imports this package.
Stages: imageio -> landmarks -> facemodel/fitting -> texture -> bundle (see pipeline.py).
"""

__version__ = "0.1.0"

from .allocator import limit_malloc_arenas

# Every backend process (worker, CLI, bench runner, tests) runs threads: bound the allocator's arenas before
# any is made, so that memory freed in one request serves the next (backend/allocator.py).
limit_malloc_arenas()

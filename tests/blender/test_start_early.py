"""Choosing a photo starts the backend worker early (generate.start_early), and Generate then uses that
worker instead of starting its own: Python, torch and the models load while the user is still clicking."""
from __future__ import annotations

import time

import bpy

from .conftest import drive


def _wait_ready(client, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while client.ready is None and time.monotonic() - t0 < timeout:
        time.sleep(0.02)
    assert client.ready is not None, client.stderr_tail()


def test_a_worker_started_early_serves_the_next_generation(empty_scene, settings, fake_worker, photos):
    from likeness.operators import generate
    fake_worker("error")   # ready at once; answers a request with NO_FACE and stays alive
    early = generate.start_early(bpy.context)
    assert early is not None and early.alive()
    _wait_ready(early)
    assert generate.start_early(bpy.context) is early          # choosing another photo: the same worker
    assert bpy.ops.likeness.generate(photo=str(photos[0]), run_mode="ASYNC") == {"FINISHED"}
    g = generate.active()
    assert g.job.client is early
    assert g.job.state == "running"                             # the request went out at once
    assert generate.start_early(bpy.context) is None            # a generation runs: nothing is started
    drive(generate, timeout=30)
    assert g.error_code == "NO_FACE" and early.alive()
    assert generate.get_worker(settings) is early               # and it serves the one after


def test_start_early_off_or_without_a_backend_starts_nothing(empty_scene, settings, fake_worker, tmp_path):
    from likeness.operators import generate
    fake_worker("error")
    settings.start_early = False
    assert generate.start_early(bpy.context) is None and not generate._workers
    settings.start_early = True
    settings.backend_python = str(tmp_path / "nope" / "python")
    assert generate.start_early(bpy.context) is None and not generate._workers   # never raises


def test_choosing_a_photo_in_background_mode_starts_no_process(empty_scene, settings, fake_worker, photos):
    """Batch runs (blender -b) generate blocking: a photo set by a script must not leave a worker behind."""
    from likeness.operators import generate
    fake_worker("error")
    assert bpy.app.background
    empty_scene.likeness.photo_path = str(photos[0])
    assert not generate._workers


def test_a_worker_for_new_settings_stops_the_old_one(empty_scene, settings, fake_worker):
    """Changing the backend settings (here the worker's arguments) starts a new worker and stops the old:
    an idle worker of settings no longer used would keep its 1.6 GB until Blender quits."""
    from likeness.operators import generate
    fake_worker("error")
    first = generate.get_worker(settings)
    _wait_ready(first)
    fake_worker("garbage")
    second = generate.get_worker(settings)
    assert second is not first and second.alive()
    assert not first.alive() and list(generate._workers.values()) == [second]

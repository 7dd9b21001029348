"""Protocol failure modes the real worker does not produce on purpose (garbage, crash, hang,
ignored cancel, death before ready), against a tiny fake worker. The real backend is exercised in
test_end_to_end.py."""
from __future__ import annotations

import sys
import time

import bpy
import pytest

from .conftest import FAKE_WORKER, drive, snapshot


def _client(mode):
    from likeness.operators.worker_client import WorkerClient
    c = WorkerClient(sys.executable, str(FAKE_WORKER.parent), [str(FAKE_WORKER), mode])
    c.start()
    return c


def _job(client, tmp_path, **kw):
    from likeness.operators.worker_client import ReconstructJob
    return ReconstructJob(client, str(tmp_path / "photo.jpg"), str(tmp_path / "bundle"), {}, **kw)


def _run(job, limit=30.0):
    t0 = time.monotonic()
    while not job.finished:
        job.poll()
        assert time.monotonic() - t0 < limit, f"job still {job.state} after {limit} s"
        time.sleep(0.02)
    return job


@pytest.mark.parametrize("mode,code", [("garbage", "WORKER_PROTOCOL"), ("die", "WORKER_DIED"),
                                       ("die_at_start", "WORKER_DIED"), ("old_protocol", "WORKER_INCOMPATIBLE")])
def test_job_reports_and_cleans_up(likeness, tmp_path, mode, code):
    client = _client(mode)
    job = _run(_job(client, tmp_path, timeout_s=30))
    assert job.state == "failed"
    assert job.error_code == code
    assert not client.alive(), "the broken worker must be stopped"
    assert not client.usable()
    if mode == "garbage":
        assert "Downloading model weights" in job.error_message
    if mode == "die":
        assert "139" in job.error_message and "Segmentation fault" in job.error_message
    if mode == "die_at_start":
        assert "cannot load the face model" in job.error_message
    if mode == "old_protocol":  # refused at the handshake: no request was sent
        assert not job._sent and "protocol 1" in job.error_message


def test_job_hang_times_out(likeness, tmp_path):
    client = _client("hang")
    t0 = time.monotonic()
    job = _run(_job(client, tmp_path, timeout_s=1.5))
    assert job.error_code == "WORKER_TIMEOUT"
    assert 1.4 < time.monotonic() - t0 < 10
    assert not client.alive()


def test_job_cancel_ignored_is_forced(likeness, tmp_path):
    client = _client("ignore_cancel")
    job = _job(client, tmp_path, timeout_s=60, cancel_grace_s=1.0)
    t0 = time.monotonic()
    while job.stage != "detect":
        job.poll()
        assert time.monotonic() - t0 < 20
        time.sleep(0.02)
    job.cancel()
    _run(job)
    assert job.state == "cancelled" and job.error_code == "CANCELLED"
    assert not client.alive()


def test_job_error_event_keeps_worker(likeness, tmp_path):
    client = _client("error")
    try:
        job = _run(_job(client, tmp_path, timeout_s=30))
        assert (job.state, job.error_code) == ("failed", "NO_FACE")
        assert client.usable(), "an ordinary error must not kill the worker"
    finally:
        client.shutdown()
    assert not client.alive()


def test_missing_backend_python(likeness, tmp_path):
    from likeness.operators.worker_client import WorkerClient, WorkerError
    with pytest.raises(WorkerError) as ei:
        WorkerClient(str(tmp_path / "nope" / "python"), str(tmp_path)).start()
    assert ei.value.code == "BACKEND_NOT_FOUND"


@pytest.mark.parametrize("mode,code", [("garbage", "WORKER_PROTOCOL"), ("die", "WORKER_DIED")])
def test_operator_async_failure_leaves_scene_unchanged(empty_scene, settings, fake_worker, tmp_path,
                                                       photos, mode, code):
    from likeness.operators import generate
    fake_worker(mode)
    bpy.ops.mesh.primitive_cube_add()
    before = snapshot()
    assert bpy.ops.likeness.generate(photo=str(photos[0]), run_mode="ASYNC") == {"FINISHED"}
    assert generate.is_running()
    drive(generate, timeout=30)
    g = generate.active()
    assert g.state == "FAILED" and g.error_code == code
    js = bpy.context.window_manager.likeness_job
    assert (js.state, js.error_code) == ("FAILED", code)
    assert snapshot() == before
    # the broken worker is stopped; the next generation starts a fresh one instead of reusing it
    assert not g.job.client.alive() and not g.job.client.usable()
    fresh = generate.get_worker(settings)
    assert fresh is not g.job.client and fresh.alive()


def test_operator_blocking_hang_reports_code(empty_scene, settings, fake_worker, photos):
    fake_worker("hang")
    settings.timeout_s = 1.5
    before = snapshot()
    with pytest.raises(RuntimeError, match="WORKER_TIMEOUT"):
        bpy.ops.likeness.generate(photo=str(photos[0]), run_mode="BLOCKING")
    assert snapshot() == before


def test_operator_missing_photo(empty_scene, settings):
    before = snapshot()
    bpy.context.scene.likeness.photo_path = ""
    with pytest.raises(RuntimeError, match="PHOTO_INVALID"):
        bpy.ops.likeness.generate(run_mode="BLOCKING")
    with pytest.raises(RuntimeError, match="FILE_NOT_FOUND"):
        bpy.ops.likeness.generate(photo="/nonexistent/face.jpg", run_mode="BLOCKING")
    assert snapshot() == before

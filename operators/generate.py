"""The "Generate Face from Photo" operator and the generation that runs behind it.

Flow: the operator starts (or reuses) the backend worker and sends one `reconstruct` request.
A reader thread (worker_client) queues the worker's events; `tick()` — registered with
`bpy.app.timers`, so it runs on Blender's main thread — drains them, updates the status shown in
the panel and, on `result`, imports the bundle. The UI never waits on the worker. In background
mode (`bpy.app.background`) the operator runs the same `tick()` in a blocking loop instead.

In the UI the operator is modal: it owns the undo step (the head, its collection and the preset
lights disappear with one Ctrl+Z), handles Esc as Cancel and reports the outcome in the status bar
and the Info log.
"""

from __future__ import annotations

import atexit
import os
import secrets
import time
import traceback
from pathlib import Path

import bpy

from . import common, importer, relight
from .worker_client import ReconstructJob, WorkerClient, WorkerError

TICK_INTERVAL = 0.05  # s: the timer runs 20 times a second while a generation runs

# Labels of the client's own steps; the backend's stages come with their words in each progress event
# (the worker announces its stage list in `ready`).
CLIENT_STEPS = {"start": "Starting the backend", "import": "Importing into Blender", "cancel": "Cancelling"}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".jp2")

_workers: dict[tuple, WorkerClient] = {}
_active: "Generation | None" = None


# ------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------

def worker_args() -> list[str]:
    """Arguments after the interpreter (a hook for tests of protocol failure modes)."""
    return ["-m", "backend", "worker"]


def get_worker(s: common.Settings) -> WorkerClient:
    """A running worker for these settings: reused when alive, else started. Only one worker lives at a
    time: each holds torch and the face models (about 1.6 GB), so the worker of earlier settings (another
    backend Python, device or environment) is stopped when a new one starts. Callers run only while no
    generation does (start, start_early), so a stopped worker is idle: nothing is lost."""
    client = WorkerClient(s.backend_python, s.backend_cwd, worker_args(), env=s.worker_env())
    old = _workers.get(client.key)
    if old is not None and old.usable():
        return old
    if old is not None:
        old.kill()              # broken or dead: never reused, even when the new one fails to start
    client.start()
    for stale in _workers.values():
        stale.kill()
    _workers.clear()
    _workers[client.key] = client
    return client


def start_early(context) -> WorkerClient | None:
    """Start the worker for the current settings before Generate is pressed (a photo was just chosen), so
    that its start-up (Python, torch, the face models, the UV layouts: 5-10 s on a 2-core CPU) overlaps
    the user's next clicks; the generation then reuses it. Never raises: a worker that cannot start says
    why when Generate is pressed. None when it was not started (off in the preferences, a generation
    running, no backend)."""
    if is_running():
        return None
    try:
        s = common.settings(context)
        if not s.start_early:
            return None
        return get_worker(s)
    except (WorkerError, OSError):
        return None


def shutdown_workers() -> None:
    for c in list(_workers.values()):
        c.shutdown(timeout=3.0)
    _workers.clear()


atexit.register(shutdown_workers)


# ------------------------------------------------------------------------------------------
# the photo
# ------------------------------------------------------------------------------------------

def _safe_stem(name: str) -> str:
    stem = Path(name).stem or "face"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60] or "face"


def resolve_photo(context, override: str = "", results_dir: str = "") -> tuple[str, str]:
    """(absolute photo path, name stem) from the operator override or the scene settings."""
    if override:
        p = bpy.path.abspath(override)
        return os.path.abspath(p), _safe_stem(p)
    st = context.scene.likeness
    if st.photo_source == "FILE":
        if not st.photo_path:
            raise WorkerError("PHOTO_INVALID", "choose a photo first")
        p = os.path.abspath(bpy.path.abspath(st.photo_path))
        return p, _safe_stem(p)
    img = st.photo_image
    if img is None:
        raise WorkerError("PHOTO_INVALID", "choose an image first")
    stem = _safe_stem(img.name)
    if img.packed_file is not None:
        ext = Path(img.filepath).suffix.lower() if img.filepath else ""
        if ext not in IMAGE_EXTENSIONS:
            ext = "." + (img.file_format or "png").lower().replace("jpeg", "jpg")
        out = Path(results_dir or common.default_results_dir()) / "_photos" / f"{stem}-{secrets.token_hex(3)}{ext}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(img.packed_file.data)
        return str(out), stem
    if img.source == "FILE" and img.filepath:
        p = os.path.abspath(bpy.path.abspath(img.filepath, library=img.library))
        if os.path.isfile(p) and not img.is_dirty:
            return p, stem
    # Generated, rendered or edited in Blender: save a copy as PNG for the backend.
    if not img.has_data and img.size[0] == 0:
        raise WorkerError("PHOTO_INVALID", f"image {img.name!r} has no pixels")
    out = Path(results_dir or common.default_results_dir()) / "_photos" / f"{stem}-{secrets.token_hex(3)}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        img.save(filepath=str(out), save_copy=True)
    except (RuntimeError, TypeError):
        img.save_render(str(out))
    return str(out), stem


# ------------------------------------------------------------------------------------------
# one generation
# ------------------------------------------------------------------------------------------

class Generation:
    def __init__(self, job: ReconstructJob, scene_name: str, stem: str, photo: str,
                 shape_keys: bool, pack_images: bool, preset: str):
        self.job = job
        self.scene_name = scene_name
        self.stem = stem
        self.photo = photo
        self.shape_keys = shape_keys
        self.pack_images = pack_images
        self.preset = preset
        self.photo_camera = True
        self.state = "RUNNING"          # RUNNING, CANCELLING, DONE, FAILED, CANCELLED
        self.error_code = ""
        self.error_message = ""
        self.object_name = ""
        self.import_s = -1.0
        self.t0 = time.perf_counter()
        self.total_s = -1.0
        self.modal = False              # a modal operator reports the outcome
        self.reported = False
        self.timer_registered = False
        self.preview_path = ""          # the latest backend preview, written for the panel
        self.preview_serial = 0
        # for the benchmark: when each tick ran and how long it took
        self.tick_starts: list[float] = []
        self.tick_durations: list[float] = []

    @property
    def finished(self) -> bool:
        return self.state in ("DONE", "FAILED", "CANCELLED")

    def fail(self, code: str, message: str) -> None:
        self.state, self.error_code, self.error_message = "FAILED", code, message
        self.total_s = time.perf_counter() - self.t0

    def summary(self) -> str:
        if self.state == "DONE":
            ev = self.job.result or {}
            lm = (ev.get("metrics") or {}).get("landmark_error_px")
            s = f"Likeness: {self.object_name} generated in {self.total_s:.1f} s"
            return s + (f", landmark error {lm:.2f} px" if isinstance(lm, (int, float)) else "")
        if self.state == "CANCELLED":
            return "Likeness: generation cancelled"
        return f"Likeness: {self.error_code}: {self.error_message}"

    def scene(self):
        return bpy.data.scenes.get(self.scene_name) or bpy.context.scene

    def import_result(self) -> None:
        """On the main thread: import the bundle, apply the preset, select the head."""
        bundle = (self.job.result or {}).get("bundle") or self.job.out
        scene = self.scene()
        t = time.perf_counter()
        obj = importer.import_bundle(bundle, name=self.stem, scene=scene,
                                     shape_keys=self.shape_keys, pack_images=self.pack_images,
                                     photo_camera_for=self.photo if self.photo_camera else None,
                                     make_scene_camera=scene.camera is None)
        self.import_s = time.perf_counter() - t
        self.object_name = obj.name
        if self.preset and self.preset != "NONE":
            try:
                relight.apply_preset(self.preset, scene, [obj])
            except Exception as ex:  # lighting is a nicety: keep the head, say what happened
                print(f"Likeness: preset {self.preset} failed: {ex}")
        vl = bpy.context.view_layer if bpy.context.scene == scene else scene.view_layers[0]
        try:
            for o in vl.objects:
                if o.select_get(view_layer=vl):
                    o.select_set(False, view_layer=vl)
            obj.select_set(True, view_layer=vl)
            vl.objects.active = obj
        except RuntimeError:
            pass
        self.state = "DONE"
        self.total_s = time.perf_counter() - self.t0


def active() -> "Generation | None":
    return _active


def is_running() -> bool:
    return _active is not None and not _active.finished


def start(context, photo: str = "", *, shape_keys: bool | None = None,
          pack_images: bool | None = None, preset: str | None = None) -> Generation:
    """Start a generation (non-blocking). Raises WorkerError when it cannot start."""
    global _active
    if is_running():
        raise WorkerError("BUSY", "a generation is already running (cancel it first)")
    s = common.settings(context)
    photo_path, stem = resolve_photo(context, photo, s.results_dir)
    if not os.path.isfile(photo_path):
        raise WorkerError("FILE_NOT_FOUND", f"photo not found: {photo_path}")
    st = context.scene.likeness
    out = Path(s.results_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    client = get_worker(s)
    try:
        job = ReconstructJob(client, photo_path, str(out), s.request_options(), timeout_s=s.timeout_s)
    except WorkerError:
        client.kill()
        raise
    g = Generation(job, context.scene.name, stem, photo_path,
                   st.shape_keys if shape_keys is None else shape_keys,
                   st.pack_images if pack_images is None else pack_images,
                   st.preset if preset is None else preset)
    _active = g
    _update_status(g)
    return g


def cancel_active() -> bool:
    g = _active
    if g is None or g.finished:
        return False
    g.job.cancel()
    if g.state == "RUNNING":
        g.state = "CANCELLING"
    tick()  # finishes at once when nothing was sent yet
    return True


def tick() -> float | None:
    """Advance the active generation; the `bpy.app.timers` function (main thread only)."""
    g = _active
    if g is None:
        return None
    if g.finished:
        g.timer_registered = False
        return None
    t_start = time.perf_counter()
    changed = False
    try:
        changed = g.job.poll()
        ready = g.job.client.ready
        if changed and ready and not getattr(g, "sizes_seen", False):
            g.sizes_seen = True
            common.remember_texture_sizes((ready.get("capabilities") or {}).get("texture_sizes"))
        if g.job.state == "done" and g.state == "CANCELLING":
            # The result won the race against the cancel: honour the cancel, import nothing.
            g.state, g.error_code, g.error_message = "CANCELLED", "CANCELLED", "cancelled"
            g.total_s = time.perf_counter() - g.t0
        elif g.job.state == "done" and g.state == "RUNNING":
            _update_status(g, stage="import")
            try:
                g.import_result()
                if not g.modal and not bpy.app.background:
                    # no modal operator owns an undo step here (async mode): make one
                    try:
                        bpy.ops.ed.undo_push(message="Generate Face from Photo")
                    except RuntimeError:
                        pass
            except WorkerError as ex:
                g.fail(ex.code, ex.message)
            changed = True
        elif g.job.state == "failed":
            g.fail(g.job.error_code, g.job.error_message)
        elif g.job.state == "cancelled":
            g.state = "CANCELLED"
            g.error_code, g.error_message = g.job.error_code, g.job.error_message
            g.total_s = time.perf_counter() - g.t0
    except Exception as ex:  # never let a bug leave a timer running forever
        traceback.print_exc()
        g.job.client.kill()
        g.fail("INTERNAL", f"{type(ex).__name__}: {ex}")
    if changed or g.finished:
        _update_status(g)
        common.tag_redraw_all()
    g.tick_starts.append(t_start)
    g.tick_durations.append(time.perf_counter() - t_start)
    if g.finished:
        _announce(g)
        g.timer_registered = False
        return None
    return TICK_INTERVAL


def _announce(g: Generation) -> None:
    if g.reported:
        return
    msg = g.summary()
    print(msg)
    if g.modal:
        return  # the modal operator reports it (status bar + Info log)
    g.reported = True
    if not bpy.app.background and g.state == "FAILED":
        try:
            bpy.ops.likeness.report("EXEC_DEFAULT", level="ERROR", message=msg)
        except (RuntimeError, AttributeError):
            pass


def _update_status(g: Generation, stage: str | None = None) -> None:
    wm = bpy.context.window_manager
    if wm is None or not hasattr(wm, "likeness_job"):
        return
    js = wm.likeness_job
    js.state = g.state
    js.stage = stage or g.job.stage
    js.fraction = g.job.shown_fraction
    if js.stage in CLIENT_STEPS:
        js.message = CLIENT_STEPS[js.stage]
    else:
        js.message = (g.job.message or js.stage).capitalize()
    _store_preview(g)
    js.photo = g.photo
    js.error_code, js.error_message = g.error_code, g.error_message
    if g.state == "DONE":
        ev = g.job.result or {}
        m = ev.get("metrics") or {}
        js.object_name = g.object_name
        js.bundle = str(ev.get("bundle") or "")
        js.landmark_error_px = float(m.get("landmark_error_px", -1.0))
        js.landmark_error_iod = float(m.get("landmark_error_iod", -1.0))
        js.backend_s = float((ev.get("timings_s") or {}).get("total", -1.0))
        js.import_s = g.import_s
        js.total_s = g.total_s
        js.warnings = "; ".join(str(w) for w in (ev.get("warnings") or []))
    elif g.state in ("FAILED", "CANCELLED"):
        js.object_name = ""


def _store_preview(g: Generation) -> None:
    """The backend's latest preview image (the fit drawn over the photo, later texture steps) as a PNG
    file the panel can show while the generation runs."""
    if g.job.preview is None or g.preview_serial == g.job.preview_serial:
        return
    folder = Path(common.settings().results_dir) / "_previews"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{g.job.id}-{g.job.preview_serial}.png"
        path.write_bytes(g.job.preview["png"])
    except OSError:
        return
    old, g.preview_path, g.preview_serial = g.preview_path, str(path), g.job.preview_serial
    if old and old != g.preview_path:
        try:
            os.remove(old)
        except OSError:
            pass


def register_timer(g: Generation) -> None:
    # persistent: keeps running across file loads, so a cancel caused by loading still finishes
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0, persistent=True)
    g.timer_registered = True


def run_blocking(g: Generation) -> Generation:
    while True:
        nxt = tick()
        if nxt is None:
            return g
        time.sleep(nxt)


# ------------------------------------------------------------------------------------------
# operators
# ------------------------------------------------------------------------------------------

class LIKENESS_OT_generate(bpy.types.Operator):
    """Reconstruct a textured 3D head from the chosen photo (runs in the background)"""
    bl_idname = "likeness.generate"
    bl_label = "Generate Face from Photo"
    bl_options = {"REGISTER", "UNDO"}

    photo: bpy.props.StringProperty(
        name="Photo", subtype="FILE_PATH", options={"SKIP_SAVE"},
        description="Photo to use instead of the one chosen in the panel")
    run_mode: bpy.props.EnumProperty(
        name="Run Mode", options={"SKIP_SAVE", "HIDDEN"}, default="AUTO",
        items=[("AUTO", "Auto", "Modal in the UI, blocking in background mode"),
               ("BLOCKING", "Blocking", "Wait for the result"),
               ("ASYNC", "Async", "Return at once; bpy.app.timers finishes the job")])

    _timer = None

    @classmethod
    def poll(cls, context):
        return not is_running()

    def _start(self, context) -> Generation | None:
        try:
            return start(context, self.photo)
        except WorkerError as ex:
            _set_error_status(ex.code, ex.message)
            self.report({"ERROR"}, f"Likeness: {ex.code}: {ex.message}")
            return None

    def invoke(self, context, event):
        if bpy.app.background or self.run_mode != "AUTO" or context.window is None:
            return self.execute(context)
        g = self._start(context)
        if g is None:
            return {"CANCELLED"}
        g.modal = True
        register_timer(g)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        g = _active
        if g is None:
            return self._end(context, {"CANCELLED"})
        if event.type == "ESC" and event.value == "PRESS" and not g.finished:
            cancel_active()
            return {"RUNNING_MODAL"}
        if not g.finished and not bpy.app.timers.is_registered(tick):
            register_timer(g)  # e.g. timers were cleared by loading a file
        if g.finished:
            return self._end(context, self._outcome(g))
        return {"PASS_THROUGH"}

    def _end(self, context, result):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        common.tag_redraw_all()
        return result

    def _outcome(self, g: Generation):
        g.reported = True
        if g.state == "DONE":
            self.report({"INFO"}, g.summary())
            return {"FINISHED"}
        if g.state == "CANCELLED":
            self.report({"WARNING"}, g.summary())
        else:
            self.report({"ERROR"}, g.summary())
        return {"CANCELLED"}

    def execute(self, context):
        mode = self.run_mode
        if mode == "AUTO":
            mode = "BLOCKING" if bpy.app.background else "ASYNC"
        g = self._start(context)
        if g is None:
            return {"CANCELLED"}
        if mode == "ASYNC":
            register_timer(g)
            return {"FINISHED"}
        run_blocking(g)
        return self._outcome(g)


def _set_error_status(code: str, message: str) -> None:
    wm = bpy.context.window_manager
    if wm is not None and hasattr(wm, "likeness_job"):
        js = wm.likeness_job
        js.state, js.error_code, js.error_message = "FAILED", code, message
        js.fraction, js.stage, js.message = 0.0, "", ""


class LIKENESS_OT_cancel(bpy.types.Operator):
    """Cancel the running generation (nothing is imported)"""
    bl_idname = "likeness.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return is_running()

    def execute(self, context):
        cancel_active()
        return {"FINISHED"}


class LIKENESS_OT_choose_photo(bpy.types.Operator):
    """Choose a photo of a face"""
    bl_idname = "likeness.choose_photo"
    bl_label = "Choose Photo"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")
    filter_glob: bpy.props.StringProperty(
        default="*.jpg;*.jpeg;*.png;*.bmp;*.tif;*.tiff;*.webp", options={"HIDDEN"})
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        st = context.scene.likeness
        st.photo_path = self.filepath
        st.photo_source = "FILE"
        return {"FINISHED"}


class LIKENESS_OT_report(bpy.types.Operator):
    """Put a message into the status bar and the Info log"""
    bl_idname = "likeness.report"
    bl_label = "Likeness Report"
    bl_options = {"INTERNAL"}

    level: bpy.props.EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")])
    message: bpy.props.StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


classes = (LIKENESS_OT_generate, LIKENESS_OT_cancel, LIKENESS_OT_choose_photo, LIKENESS_OT_report)


@bpy.app.handlers.persistent
def _on_load_pre(*_args) -> None:
    """Opening another .blend cancels a running generation (its scene is going away)."""
    if is_running():
        cancel_active()


def register_runtime() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister_runtime() -> None:
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    global _active
    if _active is not None and not _active.finished:
        _active.job.cancel()
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    _active = None
    shutdown_workers()

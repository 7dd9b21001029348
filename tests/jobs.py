"""Helpers for tests that run real backend processes (CLI and worker) and look at what they leave."""
from __future__ import annotations

import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from tests.conftest import LONDON_NEUTRAL, REPO

PHOTO = LONDON_NEUTRAL / "001_03.jpg"
PHOTO_B = LONDON_NEUTRAL / "002_03.jpg"
TEMP_MARKER = ".likeness-temp.json"


def cli(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backend", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, **kw)


def _terminal_signals() -> None:
    """In the child before exec: SIGINT as a terminal delivers it. A suite started in the background by a
    non-interactive shell inherits SIGINT ignored, and the CLI rightly stays deaf to an ignored SIGINT
    (signals.install), which would fail the tests that press Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backend", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_terminal_signals, **kw)


def temp_folders(parent: Path) -> list[str]:
    """Temporary or set-aside folders of the staged write in `parent`."""
    return sorted(p.name for p in Path(parent).iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def half_written(parent: Path) -> list[str]:
    """Folders in `parent` that look like a bundle but are not a complete one (no result.json)."""
    from backend.bundle import MARKER_NAME
    out = []
    for p in Path(parent).iterdir():
        if p.is_dir() and not p.name.startswith(".") and ((p / MARKER_NAME).exists() or any(p.glob("*.png"))):
            if not (p / "result.json").is_file():
                out.append(p.name)
    return out


def temp_owner(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / TEMP_MARKER).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def wait_for_temp(parent: Path, pids, timeout: float = 300.0, procs=()) -> dict[int, Path]:
    """Poll (every 2 ms) until each pid in `pids` has a marked temporary folder in `parent` and stop that
    process (SIGSTOP) the moment it is seen: the write stage is then held at its start. Returns pid ->
    folder. Raises if a process ends first."""
    pids = set(pids)
    found: dict[int, Path] = {}
    deadline = time.monotonic() + timeout
    while pids - set(found):
        for p in procs:
            if p.poll() is not None and p.pid not in found:
                raise AssertionError(f"process {p.pid} ended (rc {p.returncode}) before its write stage: "
                                     f"{p.stderr.read()[-2000:] if p.stderr else ''}")
        for d in Path(parent).iterdir() if Path(parent).is_dir() else []:
            if ".tmp-" in d.name:
                pid = temp_owner(d)
                if pid in pids and pid not in found:
                    os.kill(pid, signal.SIGSTOP)
                    found[pid] = d
        if time.monotonic() > deadline:
            raise AssertionError(f"no write stage within {timeout} s")
        time.sleep(0.002)
    return found


def resume(*pids) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


class Worker:
    """A real `python -m backend worker`: raw stdout lines kept, each parsed (a line that is not a JSON
    object is recorded as a protocol violation, not raised in the reader thread)."""

    def __init__(self, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.events: queue.Queue = queue.Queue()
        self.bad_lines: list[bytes] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = None
            if not isinstance(ev, dict) or not isinstance(ev.get("event"), str):
                self.bad_lines.append(raw)
                continue
            self.events.put(ev)
        self.events.put({"event": "_eof"})

    def _read_err(self):
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace"))

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj) -> None:
        self.send_raw(((obj if isinstance(obj, str) else json.dumps(obj)) + "\n").encode("utf-8"))

    def next(self, timeout=120.0) -> dict:
        return self.events.get(timeout=timeout)

    def until(self, pred, timeout=300.0) -> tuple[dict, list[dict]]:
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next(max(0.05, deadline - time.monotonic()))
            seen.append(ev)
            if ev["event"] == "_eof" or pred(ev):
                return ev, seen

    def wait_ready(self, timeout=300.0) -> dict:
        ev, _ = self.until(lambda e: e["event"] == "ready", timeout)
        assert ev["event"] == "ready", "".join(self.stderr[-20:])
        return ev

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "shutdown"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Files


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def write_flat_png16_rgba(path: Path, width: int, height: int) -> int:
    """A real 16-bit RGBA PNG of width x height (flat colour, a third half-transparent): tiny on disk,
    width * height * 8 bytes decoded. Streamed row by row, so making it costs no memory. Returns bytes."""
    row = bytearray(b"\x00")  # filter type 0
    px_opaque = struct.pack(">HHHH", 20000, 30000, 40000, 65535)
    px_half = struct.pack(">HHHH", 20000, 30000, 40000, 30000)
    row += px_half * (width // 3) + px_opaque * (width - width // 3)
    row = bytes(row)
    comp = zlib.compressobj(9)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)))
        pending = []
        for _ in range(height):
            pending.append(comp.compress(row))
        pending.append(comp.flush())
        data = b"".join(pending)
        for i in range(0, len(data), 1 << 20):
            fh.write(png_chunk(b"IDAT", data[i:i + (1 << 20)]))
        fh.write(png_chunk(b"IEND", b""))
    return path.stat().st_size

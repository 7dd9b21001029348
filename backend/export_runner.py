"""`reconstruct --export FORMAT`: run the Blender side's exporter (operators/export.py) on a bundle.

The exporter is bpy code, so it runs in a child process: this Python when it has the bpy module, else a
Blender binary (`--blender`, $LIKENESS_BLENDER, or `blender` on the PATH) in background mode. Both run
commands/export_head.py, which imports the bundle into an empty scene and exports it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import LikenessError
from .paths import PROJECT_DIR

SCRIPT = PROJECT_DIR / "commands" / "export_head.py"


def exporter_command(blender: str | None = None) -> list[str]:
    if importlib.util.find_spec("bpy") is not None:
        return [sys.executable, str(SCRIPT)]
    binary = blender or os.environ.get("LIKENESS_BLENDER") or shutil.which("blender")
    if not binary:
        raise LikenessError("EXPORT_FAILED", "exporting needs Blender: pass --blender /path/to/blender, set "
                            "LIKENESS_BLENDER, or install the bpy module into this Python (pip install bpy)")
    return [binary, "-b", "--factory-startup", "--python", str(SCRIPT), "--"]


def export_bundle(bundle_dir: Path, fmt: str, out: Path | None = None, blender: str | None = None,
                  timeout_s: float = 600.0) -> Path:
    """Export the head of `bundle_dir` to `out` (default: beside the bundle, `<bundle name>.<fmt>`)."""
    bundle_dir = Path(bundle_dir).absolute()
    out = Path(out) if out else bundle_dir.parent / f"{bundle_dir.name}.{fmt.lower()}"
    cmd = exporter_command(blender) + [str(bundle_dir), str(out.absolute()), fmt.upper()]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LikenessError("EXPORT_FAILED", f"could not run the exporter ({cmd[0]}): {exc}") from exc
    if cp.returncode != 0 or not out.is_file():
        tail = "\n".join((cp.stdout + cp.stderr).strip().splitlines()[-8:])
        raise LikenessError("EXPORT_FAILED", f"the {fmt} export of {bundle_dir.name} failed:\n{tail}")
    return out

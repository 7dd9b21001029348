"""`python -m backend.doctor`: everything a generation needs, checked, as one JSON line on stdout.

Run by Blender's "Check Backend" in the backend's own Python. The assets: face_landmarker.task,
ICT-FaceKit, and the prepared hair and person segmentation models (reconstructions need them).
Imports only the standard library at the top, so it reports a Python without torch (or without
anything) instead of failing to start. Each problem names the button that fixes it ("fix": install |
install_folder | python), never make or a checkout.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

PACKAGES = ("torch", "numpy", "cv2", "mediapipe", "scipy", "PIL", "pywt", "flatbuffers")
INSTALL = "install"


def _nvidia_gpu() -> bool:
    import shutil
    import subprocess
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        cp = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cp.returncode == 0 and "GPU" in cp.stdout


def _partial_pack(ict: Path) -> bool:
    """A pack of upstream's sample only (tests): its manifest says so; FaceModel refuses it later."""
    try:
        return json.loads((ict / "manifest.json").read_text()).get("complete") is False
    except (OSError, ValueError):
        return False


def _check_segmentation(out: dict, problems: list) -> None:
    """The prepared hair and person segmentation models where the backend looks for them (the first
    copy with the sha256 that segmentation_models.py records is the one a reconstruction uses)."""
    try:
        from .segmentation_models import MODELS, prepared_candidates  # needs numpy: reported above without it
        from .setup_assets import sha256_of
    except ImportError:
        return
    for model in MODELS:
        candidates = prepared_candidates(model)
        present = [p for p in candidates if p.is_file()]
        good = next((p for p in present if sha256_of(p) == model.prepared_sha256), None)
        if good is not None:
            out.setdefault("segmentation", {})[model.key] = str(good)
        elif present:
            problems.append({"what": f"the MediaPipe {model.key} segmentation model {present[0]} is damaged or "
                                     f"another version (sha256 {sha256_of(present[0])[:12]}..., expected "
                                     f"{model.prepared_sha256[:12]}...)", "fix": INSTALL})
        else:
            problems.append({"what": f"the MediaPipe {model.key} segmentation model ({model.prepared_name}) is not "
                                     "prepared; looked in " + ", ".join(str(p.parent) for p in candidates),
                             "fix": INSTALL})


def check(ict_dir: str | None = None, landmarker: str | None = None, load_model: bool = True) -> dict:
    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "problems": [], "ok": False}
    problems = out["problems"]
    if sys.version_info[:2] != (3, 11):
        problems.append({"what": f"Python {out['python']}: the backend is built for Python 3.11", "fix": "python"})
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
            out.setdefault("packages", {})[name] = str(getattr(mod, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - any import failure is a missing package to the user
            problems.append({"what": f"package {name} is missing or broken ({type(exc).__name__}: {exc})"[:300],
                             "fix": INSTALL})
    if "torch" in out.get("packages", {}):
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = bool(torch.cuda.is_available())
        out["cuda_device"] = torch.cuda.get_device_name(0) if out["cuda"] else ""
        out["cuda_build"] = torch.version.cuda or ""
        if not out["cuda"] and _nvidia_gpu():
            out.setdefault("notes", []).append(
                "an NVIDIA GPU is present but this torch " + ("is a CPU build" if not out["cuda_build"] else
                                                              "cannot use it (driver?)")
                + ": generation runs on the CPU; Install Backend again to get the CUDA build")
    try:
        from . import __version__
        from .paths import ICT_PACK_SHA256, LANDMARKER_SHA256, SHIPPED_WEIGHTS, find_ict_dir, find_landmarker
        from .setup_assets import sha256_of
        out["backend"] = __version__
    except Exception as exc:  # noqa: BLE001
        problems.append({"what": f"the backend package does not import: {exc}", "fix": INSTALL})
        return out
    from .errors import LikenessError
    try:
        task = find_landmarker(landmarker)
        digest = sha256_of(task)
        out["landmarker"] = str(task)
        if digest != LANDMARKER_SHA256:
            problems.append({"what": f"{task} is damaged or another model (sha256 {digest[:12]}...)", "fix": INSTALL})
    except LikenessError:
        problems.append({"what": "MediaPipe face_landmarker.task is not installed", "fix": INSTALL})
    try:
        ict = find_ict_dir(ict_dir)
        out["ict_dir"] = str(ict)
        if (ict / "manifest.json").is_file():
            try:
                from .ict_pack import verify_pack  # needs numpy: skipped (and reported above) without it
                bad = verify_pack(ict)
            except ImportError:
                bad = []
            if bad:
                problems.append({"what": f"ICT-FaceKit at {ict}: " + "; ".join(bad[:3]), "fix": INSTALL})
        out["ict_sha256"] = sha256_of(ict / "shape_modes.npz")
        if out["ict_sha256"] != ICT_PACK_SHA256 and not _partial_pack(ict):
            problems.append({"what": f"ICT-FaceKit at {ict} is not the version the backend was tested with "
                                     f"(shape_modes.npz sha256 {out['ict_sha256'][:12]}...)", "fix": INSTALL})
    except LikenessError:
        problems.append({"what": "ICT-FaceKit is not installed", "fix": INSTALL})
    _check_segmentation(out, problems)
    for path in SHIPPED_WEIGHTS:
        if not path.is_file():
            problems.append({"what": f"{path} is missing: reinstall the extension", "fix": "reinstall"})
    if "torch" in out:
        try:
            from .pipeline import allowed_texture_sizes
            out["texture_sizes"] = allowed_texture_sizes()
        except Exception:  # noqa: BLE001 - reported by the model check below
            pass
    if load_model and "ict_dir" in out and "torch" in out:
        try:
            from .facemodel import load_face_model
            model = load_face_model(out["ict_dir"], "cpu")
            out["model"] = {"vertices": model.num_vertices, "expressions": len(model.expression_names)}
        except Exception as exc:  # noqa: BLE001 - incomplete pack, wrong version
            problems.append({"what": f"the face model does not load from {out['ict_dir']}: {exc}"[:300], "fix": INSTALL})
    out["ok"] = not problems
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m backend.doctor")
    ap.add_argument("--ict-dir")
    ap.add_argument("--landmarker")
    ap.add_argument("--no-model", action="store_true")
    a = ap.parse_args(argv)
    print(json.dumps(check(a.ict_dir, a.landmarker, not a.no_model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

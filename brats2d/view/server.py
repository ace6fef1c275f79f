"""`brats2d view`: a read-only local web server over predict's output; NiiVue draws the volumes in the browser.

Routes (GET unless said): / (the page), /static/<file>, /vendor/niivue.js, /api/cases, /api/jobs/<id>,
POST /api/upload (only with a run folder), /files/<root>/<path> (only inside the catalog's roots, see
files.resolve). The request path never reaches a shell, pickle or torch.load; uploads reach nibabel only
after the size, name and signature checks of upload.py. Not for clinical use.
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from .catalog import Catalog
from .files import Refused, resolve, split_request_path
from .upload import Jobs, UploadError, boundary_of, read_body, split_parts, stage_upload

STATIC = Path(__file__).resolve().parent / "static"
NIIVUE = Path(__file__).resolve().parent / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    # NiiVue compiles WebGL shaders, not JavaScript: no eval; everything comes from this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                               "worker-src 'self' blob:; connect-src 'self' data: blob:; frame-ancestors 'none'",
}
CONTENT_TYPES = {".gz": "application/gzip", ".nii": "application/octet-stream", ".js": "text/javascript",
                 ".csv": "text/csv; charset=utf-8", ".json": "application/json"}


class NiivueMissing(RuntimeError):
    """The browser-side renderer is not installed (make install runs npm ci)."""


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], catalog: Catalog, jobs: Jobs | None = None,
                 max_upload: int = 400 * 2**20, max_file: int = 128 * 2**20, niivue: Path | None = None,
                 quiet: bool = True) -> None:
        niivue = NIIVUE if niivue is None else niivue
        if not niivue.is_file():
            raise NiivueMissing(f"{niivue}: NiiVue is not installed; run `make install` (it runs npm ci in brats2d/view)")
        super().__init__(address, Handler)
        self.catalog, self.jobs, self.niivue, self.quiet = catalog, jobs, niivue, quiet
        self.max_upload, self.max_file = max_upload, max_file
        port = self.server_address[1]
        loopback = is_loopback(address[0])
        # Against DNS rebinding: on loopback, answer only requests addressed to a loopback name.
        self.hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} if loopback else None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    server_version = "brats2d-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write("view: " + (format % args) + "\n")

    # ---- responses
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _file(self, path: Path) -> None:
        ctype = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(path.stat().st_size))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                self.wfile.write(chunk)

    def _host_ok(self) -> bool:
        if self.server.hosts is None or self.headers.get("Host") in self.server.hosts:
            return True
        self._error(HTTPStatus.MISDIRECTED_REQUEST, "this server answers only requests to 127.0.0.1/localhost")
        return False

    # ---- GET
    def do_GET(self) -> None:
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        try:
            route = self._route(path)
            if route is None:
                self._error(404, "not found")
            else:
                route()
        except Refused as e:
            self._error(e.status, "refused" if e.status == 403 else "not found")
        except (UnicodeDecodeError, ValueError):
            self._error(400, "bad request path")
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_HEAD = do_GET

    def _route(self, path: str) -> Callable[[], None] | None:
        s = self.server
        if path in ("/", "/index.html"):
            return lambda: self._file(STATIC / "index.html")
        if path.startswith("/static/"):
            real = resolve(STATIC, split_request_path(path[len("/static/"):]))
            return lambda: self._file(real)
        if path == "/vendor/niivue.js":
            return lambda: self._file(s.niivue)
        if path == "/api/cases":
            return lambda: self._json({"cases": [c.to_json() for c in s.catalog.cases()],
                                       "regions": s.catalog.regions(), "upload": s.jobs is not None,
                                       "max_upload_mb": s.max_upload // 2**20})
        if path.startswith("/api/jobs/"):
            job = s.jobs.get(path[len("/api/jobs/"):]) if s.jobs is not None else None
            return None if job is None else (lambda: self._json(job.to_json()))
        if path.startswith("/files/"):
            parts = split_request_path(path[len("/files/"):])
            root = s.catalog.roots.get(parts[0])
            if root is None or len(parts) < 2:
                raise Refused("unknown root", 404)
            real = resolve(root.path, parts[1:])
            return lambda: self._file(real)
        return None

    # ---- POST
    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/api/upload" or self.server.jobs is None:
            self._error(404, "not found (uploads need `brats2d view --run-dir R`)")
            return
        try:
            job_id = self._upload()
        except UploadError as e:
            self.close_connection = True  # the unread rest of a refused body must not be parsed as a request
            self._error(e.status, str(e))
            return
        self._json({"job": job_id}, 202)

    def _upload(self) -> str:
        s = self.server
        assert s.jobs is not None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise UploadError("an upload needs a Content-Length") from None
        if length > s.max_upload:
            raise UploadError(f"the upload ({length / 2**20:.0f} MB) is over the {s.max_upload / 2**20:.0f} MB limit", 413)
        boundary = boundary_of(self.headers.get("Content-Type", ""))
        job, job_dir = s.jobs.new()
        try:
            body = read_body(self.rfile, length, job_dir / "body")
            files = split_parts(body, boundary, job_dir, s.max_file)
            body.unlink()
            job.files = [f.name for f in files]
            folder = stage_upload(files, job_dir)
        except UploadError as e:
            s.jobs.fail(job, str(e))
            raise
        s.jobs.start(job, folder, job_dir)
        return job.id

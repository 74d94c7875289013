"""The studio's HTTP side: static page + JSON API (stdlib ThreadingHTTPServer, one thread a request).

Usage:
    server = make_server(app, "127.0.0.1", 8555)      # app: services.studio.app.App
    threading.Thread(target=server.serve_forever, daemon=True).start()

Auth: `Authorization: Bearer <token>` on every /api call except login and health; tokens
never travel in URLs and are never logged (the access log holds method, path and status).
Errors are JSON `{"error": "<what is wrong and how to fix it>", "code": ...}` with 400 (bad
field), 401 (no/unknown token), 404, 409 (held by someone else / busy / project problem),
411/413 (body), 503 (a mesh service is down).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from protocol.errors import RemoteError
from services.studio.calls import ServiceDown
from services.studio.episode import Busy
from services.studio.project import BadInput, ProjectError
from services.studio.store import AuthError, HoldError

log = logging.getLogger("services.studio.http")
STATIC = Path(__file__).resolve().parent / "static"


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.status, self.code = status, code


ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), name)
    for m, p, name in (
        ("GET", r"^/api/health$", "health"),
        ("POST", r"^/api/login$", "login"),
        ("GET", r"^/api/project$", "project"),
        ("GET", r"^/api/episodes$", "episodes"),
        ("GET", r"^/api/stats$", "stats"),
        ("GET", r"^/api/episodes/(\d+)$", "episode"),
        ("POST", r"^/api/episodes/(\d+)/hold$", "hold"),
        ("POST", r"^/api/episodes/(\d+)/release$", "release"),
        ("POST", r"^/api/episodes/(\d+)/open$", "open"),
        ("GET", r"^/api/episodes/(\d+)/frames/(\d+)$", "frame"),
        ("GET", r"^/api/episodes/(\d+)/masks$", "masks"),
        ("POST", r"^/api/episodes/(\d+)/objects$", "add_object"),
        ("POST", r"^/api/episodes/(\d+)/prompts$", "prompt"),
        ("POST", r"^/api/episodes/(\d+)/undo$", "undo"),
        ("POST", r"^/api/episodes/(\d+)/clear$", "clear"),
        ("POST", r"^/api/episodes/(\d+)/propagate$", "propagate"),
        ("POST", r"^/api/episodes/(\d+)/review$", "review"),
    )
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "maskmesh-studio"
    app: Any = None  # set by make_server

    def log_message(self, fmt: str, *args: Any) -> None:  # never headers (tokens)
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- plumbing --------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _body(self) -> dict:
        n = self.headers.get("Content-Length")
        if n is None:
            if self.headers.get("Transfer-Encoding"):
                raise HttpError(411, "body: send Content-Length (chunked bodies are not accepted)")
            return {}
        if not n.isdigit():
            raise HttpError(400, f"Content-Length: {n!r} is not a number")
        limit = self.app.opts.max_body_bytes
        if int(n) > limit:
            self.close_connection = True
            if int(n) <= 16 * limit:  # read it away so the client gets the reply, not EPIPE
                left = int(n)
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise HttpError(413, f"body: {n} bytes is too large; the studio accepts at most "
                                 f"{limit} bytes per request", "too_large")  # fmt: skip
        raw = self.rfile.read(int(n)) if int(n) else b""
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HttpError(400, f"body: not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body: expected a JSON object")
        return body

    def _who(self) -> str:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise HttpError(401, "not logged in: send Authorization: Bearer <token> (log in "
                                 "with your name on the start page)", "unauthorized")  # fmt: skip
        who = self.app.store.who(auth[7:].strip())
        if who is None:
            raise HttpError(401, "unknown token: log in again", "unauthorized")
        return who

    def _static(self, path: str) -> None:
        rel = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        f = (STATIC / rel).resolve()
        if not f.is_relative_to(STATIC) or not f.is_file():
            raise HttpError(404, f"{path}: no such page", "not_found")
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        if f.suffix == ".js":
            ctype = "text/javascript"
        self._send(200, f.read_bytes(), ctype + ("; charset=utf-8" if "text" in ctype else ""))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if method == "POST" and not url.path.startswith("/api/"):
                raise HttpError(404, f"{url.path}: no such endpoint", "not_found")
            if not url.path.startswith("/api/"):
                return self._static(url.path)
            for m, pat, name in ROUTES:
                hit = pat.match(url.path)
                if hit and m == method:
                    body = self._body() if method == "POST" else {}
                    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                    args = [int(g) for g in hit.groups()]
                    who = None if name in ("health", "login") else self._who()
                    return getattr(self.app, "h_" + name)(self, who, args, body, query)
            if any(p.match(url.path) for _, p, _ in ROUTES):
                raise HttpError(405, f"{method} {url.path}: method not allowed", "bad_request")
            raise HttpError(404, f"{url.path}: no such endpoint", "not_found")
        except HttpError as e:
            self._json(e.status, {"error": str(e), "code": e.code})
        except BadInput as e:
            self._json(400, {"error": str(e), "code": "bad_request"})
        except (HoldError, Busy) as e:
            self._json(409, {"error": str(e), "code": "conflict"})
        except AuthError as e:
            self._json(403, {"error": str(e), "code": "forbidden"})
        except ProjectError as e:
            self._json(409, {"error": str(e), "code": "project"})
        except ServiceDown as e:
            self._json(503, {"error": str(e), "code": "service_down", "service": e.service})
        except RemoteError as e:
            self._json(502, {"error": f"a mesh service answered: {e}", "code": e.code})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # never a dead request thread without an answer
            log.exception("%s %s failed", method, url.path)
            try:
                self._json(500, {"error": f"internal error: {type(e).__name__}: {e}",
                                 "code": "internal"})  # fmt: skip
            except OSError:
                pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # -- used by handlers ------------------------------------------------------------------
    def reply(self, obj: Any, status: int = 200) -> None:
        self._json(status, obj)

    def reply_bytes(self, data: bytes, ctype: str, cache_s: int = 0) -> None:
        extra = {"Cache-Control": f"private, max-age={cache_s}"} if cache_s else None
        self._send(200, data, ctype, extra)

    def stream(self, events) -> None:
        """Newline-delimited JSON, chunked; the generator runs to the end even if the page left."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        alive = True
        try:
            for ev in events:
                if not alive:
                    continue
                data = json.dumps(ev, separators=(",", ":")).encode() + b"\n"
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                except OSError:
                    alive = False  # keep computing: the masks land in the studio's copy
        except (BadInput, Busy, ProjectError, ServiceDown, RemoteError) as e:
            if alive:
                err = json.dumps({"type": "error", "error": str(e)}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(err), err))
        if alive:
            try:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass
        self.close_connection = True


def make_server(app: Any, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("StudioHandler", (Handler,), {"app": app})
    srv = ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    return srv

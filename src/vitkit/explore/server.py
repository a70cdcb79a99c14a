"""The HTTP side of `vitkit explore`: the page's three files and the JSON API, nothing else.

    GET  /                       the page (index.html, explore.js, explore.css ship in static/)
    GET  /api/model              the checkpoint: shape, filters, position-embedding similarity
    POST /api/predict            multipart field `image` -> predictions, grid, rollout, ...
    GET  /api/sample/<i>         sample i of --data, the same answer plus its true label
    GET  /api/attention/<id>?token=T   where token T of an answered image attends

Errors are JSON `{"error": "..."}` with a 4xx status (5xx for a fault of the server's own); the
server keeps serving. Bound to a loopback address it also refuses requests naming another host
(a web page that rebinds its own name to 127.0.0.1 cannot reach the API).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import socketserver
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from vitkit.explore.app import Explorer
from vitkit.explore.uploads import RequestError
from vitkit.explore.views import TOP_K

STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
                "/explore.css": ("explore.css", "text/css; charset=utf-8")}
# The page loads only its own files; images come as data: URLs from the API.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# A body over the upload limit is still read (and dropped) up to this much, so that the client,
# busy sending, gets to read the 413 instead of a reset connection; past it the connection closes.
DRAIN_BYTES = 64 * 1024 * 1024
MAX_TOP_K = 1000
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_address(host: str, port: int) -> str:
    """The address to open: the bound host, or 127.0.0.1 when bound to every interface."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class ExploreServer(ThreadingHTTPServer):
    """Serves one Explorer; `address` is the page's URL (`port=0` picks a free port)."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0, *, debug: bool = False):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.explorer = explorer
        self.debug = debug
        self.loopback_only = _is_loopback(host)
        super().__init__((host, port), ExploreHandler)
        self.address = page_address(host, self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer's own looks up the host's fully qualified name, which waits on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ExploreHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vitkit-explore"
    # A connection that sends nothing for this long is closed (a browser opens a new one).
    timeout = 120
    server: ExploreServer

    # ------------------------------------------------------------------ routing
    def do_GET(self) -> None:  # noqa: N802 - the name BaseHTTPRequestHandler calls
        self._respond(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._respond(self._post)

    def _get(self, path: str, query: dict) -> tuple[int, bytes, str]:
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            return 200, resources.files("vitkit.explore").joinpath("static", name).read_bytes(), content_type
        explorer = self.server.explorer
        if path == "/api/model":
            return self._json(explorer.summary)
        match = re.fullmatch(r"/api/sample/(\d{1,9})", path)
        if match:
            return self._json(explorer.predict_sample(int(match[1]), self._top_k(query)))
        match = re.fullmatch(r"/api/attention/([0-9a-f]{1,64})", path)
        if match:
            return self._json(explorer.attention(match[1], self._int_param(query, "token")))
        raise RequestError(404, f"nothing at {path}")

    def _post(self, path: str, query: dict) -> tuple[int, bytes, str]:
        if path != "/api/predict":
            raise RequestError(404 if not path.startswith("/api/") else 405, f"POST {path} is not served; "
                               "POST /api/predict with the form field 'image'")
        body = self._read_body()
        return self._json(self.server.explorer.predict_upload(body, self.headers.get("Content-Type", ""),
                                                              self._top_k(query)))

    # ------------------------------------------------------------------ pieces
    def _respond(self, route) -> None:
        try:
            url = urlsplit(self.path)
            self._check_host()
            status, body, content_type = route(url.path, parse_qs(url.query))
        except RequestError as e:
            status, body, content_type = self._json({"error": str(e)}, e.status)
            # Whatever is left of a refused upload must not be read as the next request.
            self.close_connection = self.close_connection or self.command == "POST"
        except Exception as e:  # noqa: BLE001 - the server reports it and keeps serving
            self.close_connection = self.close_connection or self.command == "POST"
            print(f"vitkit explore: error serving {self.command} {self.path}: {type(e).__name__}: {e}", file=sys.stderr)
            if self.server.debug:
                traceback.print_exc()
            status, body, content_type = self._json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        self._send(status, body, content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    @staticmethod
    def _json(obj, status: int = 200) -> tuple[int, bytes, str]:
        return status, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(), "application/json"

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (a malformed request line, an unsupported method) as JSON too."""
        self.close_connection = True
        reason = message or HTTPStatus(code).phrase
        self._send(code, json.dumps({"error": reason}).encode(), "application/json")

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        """Requests are not logged: a page click is not news. Faults print in _respond."""

    def _check_host(self) -> None:
        if not self.server.loopback_only:
            return
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host and name not in LOOPBACK_NAMES:  # browsers always name the host; old scripts may not
            raise RequestError(403, f"this server answers only requests for localhost, not {host!r}")

    def _declared_length(self) -> int:
        text = self.headers.get("Content-Length")
        if text is None:
            raise RequestError(411, "the upload has no Content-Length")
        if not text.strip().isdigit():
            raise RequestError(400, f"bad Content-Length {text!r}")
        return int(text)

    def _too_large(self, length: int) -> RequestError:
        limit = self.server.explorer.max_upload_bytes
        return RequestError(413, f"the upload is {length} bytes, over the limit of {limit} bytes; "
                                 "send a smaller file, or start vitkit explore with a larger --max-upload-mb")

    def handle_expect_100(self) -> bool:
        """A client that asks before sending a large body is told no at once."""
        try:
            length = self._declared_length()
            if length > self.server.explorer.max_upload_bytes:
                raise self._too_large(length)
        except RequestError as e:
            self.close_connection = True
            self._send(*self._json({"error": str(e)}, e.status))
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes:
        length = self._declared_length()
        if length > self.server.explorer.max_upload_bytes:
            self.close_connection = True
            if length <= self.server.explorer.max_upload_bytes + DRAIN_BYTES:
                self._drain(length)
            raise self._too_large(length)
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise RequestError(400, f"the upload ended after {len(body)} of {length} bytes")
        return body

    def _drain(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                return
            length -= len(chunk)

    @staticmethod
    def _int_param(query: dict, name: str) -> int:
        values = query.get(name)
        if not values or not re.fullmatch(r"\d{1,9}", values[0]):
            raise RequestError(400, f"give ?{name}= as a non-negative whole number")
        return int(values[0])

    def _top_k(self, query: dict) -> int:
        if "topk" not in query:
            return TOP_K
        k = self._int_param(query, "topk")
        if not 1 <= k <= MAX_TOP_K:
            raise RequestError(400, f"topk must be between 1 and {MAX_TOP_K}, got {k}")
        return k

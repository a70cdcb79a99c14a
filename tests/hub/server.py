"""A stand-in for the Hugging Face Hub and for a file bucket, served on 127.0.0.1.

It answers what huggingface_hub's download path asks (huggingface_hub 2.4:
file_download.get_hf_file_metadata and http_get, hf_api.list_repo_tree):

    HEAD/GET /{owner}/{repo}/resolve/{revision}/{path}   X-Repo-Commit, ETag (the sha256 of an
                                                          LFS file, the git blob hash of a small
                                                          one), Content-Length; 404 with
                                                          X-Error-Code RepoNotFound,
                                                          RevisionNotFound or EntryNotFound
    GET /api/models/{owner}/{repo}/tree/{revision}        the repo's files as JSON

and any other path as a plain file (the bucket). Faults are switched on per path ("truncate":
half the bytes, "corrupt": the right length but other bytes, "error": HTTP 503), and every
request is logged as (method, path), with its Authorization header.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The Hub stores these in LFS; their ETag is the content's sha256.
LFS_SUFFIXES = (".safetensors", ".npz", ".bin", ".pth")


def etag(path: str, data: bytes) -> str:
    if path.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: dict[str, str] = {}
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo: str, files: dict[str, bytes]) -> str:
        """Publish `files` as the repo's main branch; returns its commit hash."""
        self.repos[repo] = dict(files)
        self.commits[repo] = hashlib.sha1(repo.encode() + b"".join(sorted(files.values()))).hexdigest()
        return self.commits[repo]

    def add_folder(self, repo: str, folder: Path) -> str:
        return self.add_repo(repo, {str(p.relative_to(folder)): p.read_bytes()
                                    for p in sorted(folder.rglob("*")) if p.is_file()})

    def gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET"]

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # the tests read hub.requests instead
            pass

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            hub.authorizations.append(self.headers.get("Authorization"))
            tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path)
            resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if tree:
                self._tree(*tree.groups())
            elif resolve:
                self._resolve(*resolve.groups(), body=body)
            elif path in hub.files:
                self._send(path, hub.files[path], {}, body, hard_close=True)
            else:
                self._fail(404)

        def _tree(self, repo: str, revision: str) -> None:
            if repo not in hub.repos:
                return self._fail(404, "RepoNotFound")
            listing = [{"type": "file", "path": name, "size": len(data), "oid": etag(name, data)}
                       for name, data in sorted(hub.repos[repo].items())]
            payload = json.dumps(listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _resolve(self, repo: str, revision: str, name: str, body: bool) -> None:
            if repo not in hub.repos:
                return self._fail(404, "RepoNotFound")
            commit = hub.commits[repo]
            if revision not in ("main", commit):
                return self._fail(404, "RevisionNotFound")
            if name not in hub.repos[repo]:
                return self._fail(404, "EntryNotFound", {"X-Repo-Commit": commit})
            data = hub.repos[repo][name]
            headers = {"X-Repo-Commit": commit, "ETag": f'"{etag(name, data)}"'}
            self._send(f"{repo}/{name}", data, headers, body, hard_close=False)

        def _send(self, key: str, data: bytes, headers: dict, body: bool, hard_close: bool) -> None:
            fault = hub.faults.get(key)
            if fault == "error":
                return self._fail(503)
            sent = data
            if body and fault == "corrupt":  # bytes flipped inside the data, the framing intact
                middle = len(data) // 2
                sent = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]
            length = len(data)
            if body and fault == "truncate":
                sent = data[:len(data) // 2]
                # The bucket closes the connection short of its Content-Length; the Hub's file
                # server announces the short length, as a proxy that cut the body would.
                length = len(data) if hard_close else len(sent)
            self.send_response(200)
            for key_, value in headers.items():
                self.send_header(key_, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if body:
                self.wfile.write(sent)
            self.close_connection = True

        def _fail(self, status: int, code: str | None = None, headers: dict | None = None) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.close_connection = True

    return Handler

"""A loopback stand-in for the Hugging Face Hub file API, serving files from a folder.

Layout on disk: ``<root>/<org>/<repo>/<files...>``. Routes (revision ignored, any accepted):

* ``GET /api/models/<org>/<repo>/tree/<rev>[/<path>][?recursive=true]``: the Hub's JSON listing
  (``type``, ``oid``, ``size``, ``path``, and ``lfs: {oid: sha256, size}`` for ``.gguf`` files);
* ``GET /<org>/<repo>/resolve/<rev>/<path>``: the file, with ``Range: bytes=N-`` support; with
  ``redirect=True`` it answers 302 to ``http://localhost:<port>/cdn/...`` (another origin, like
  the Hub's CDN), which needs no token.

With ``token`` set, API and resolve requests need ``Authorization: Bearer <token>`` (else 401).
Paths in ``corrupt`` are served with their first byte flipped. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([^/]+/[^/]+)/(.+)$")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class SeenRequest:
    """One request the server answered."""

    path: str
    status: int
    range: str | None
    authorization: str | None


@dataclass
class HubServer:
    """The fake Hub; use as a context manager or call ``start``/``stop``.

    Attributes:
        root: Folder holding ``<org>/<repo>/`` trees.
        token: Required bearer token, or ``None`` for public access.
        redirect: Send downloads through a 302 to a ``localhost`` CDN path.
        honour_recursive: When false, listings show folders without their files.
        corrupt: Repository-relative paths served with a flipped first byte.
        seen: Every answered request.
    """

    root: Path
    token: str | None = None
    redirect: bool = False
    honour_recursive: bool = True
    corrupt: set[str] = field(default_factory=set)
    seen: list[SeenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sha256: dict[Path, str] = {}
        self._server = _HubHTTPServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        """Return the port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Return the endpoint, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, seen: SeenRequest) -> None:
        """Remember one answered request."""
        with self._lock:
            self.seen.append(seen)

    def sha256(self, path: Path) -> str:
        """Return (and cache) the hex sha256 of a served file."""
        with self._lock:
            if path not in self._sha256:
                self._sha256[path] = hashlib.sha256(path.read_bytes()).hexdigest()
            return self._sha256[path]

    def _entry(self, repo_dir: Path, path: Path) -> dict[str, object]:
        rel = path.relative_to(repo_dir).as_posix()
        if path.is_dir():
            return {
                "type": "directory",
                "oid": hashlib.sha1(rel.encode()).hexdigest(),
                "size": 0,
                "path": rel,
            }
        size = path.stat().st_size
        entry: dict[str, object] = {
            "type": "file",
            "oid": hashlib.sha1(rel.encode()).hexdigest(),
            "size": size,
            "path": rel,
        }
        if path.suffix == ".gguf":
            entry["lfs"] = {"oid": self.sha256(path), "size": size, "pointerSize": 134}
        return entry

    def listing(self, repo: str, sub: str, recursive: bool) -> list[dict[str, object]] | None:
        """Return the tree listing of ``repo`` below ``sub`` (``None`` when missing)."""
        repo_dir = self.root / repo
        folder = repo_dir / sub if sub else repo_dir
        if not folder.is_dir():
            return None
        if recursive and self.honour_recursive:
            paths = sorted(folder.rglob("*"))
        else:
            paths = sorted(folder.iterdir())
        return [self._entry(repo_dir, p) for p in paths]


class _HubHTTPServer(ThreadingHTTPServer):
    """HTTP server that knows its :class:`HubServer`."""

    daemon_threads = True

    def __init__(self, hub: HubServer) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.hub = hub


class _HubHandler(BaseHTTPRequestHandler):
    """Request handler of :class:`HubServer` (the server object is ``self.server.hub``)."""

    server: _HubHTTPServer

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def _record(self, status: int) -> None:
        self.hub.record(
            SeenRequest(
                self.path, status, self.headers.get("Range"), self.headers.get("Authorization")
            )
        )

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.hub.token is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.hub.token}":
            return True
        self._json(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if match := _TREE.match(path):
            if self._authorized():
                recursive = parse_qs(parts.query).get("recursive", ["false"])
                self._tree(match[1], match[3] or "", recursive[0] == "true")
        elif match := _RESOLVE.match(path):
            if self._authorized():
                self._resolve(match[1], match[3])
        elif match := _CDN.match(path):
            self._file(match[1], match[2])
        else:
            self._json(404, {"error": "not found"})

    def _tree(self, repo: str, sub: str, recursive: bool) -> None:
        listing = self.hub.listing(repo, sub, recursive)
        if listing is None:
            self._json(404, {"error": "Repository not found"})
        else:
            self._json(200, listing)

    def _resolve(self, repo: str, rel: str) -> None:
        if not self.hub.redirect:
            self._file(repo, rel)
            return
        # Another origin (localhost, not 127.0.0.1), like the Hub's CDN.
        self._record(302)
        self.send_response(302)
        self.send_header("Location", f"http://localhost:{self.hub.port}/cdn/{repo}/{quote(rel)}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _range(self, size: int) -> tuple[int, int] | None:
        header = self.headers.get("Range")
        match = _RANGE.match(header.strip()) if header else None
        if match is None:
            return None
        start = int(match[1])
        end = min(int(match[2]) + 1, size) if match[2] else size
        return start, end

    def _file(self, repo: str, rel: str) -> None:
        file = self.hub.root / repo / rel
        if ".." in rel.split("/") or not file.is_file():
            self._json(404, {"error": "Entry not found"})
            return
        data = file.read_bytes()
        if rel in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        wanted = self._range(len(data))
        start, end = wanted or (0, len(data))
        if start >= len(data) > 0:
            self._record(416)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = 206 if wanted else 200
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:end])

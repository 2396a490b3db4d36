"""A scriptable loopback HTTP server that plays a hostile registry, token server or hub.

Each test passes a ``respond(exchange)`` function that answers every request however the test
needs: a cross-origin ``Location`` or ``Link``, a foreign token realm, a 200 MiB error body made
on the fly, one byte every few seconds, a chunked body cut mid-chunk. Every request is recorded
(method, path, headers) so a test can assert who received which ``Authorization``.

Two origins on loopback: start two servers (different ports), or name one server both as
``127.0.0.1:<port>`` and as ``localhost:<port>`` (same port, different host).

The server runs in a thread of the test process on 127.0.0.1. :meth:`HostileServer.stop` is
bounded: it stops accepting, tells streaming handlers to give up (``exchange.closing``) and
joins every handler thread with a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from orchestrator.store import mediatypes
from orchestrator.store.builder import Artifact, LayerFile

STOP_DEADLINE_SECONDS = 5.0
GGUF_LAYER = mediatypes.GGUF


@dataclass(frozen=True)
class Seen:
    """One request the server received.

    Attributes:
        method: HTTP method.
        path: Request target (path and query).
        headers: Request headers, names lowercased.
        peer_port: The client's port (one per connection: reuse shows as a repeated port).
    """

    method: str
    path: str
    headers: dict[str, str]
    peer_port: int = 0

    @property
    def authorization(self) -> str | None:
        """Return the ``Authorization`` header, if sent."""
        return self.headers.get("authorization")

    @property
    def route(self) -> str:
        """Return the path without its query."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        """Return the parsed query string."""
        return parse_qs(urlsplit(self.path).query)


class Exchange:
    """One request as ``respond`` sees it, with helpers to answer it (hostile or not)."""

    def __init__(self, handler: _Handler, server: HostileServer) -> None:
        self._handler = handler
        self.server = server
        self.method = handler.command
        self.path = handler.path
        self.headers = {name.lower(): value for name, value in handler.headers.items()}
        self.closing = server.closing
        self.body_read = False

    @property
    def route(self) -> str:
        """Return the path without its query."""
        return urlsplit(self.path).path

    def read_body(self) -> int:
        """Read and discard the request body (``Content-Length``); return its size."""
        self.body_read = True
        remaining = int(self.headers.get("content-length", "0") or 0)
        total = 0
        while remaining > 0:
            data = self._handler.rfile.read(min(remaining, 1 << 20))
            if not data:
                break
            total += len(data)
            remaining -= len(data)
        return total

    def send_head(
        self, status: int, headers: Mapping[str, str] | None = None, length: int | None = 0
    ) -> None:
        """Send the status line and headers; ``length=None`` means a close-delimited body."""
        handler = self._handler
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        elif "Transfer-Encoding" not in (headers or {}):
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()

    def write(self, data: bytes) -> bool:
        """Write body bytes; return False once the client has gone."""
        try:
            self._handler.wfile.write(data)
            self._handler.wfile.flush()
        except OSError:
            self._handler.close_connection = True
            return False
        return True

    def send(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        """Send a complete answer with ``Content-Length``."""
        self.send_head(status, headers, len(body))
        if self.method != "HEAD":
            self.write(body)

    def stream(
        self,
        status: int,
        total_bytes: int,
        headers: Mapping[str, str] | None = None,
        *,
        prefix: bytes = b"",
        filler: bytes = b"x",
        declare_length: bool = True,
    ) -> int:
        """Send ``prefix`` then ``filler`` up to ``total_bytes``, made on the fly (never held).

        Returns the bytes written before the client went away (or all of them).
        """
        self.send_head(status, headers, total_bytes if declare_length else None)
        block = (filler * ((1 << 16) // max(1, len(filler)) + 1))[: 1 << 16]
        sent = 0
        if prefix:
            if not self.write(prefix[:total_bytes]):
                return sent
            sent += min(len(prefix), total_bytes)
        while sent < total_bytes and not self.closing.is_set():
            piece = block[: total_bytes - sent]
            if not self.write(piece):
                return sent
            sent += len(piece)
        return sent

    def trickle(
        self,
        status: int,
        data: bytes,
        *,
        interval: float,
        headers: Mapping[str, str] | None = None,
        declare_length: bool = True,
    ) -> int:
        """Send the headers, then ``data`` one byte per ``interval`` seconds; return bytes sent."""
        self.send_head(status, headers, len(data) if declare_length else None)
        sent = 0
        for position in range(len(data)):
            if self.closing.wait(interval if position else 0):
                break
            if not self.write(data[position : position + 1]):
                break
            sent += 1
        return sent

    def broken_chunked(
        self, status: int, prefix: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send a chunked body whose chunk announces more bytes than arrive, then hang up."""
        merged = {"Transfer-Encoding": "chunked", **(headers or {})}
        self.send_head(status, merged, None)
        self._handler.close_connection = True
        self.write(f"{len(prefix) + 4096:x}\r\n".encode() + prefix)
        with contextlib.suppress(OSError):
            self._handler.connection.shutdown(socket.SHUT_RDWR)


Respond = Callable[[Exchange], None]


@dataclass
class HostileServer:
    """The server; use as a context manager or call ``start``/``stop``.

    Attributes:
        respond: Answers every request.
        seen: Every request received, in order.
    """

    respond: Respond
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._handlers: dict[threading.Thread, socket.socket] = {}
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        """Return the port it listens on."""
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """Return ``127.0.0.1:<port>``, the registry part of references."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        """Return ``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def localhost_url(self, path: str = "") -> str:
        """Return ``http://localhost:<port><path>``: the same server as another origin."""
        return f"http://localhost:{self.port}{path}"

    def start(self) -> HostileServer:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self, deadline_seconds: float = STOP_DEADLINE_SECONDS) -> None:
        """Stop serving and join every handler, all within ``deadline_seconds``."""
        deadline = time.monotonic() + deadline_seconds
        self.closing.set()
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        stopper.join(max(0.0, deadline - time.monotonic()))
        self._server.server_close()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            handlers = list(self._handlers)
            connections = list(self._handlers.values())
        for connection in connections:
            # A handler waiting for the next request on a kept-alive connection wakes up.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in handlers if t.is_alive()] + [
            t for t in (stopper, self._thread) if t.is_alive()
        ]
        assert not alive, f"hostile server threads still running after {deadline_seconds}s"

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def requests_to(self, route_part: str) -> list[Seen]:
        """Return the requests whose path contains ``route_part``."""
        with self._lock:
            return [seen for seen in self.seen if route_part in seen.path]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _enter_handler(self, connection: socket.socket) -> None:
        with self._lock:
            self._handlers[threading.current_thread()] = connection

    def _leave_handler(self) -> None:
        with self._lock:
            self._handlers.pop(threading.current_thread(), None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, hostile: HostileServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hostile = hostile


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def handle(self) -> None:
        hostile = self.server.hostile
        hostile._enter_handler(self.connection)
        try:
            super().handle()
        except OSError:
            pass
        finally:
            hostile._leave_handler()

    def _dispatch(self) -> None:
        hostile = self.server.hostile
        exchange = Exchange(self, hostile)
        peer_port = int(self.client_address[1])
        hostile._record(Seen(exchange.method, exchange.path, dict(exchange.headers), peer_port))
        try:
            hostile.respond(exchange)
        except OSError:
            self.close_connection = True
        if not exchange.body_read and not self.close_connection:
            # An unread body would be parsed as the next request on a kept-alive connection.
            try:
                exchange.read_body()
            except OSError:
                self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch  # noqa: N815


def serve(respond: Respond) -> Iterator[HostileServer]:
    """Yield a started server and stop it afterwards (for fixtures)."""
    server = HostileServer(respond).start()
    try:
        yield server
    finally:
        server.stop()


# -- a model to serve or push, and an honest answer for it --------------------------------------


def synthetic_artifact(directory: Path, layer: bytes) -> Artifact:
    """Write ``layer`` as the one GGUF layer of a model artifact; return the artifact.

    The bytes need not be a GGUF file: pulls and pushes move and verify them, nothing parses
    them. This makes blobs of any size (a slow but steady transfer, a stalled upload).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "layer.gguf"
    path.write_bytes(layer)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config_bytes = json.dumps(
        {"config": {"format": "gguf", "size": str(len(layer))}, "descriptor": {}},
        separators=(",", ":"),
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": mediatypes.SUPPORTED_CONFIGS[0],
            "size": len(config_bytes),
            "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
        },
        "layers": [{"mediaType": GGUF_LAYER, "size": len(layer), "digest": digest}],
    }
    return Artifact(
        manifest_bytes=json.dumps(manifest, separators=(",", ":")).encode(),
        config_bytes=config_bytes,
        layers=(LayerFile(path, GGUF_LAYER, digest, len(layer), {}),),
    )


def artifact_blob(artifact: Artifact, digest: str) -> bytes | None:
    """Return the bytes of ``artifact``'s blob ``digest`` (config or layer), or ``None``."""
    if digest == artifact.config_digest:
        return artifact.config_bytes
    for layer in artifact.layers:
        if layer.digest == digest:
            return layer.path.read_bytes()
    return None


def serve_model(exchange: Exchange, artifact: Artifact) -> bool:
    """Answer a manifest or blob GET of ``artifact`` as an honest registry would.

    Returns whether the request was one of those (the caller answers the rest).
    """
    route = exchange.route
    if exchange.method not in ("GET", "HEAD"):
        return False
    if "/manifests/" in route:
        exchange.send(200, artifact.manifest_bytes, {"Content-Type": mediatypes.OCI_MANIFEST})
        return True
    if "/blobs/sha256:" in route:
        data = artifact_blob(artifact, route.rsplit("/", 1)[-1])
        if data is None:
            exchange.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return True
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", exchange.headers.get("range", ""))
        if match and int(match[1]) < len(data):
            start = int(match[1])
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            exchange.send(206, data[start:], headers)
        else:
            exchange.send(200, data)
        return True
    return False

"""A loopback HTTP server that answers fixed routes, for stand-ins of public JSON APIs.

Each route maps a path (no query) to a function of the request that returns ``(status, body)``
or ``(status, body, headers)``; unknown paths get 404. Every request is recorded (path, query,
headers). The server runs in a thread on ``127.0.0.1`` and is stopped with a bounded join.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

STOP_SECONDS = 5.0


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


Answer = tuple[int, bytes] | tuple[int, bytes, dict[str, str]]
Route = Callable[[Seen], Answer]


def json_answer(document: Any, status: int = 200) -> Answer:
    """Return a JSON answer."""
    return status, json.dumps(document).encode(), {"Content-Type": "application/json"}


@dataclass
class RoutesServer:
    """The server; use as a context manager.

    Attributes:
        routes: Path -> answer function.
        seen: Every request, in order.
    """

    routes: Mapping[str, Route]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                seen = Seen(parts.path, parse_qs(parts.query), dict(self.headers.items()))
                with owner._lock:
                    owner.seen.append(seen)
                route = owner.routes.get(parts.path)
                answer: Answer = route(seen) if route else (404, b'{"detail":"not found"}')
                status, body = answer[0], answer[1]
                headers = answer[2] if len(answer) == 3 else {}  # type: ignore[misc]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def host(self) -> str:
        """Return ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def paths(self) -> list[str]:
        """Return the paths requested so far."""
        with self._lock:
            return [seen.path for seen in self.seen]

    def start(self) -> RoutesServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving within :data:`STOP_SECONDS`."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=STOP_SECONDS)

    def __enter__(self) -> RoutesServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

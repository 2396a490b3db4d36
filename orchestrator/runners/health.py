"""HTTP to a runner over its Unix socket: the connection class and the ``/health`` probe.

Plain ``http.client`` (stdlib, no pooling): the readiness poll opens one short connection per
probe, which is what llama-server's own test harness does.
"""

from __future__ import annotations

import http.client
import socket

HEALTH_REQUEST_TIMEOUT_SECONDS = 1.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket (llama-server's ``--host <path>``).

    The ``Host`` header says ``localhost``, as DMR's proxy sends it.
    """

    def __init__(self, path: str, timeout: float) -> None:
        """Connect to ``path`` lazily, with ``timeout`` seconds per socket operation."""
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        """Open the Unix socket (called by ``http.client``)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def probe_health(socket_path: str, timeout: float = HEALTH_REQUEST_TIMEOUT_SECONDS) -> int | None:
    """Return the status of ``GET /health`` on ``socket_path``, or ``None`` if unreachable."""
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request("GET", "/health", headers={"Host": "localhost"})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()

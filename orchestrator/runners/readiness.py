"""The ``/health`` probe of a runner's llama-server, over its Unix socket.

Plain ``http.client`` (stdlib, no pooling): the readiness poll opens one short connection per
probe, which is what llama-server's own test harness does.
"""

from __future__ import annotations

import http.client

from orchestrator.unixhttp import UnixHTTPConnection

HEALTH_REQUEST_TIMEOUT_SECONDS = 1.0


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

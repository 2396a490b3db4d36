"""One HTTP request to an engine's Unix socket (a runner, or llama-server started by a test)."""

from __future__ import annotations

import http.client
import json

from orchestrator.unixhttp import UnixHTTPConnection


def engine_request(
    socket_path: str, method: str, path: str, body: object = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Send ``body`` (as JSON, when given) and return (status, response body).

    Raises:
        OSError, http.client.HTTPException: The socket did not answer.
    """
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def engine_status(
    socket_path: str, method: str, path: str, body: object = None, timeout: float = 5.0
) -> int:
    """Return the status of one request, 0 when the socket does not answer (yet)."""
    try:
        return engine_request(socket_path, method, path, body, timeout)[0]
    except (OSError, http.client.HTTPException):
        return 0

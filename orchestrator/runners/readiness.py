"""The ``/health`` probe of a runner's llama-server, over its Unix socket.

One short connection per probe (what llama-server's own test harness does), written and read
with the socket directly: a loading runner is probed every few milliseconds, and
:mod:`http.client`'s request building and header parsing cost more CPU than the answer needs,
CPU the engine's load competes for. Only the status line is parsed.
"""

from __future__ import annotations

from orchestrator.unixhttp import connect_unix_socket

HEALTH_REQUEST_TIMEOUT_SECONDS = 1.0
_REQUEST = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
_MAX_ANSWER_BYTES = 4096


def probe_health(socket_path: str, timeout: float = HEALTH_REQUEST_TIMEOUT_SECONDS) -> int | None:
    """Return the status of ``GET /health`` on ``socket_path``, or ``None`` if unreachable."""
    try:
        sock = connect_unix_socket(socket_path, timeout)
    except OSError:
        return None
    try:
        sock.sendall(_REQUEST)
        # The whole (small) answer, so the engine never writes to a socket we already closed:
        # up to its Content-Length, else to the close that "Connection: close" asks for.
        head = b""
        while len(head) < _MAX_ANSWER_BYTES and not _answer_complete(head):
            chunk = sock.recv(_MAX_ANSWER_BYTES)
            if not chunk:
                break
            head += chunk
    except OSError:
        return None
    finally:
        sock.close()
    return parse_status(head)


def _answer_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole answer with a ``Content-Length`` (no need to wait for the
    close)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(data) - end - 4 >= int(value)
            except ValueError:
                return False
    return False


def parse_status(head: bytes) -> int | None:
    """Return the status code of an HTTP/1.x status line at the start of ``head``, or ``None``."""
    line, complete, _rest = head.partition(b"\r\n")
    if not complete:
        return None  # cut short: not an answer
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    return int(parts[1])

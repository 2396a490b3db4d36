"""The simplest correct Python relay a person would write: the yardstick for the daemon's CPU.

``python -m bench.bare_relay --listen 127.0.0.1:PORT --upstream /path/to/llama-server.sock``

A thread per client connection (``socket`` module only): read the request head up to the blank
line and ``Content-Length`` bytes of body, open a Unix socket to the engine, send the head
(with ``Connection: close``, so the end of the answer is the engine closing) and the body, then
copy the answer's bytes to the client as they come (``recv``/``sendall``, 64 KiB), and close.
No parsing of the answer, no keep-alive, no checks beyond what HTTP framing needs: whatever the
daemon spends per token above this is the cost of what it does besides relaying bytes.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

READ_SIZE = 65536
MAX_HEAD_BYTES = 65536
# Hop-by-hop headers this relay replaces: it always closes both sides after one answer.
_HOP_HEADERS = (b"connection", b"keep-alive")


def read_request(client: socket.socket) -> bytes | None:
    """Return one whole request (head rewritten to ``Connection: close``, then the body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(READ_SIZE)
        if not chunk or len(data) > MAX_HEAD_BYTES:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = [lines[0]]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in _HOP_HEADERS:
            continue
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        kept.append(line)
    while len(body) < length:
        chunk = client.recv(READ_SIZE)
        if not chunk:
            return None
        body += chunk
    kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def relay(client: socket.socket, upstream_path: str) -> None:
    """Serve one client connection: one request, its answer streamed through, then close."""
    with client:
        request = read_request(client)
        if request is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
            upstream.connect(upstream_path)
            upstream.sendall(request)
            chunk = upstream.recv(READ_SIZE)
            while chunk:
                client.sendall(chunk)
                chunk = upstream.recv(READ_SIZE)


def serve(listen: tuple[str, int], upstream_path: str) -> None:
    """Accept connections forever, one thread each."""
    server = socket.create_server(listen, backlog=1024)

    def one(client: socket.socket) -> None:
        try:
            relay(client, upstream_path)
        except OSError:
            pass  # A client or the engine went away: that connection is over, nothing else.

    while True:
        client, _ = server.accept()
        threading.Thread(target=one, args=(client,), daemon=True).start()


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--listen HOST:PORT --upstream SOCKET`` and serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.bare_relay", description=__doc__)
    parser.add_argument("--listen", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--upstream", required=True, help="the engine's Unix socket")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    signal.signal(signal.SIGTERM, _stop)
    serve((host or "127.0.0.1", int(port)), args.upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())

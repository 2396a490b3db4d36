"""HTTP over a Unix socket: the connection, its two timeout modes, and address parsing."""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.unixhttp import (
    UnixHTTPConnection,
    connect_unix_socket,
    open_connection,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.headers.get("Host") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:  # a Unix peer has no address
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def server_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "http.sock")
    server = _Server(path, _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


def _receive_timeout(sock: socket.socket) -> tuple[int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll"))
    return struct.unpack("@ll", raw)


def test_request_over_a_unix_socket_says_host_localhost(server_path: str) -> None:
    connection = UnixHTTPConnection(server_path, 5.0)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"localhost")
    finally:
        connection.close()


def test_timeout_stays_a_python_timeout_by_default(server_path: str) -> None:
    connection = UnixHTTPConnection(server_path, 2.5)
    try:
        connection.connect()
        assert connection.sock is not None
        assert connection.sock.gettimeout() == 2.5
        assert _receive_timeout(connection.sock) == (0, 0)
    finally:
        connection.close()


def test_io_timeout_becomes_kernel_socket_options(server_path: str) -> None:
    connection = UnixHTTPConnection(server_path, 5.0, io_timeout=600.5)
    try:
        connection.connect()
        assert connection.sock is not None
        assert connection.sock.gettimeout() is None  # blocking: no poll() before each recv()
        assert _receive_timeout(connection.sock) == (600, 500_000)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"localhost"
    finally:
        connection.close()


def test_unreachable_socket_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        connect_unix_socket(str(tmp_path / "nobody.sock"), 1.0)
    connection = UnixHTTPConnection(str(tmp_path / "nobody.sock"), 1.0)
    with pytest.raises(OSError):
        connection.request("GET", "/")
    assert connection.sock is None


@pytest.mark.parametrize("address", ["/run/x.sock", "./x.sock"])
def test_open_connection_takes_socket_paths(address: str) -> None:
    plain = open_connection(address, 7.0)
    assert isinstance(plain, UnixHTTPConnection)
    assert (plain.socket_path, plain.timeout, plain.io_timeout) == (address, 7.0, None)
    split = open_connection(address, 600.0, connect_timeout=5.0)
    assert isinstance(split, UnixHTTPConnection)
    assert (split.timeout, split.io_timeout) == (5.0, 600.0)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), (":9000", "127.0.0.1", 9000)],
)
def test_open_connection_takes_host_and_port(address: str, host: str, port: int) -> None:
    connection = open_connection(address, 3.0, connect_timeout=1.0)
    assert not isinstance(connection, UnixHTTPConnection)
    assert isinstance(connection, http.client.HTTPConnection)
    assert (connection.host, connection.port, connection.timeout) == (host, port, 3.0)

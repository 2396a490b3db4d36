"""HTTP over a Unix stream socket with the standard library's :mod:`http.client`.

llama-server runners listen on a socket path (``--host <path>``); the proxy, the metrics scrape,
the readiness probe, the engine proof and the benchmarks all talk to them (or to the daemon on
its own socket) through :class:`UnixHTTPConnection`. :func:`open_connection` also takes
``host:port`` for engines that cannot bind a socket. :func:`connect_unix_socket` is the one
place a client stream socket is opened, also for the CLI's ``requests`` adapter, which needs an
urllib3 connection class rather than an :mod:`http.client` one.
"""

from __future__ import annotations

import http.client
import socket
import struct


def connect_unix_socket(path: str, timeout: float | None) -> socket.socket:
    """Return a stream socket connected to the Unix socket ``path``.

    Args:
        path: Filesystem path of the socket (or a Linux abstract name starting with NUL).
        timeout: Seconds that bound the connect; they stay set on the socket for later
            operations. ``None`` blocks.

    Raises:
        OSError: The socket cannot be reached (the socket is closed before raising).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make ``sock`` blocking, with every later ``recv``/``send`` bounded by ``seconds``.

    On a socket with a Python timeout every ``recv`` and ``send`` is preceded by a ``poll``;
    kernel timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``) keep the bound and save that system call
    on every streamed token. An expired call raises ``BlockingIOError`` (inside http.client's
    reader it ends as a short read) instead of ``TimeoutError``: see ``proxy.timed_out()``.
    Runner connections and the front door's client sockets both use it.
    """
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class UnixHTTPConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` over a Unix stream socket.

    The ``Host`` header says ``localhost``, as DMR's proxy sends it. The socket is opened
    lazily, by the first request or an explicit :meth:`connect`.

    Args:
        socket_path: Path of the socket.
        timeout: Seconds that bound the connect and, unless ``io_timeout`` is given, every
            later send and receive (a Python socket timeout: expiry raises ``TimeoutError``).
        io_timeout: When given, the socket turns blocking once connected, and each send and
            receive is bounded by this many seconds through ``SO_SNDTIMEO``/``SO_RCVTIMEO``
            instead (cheaper per read on a long stream; expiry surfaces as ``BlockingIOError``
            or a short read).
    """

    def __init__(
        self, socket_path: str, timeout: float, *, io_timeout: float | None = None
    ) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path
        self.io_timeout = io_timeout

    def connect(self) -> None:
        """Open the Unix socket within ``timeout`` (called by :mod:`http.client`)."""
        sock = connect_unix_socket(self.socket_path, self.timeout)
        if self.io_timeout is not None:
            try:
                set_kernel_timeouts(sock, self.io_timeout)
            except BaseException:
                sock.close()
                raise
        self.sock = sock


def open_connection(
    address: str, timeout: float, *, connect_timeout: float | None = None
) -> http.client.HTTPConnection:
    """Return an unconnected HTTP connection to ``address``.

    Args:
        address: A Unix socket path (starting with ``/`` or ``.``), or ``host:port``
            (``:port`` means ``127.0.0.1``).
        timeout: Seconds that bound the connect and each send and receive.
        connect_timeout: Unix sockets only: bound the connect by this instead and each send
            and receive by ``timeout`` through kernel socket options (see
            :class:`UnixHTTPConnection`'s ``io_timeout``).
    """
    if address.startswith(("/", ".")):
        if connect_timeout is None:
            return UnixHTTPConnection(address, timeout)
        return UnixHTTPConnection(address, connect_timeout, io_timeout=timeout)
    host, _, port = address.rpartition(":")
    return http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=timeout)

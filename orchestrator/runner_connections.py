"""Kept-alive HTTP/1.1 connections to runners, and the reading of an engine answer's head.

The proxy sends each request on a :class:`RunnerConnection` taken from the
:class:`ConnectionPool` and gives it back once the answer has been read to its last byte.

Why keep connections: opening a socket per request costs a ``socket``, a ``connect``, two
``setsockopt`` and, in llama-server, an ``accept`` and a hand-off to one of its HTTP threads; with
http.client's response parsing (the ``email`` package, for a head of four lines) that was a fifth
of the daemon's CPU per small request (py-spy on the worker, issue 18).

Why the pool is small and short-lived: cpp-httplib, llama-server's HTTP server, serves a kept-alive
connection with one of its threads until the connection closes or idles 5 s; it has
``max(parallel slots + 4, cores - 1)`` of them (``tools/server/server-http.cpp``). Connections
parked here pin those threads, which requests in flight, the metrics scrape and the readiness
probe also need. So a runner keeps at most :data:`IDLE_PER_RUNNER` idle connections, each for
at most :data:`IDLE_SECONDS` (below httplib's 5 s, so the engine does not close one under us in
the common case; when it does, the first use notices and the proxy retries once on a fresh
connection).
"""

from __future__ import annotations

import dataclasses
import errno
import socket
import threading
import time

from orchestrator.unixhttp import connect_unix_socket, set_kernel_timeouts

IDLE_PER_RUNNER = 2
IDLE_SECONDS = 2.0
READ_SIZE = 65536
# An engine's head is a few hundred bytes; beyond this it is not an HTTP server we know.
MAX_HEAD_BYTES = 64 * 1024


class MalformedAnswer(OSError):
    """The engine's bytes are not the HTTP/1.1 answer they should be (handled as a crash)."""


@dataclasses.dataclass(frozen=True)
class ResponseHead:
    """Status line and headers of an engine's answer.

    Attributes:
        status: The status code.
        reason: The reason phrase.
        headers: Header names and values in order, as sent.
        chunked: Whether the body is chunked (``Transfer-Encoding: chunked``).
        length: ``Content-Length``, when the body is not chunked and says it.
        will_close: Whether the engine closes the connection after this answer.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    chunked: bool
    length: int | None
    will_close: bool

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (any case), or ``None``."""
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None


def parse_head(raw: bytes) -> ResponseHead:
    """Parse an answer's status line and headers (``raw`` ends before the blank line).

    Raises:
        MalformedAnswer: Not an HTTP/1.x status line, or a header without a colon.
    """
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise MalformedAnswer(f"the engine sent {lines[0][:80]!r} instead of an HTTP status line")
    headers: list[tuple[str, str]] = []
    chunked = False
    length: int | None = None
    will_close = version == "HTTP/1.0"
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise MalformedAnswer(f"the engine sent a malformed header line {line[:80]!r}")
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == "transfer-encoding":
            chunked = value.lower().endswith("chunked")
        elif lower == "content-length":
            try:
                length = int(value)
            except ValueError:
                raise MalformedAnswer(f"the engine sent Content-Length {value!r}") from None
        elif lower == "connection":
            tokens = {token.strip().lower() for token in value.split(",")}
            if "close" in tokens:
                will_close = True
            elif "keep-alive" in tokens:
                will_close = False
    if chunked:
        length = None
    return ResponseHead(int(code), reason, headers, chunked, length, will_close)


class RunnerConnection:
    """One connection to a runner's HTTP server, with the bytes read but not yet consumed.

    Args:
        sock: A connected, blocking socket whose reads and writes are bounded by kernel
            timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``: an expired ``recv`` raises
            ``BlockingIOError``).
        address: The runner's address (its socket path), the key of the pool.
        reused: Whether the connection has carried an answer before (a reused connection may
            have been closed by the engine in between: see :meth:`ConnectionPool.take`).
    """

    def __init__(self, sock: socket.socket, address: str, *, reused: bool = False) -> None:
        self.sock = sock
        self.address = address
        self.reused = reused
        self.buffered = b""
        self.idle_since = 0.0

    def send(self, data: bytes) -> None:
        """Send ``data`` whole.

        Raises:
            OSError: The runner went away or stopped reading.
        """
        self.sock.sendall(data)

    def read_head(self) -> ResponseHead:
        """Read and parse the answer's head; the body's first bytes stay in :attr:`buffered`.

        Raises:
            MalformedAnswer: The head is not HTTP/1.x or is too large.
            ConnectionResetError: The engine closed the connection before a whole head
                (``errno`` unset when it sent nothing at all, see :func:`nothing_received`).
            OSError: The socket failed (``BlockingIOError``: nothing came within the read
                timeout).
        """
        data = self.buffered
        self.buffered = b""
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                self.buffered = data[end + 4 :]
                return parse_head(data[:end])
            if len(data) > MAX_HEAD_BYTES:
                raise MalformedAnswer(f"the engine's answer head exceeds {MAX_HEAD_BYTES} bytes")
            more = self.sock.recv(READ_SIZE)
            if not more:
                if data:
                    raise ConnectionResetError("the engine closed the connection mid-head")
                raise ConnectionResetError(None, "the engine closed the connection")
            data += more

    def recv(self) -> bytes:
        """Return the next bytes of the body (buffered ones first); ``b""`` at end of stream."""
        if self.buffered:
            data, self.buffered = self.buffered, b""
            return data
        return self.sock.recv(READ_SIZE)

    def shutdown(self) -> None:
        """Shut the socket down now, from any thread (never raises): the engine sees the
        disconnect at once and stops generating."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()


def nothing_received(ex: BaseException) -> bool:
    """Whether ``ex`` (from :meth:`RunnerConnection.read_head` or ``send``) means the engine
    closed a kept-alive connection before reading the request: safe to send it again."""
    if isinstance(ex, BrokenPipeError):
        return True
    return isinstance(ex, ConnectionResetError) and ex.errno in (None, errno.ECONNRESET)


def connect(address: str, connect_timeout: float, io_timeout: float) -> socket.socket:
    """Return a socket connected to ``address`` (a Unix socket path, or ``host:port``).

    Raises:
        OSError: The runner cannot be reached (nothing is left open).
    """
    if address.startswith(("/", ".")):
        sock = connect_unix_socket(address, connect_timeout)
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host or "127.0.0.1", int(port)), connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        set_kernel_timeouts(sock, io_timeout)
    except BaseException:
        sock.close()
        raise
    return sock


class ConnectionPool:
    """Idle kept-alive connections per runner address (thread-safe).

    Args:
        idle_per_runner: Idle connections kept per address.
        idle_seconds: How long an idle connection is kept.
    """

    def __init__(
        self, *, idle_per_runner: int = IDLE_PER_RUNNER, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self.idle_per_runner = idle_per_runner
        self.idle_seconds = idle_seconds
        self._idle: dict[str, list[RunnerConnection]] = {}
        self._lock = threading.Lock()

    def take(self, address: str, connect_timeout: float, io_timeout: float) -> RunnerConnection:
        """Return an idle connection to ``address`` that is still open, else a new one.

        Args:
            address: The runner's socket path (or ``host:port``).
            connect_timeout: Seconds a new connection may take to open.
            io_timeout: Bound on each later read or write of a new connection.

        Raises:
            OSError: A new connection could not be opened.
        """
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(address)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if now - conn.idle_since < self.idle_seconds and _still_open(conn.sock):
                return conn
            conn.close()
        return self.fresh(address, connect_timeout, io_timeout)

    def fresh(self, address: str, connect_timeout: float, io_timeout: float) -> RunnerConnection:
        """Return a new connection to ``address`` (also the retry after a stale kept-alive one).

        Raises:
            OSError: The runner cannot be reached.
        """
        return RunnerConnection(connect(address, connect_timeout, io_timeout), address)

    def give_back(self, conn: RunnerConnection) -> None:
        """Keep ``conn`` for the next request to its runner (or close it when enough are idle).

        Only a connection whose answer was read to its end, with nothing left over, may be
        given back.
        """
        if conn.buffered:
            conn.close()
            return
        conn.reused = True
        conn.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(conn.address, [])
            # Drop the ones that have idled too long while we are here.
            expired = [c for c in idle if conn.idle_since - c.idle_since >= self.idle_seconds]
            if expired:
                idle[:] = [c for c in idle if c not in expired]
            keep = len(idle) < self.idle_per_runner
            if keep:
                idle.append(conn)
        for stale in expired:
            stale.close()
        if not keep:
            conn.close()

    def idle_count(self, address: str) -> int:
        """Return how many idle connections ``address`` has (for tests and metrics)."""
        with self._lock:
            return len(self._idle.get(address, ()))

    def close_all(self) -> None:
        """Close every idle connection (daemon shutdown)."""
        with self._lock:
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


def _still_open(sock: socket.socket) -> bool:
    """Whether the engine has not closed (or written to) an idle connection: one ``recv``
    that would block is the cheapest way to ask."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    # b"": closed; bytes: an answer nobody asked for. Neither connection can be used.
    del data
    return False

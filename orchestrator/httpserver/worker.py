"""The gunicorn worker of the daemon: reads request heads in one event loop, serves requests in
two lanes of threads, and puts a deadline on every wait for a client.

Why not gunicorn's gthread (what we ran before; measured on main, issue 12): a gthread thread is
taken from a request's first header byte, so 130 clients each sending one header line a second
froze ``GET /models`` for 15 s, and Debian 12's gunicorn 20.1 has no deadline at all while a
thread parses a head. And all threads are one pool, so 64 streams left none for management.

The model here, one worker process as before (it owns every runner):

* **The event loop** (the worker's main thread) accepts connections and reads each request head,
  and a small body (up to :data:`PREREAD_BODY_BYTES`), without blocking, under a deadline: the
  head within ``header_timeout`` of the accept (of its first byte on a kept-alive connection),
  a pre-read body within :data:`PREREAD_BODY_TIMEOUTS` header timeouts more; a client that sent
  part of a request is answered 408, one that sent nothing is closed. No thread waits for a slow
  or idle client. A kept-alive connection may idle ``keepalive`` seconds. At
  :data:`MAX_CONNECTIONS` the connection waiting longest for its head is closed to make room:
  churning idle clients cannot lock others out.
  TLS handshakes run in the loop too, under the same deadline.
* **Two lanes** (:mod:`~orchestrator.httpserver.lanes`): a complete request goes to the control
  lane (``control_threads`` threads, short management requests only) or the work lane
  (``max_concurrent_requests`` threads: inference, pulls, pushes, exports). Each lane's backlog
  is bounded; beyond it the loop answers 503 at once rather than queueing without end.
* **In a thread**, gunicorn's own parser reads the request again from the buffered bytes (all of
  its validation applies) and the WSGI app runs as under gthread. Large or chunked bodies are read
  in the thread with ``client_timeout`` per read; writes to a client that stops reading time out
  the same way (``SO_RCVTIMEO``/``SO_SNDTIMEO`` set at accept; TLS sockets: Python's timeout).
  A request gunicorn cannot parse gets a 4xx in the API's one JSON error shape.

Pipelined bytes left after a request go back to the loop with the connection. gunicorn's
:class:`~gunicorn.workers.base.Worker` API used here (``init_process``, ``notify``, ``alive``,
``sockets``, ``wsgi``, ``cfg``, ``log``) and its ``http`` parser and ``wsgi.create`` are the same
in 20.1 (Debian 12's package) and the releases on PyPI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import queue
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol, cast

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine, NoMoreData, ParseException
from gunicorn.workers import base

from orchestrator.api.error_handlers import error_body
from orchestrator.httpserver.head import HeadTooLarge, RequestHead, scan_head
from orchestrator.httpserver.lanes import Lane, lane_for
from orchestrator.unixhttp import set_kernel_timeouts

# A body up to this size is read by the loop before dispatch (JSON requests: chats, configure),
# so a thread never waits on a slow sender of a small body.
PREREAD_BODY_BYTES = 1024 * 1024
# ... and within this many header timeouts after the head (30 s by default).
PREREAD_BODY_TIMEOUTS = 3
# Connections held at once (waiting, kept alive and in threads together).
MAX_CONNECTIONS = 1024
# Requests a lane may hold beyond its threads before the loop answers 503.
BACKLOG_PER_THREAD = 4
# After a response, an unread request body up to this size is drained to keep the connection.
DRAIN_BYTES = 64 * 1024
_RECV_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class FrontDoorLimits:
    """Deadlines and sizes of the worker (settings ``header_timeout``, ``client_timeout``, ...).

    Attributes:
        header_timeout: Seconds from accept (or a kept-alive request's first byte) to a complete
            request head.
        client_timeout: Seconds one read or write on a client may wait in a thread.
        keepalive: Seconds a connection may idle between requests.
        control_threads: Threads of the control lane.
        work_threads: Threads of the work lane.
        tls_port: The TCP port whose connections speak TLS (0 = none).
    """

    header_timeout: float
    client_timeout: float
    keepalive: float
    control_threads: int
    work_threads: int
    tls_port: int = 0


class _Phase:
    HANDSHAKE = "handshake"
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    BUSY = "busy"


@dataclasses.dataclass(eq=False)
class _Connection:
    sock: socket.socket
    client: Any
    server: Any
    phase: str
    deadline: float
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    head: RequestHead | None = None
    needed: int = 0
    served: int = 0


class LaneWorker(base.Worker):  # type: ignore[misc]
    """gunicorn worker: a non-blocking front (heads, deadlines) and two lanes of threads."""

    def init_process(self) -> None:
        """Build the loop and the lanes, then let gunicorn load the app and call :meth:`run`."""
        self.limits: FrontDoorLimits = self.app.front_door_limits()
        self.tls_context: ssl.SSLContext | None = self.app.tls_context()
        self.poller = selectors.DefaultSelector()
        self.lanes = {
            Lane.CONTROL: ThreadPoolExecutor(self.limits.control_threads, "control"),
            Lane.WORK: ThreadPoolExecutor(self.limits.work_threads, "work"),
        }
        self.backlog_limits = {
            Lane.CONTROL: self.limits.control_threads * (1 + BACKLOG_PER_THREAD),
            Lane.WORK: self.limits.work_threads * (1 + BACKLOG_PER_THREAD),
        }
        self.in_lane = {lane: 0 for lane in Lane}
        self.connections: set[_Connection] = set()
        self.accepting = False
        # Threads hand finished connections back through this queue and wake the loop by a pipe.
        self.callbacks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        super().init_process()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until told to stop, then let in-flight requests finish (graceful timeout)."""
        self.poller.register(self.wake_read, selectors.EVENT_READ, self._run_callbacks)
        self._set_accepting(True)
        next_sweep = 0.0
        while self.alive:
            self._wait_and_dispatch(timeout=0.5)
            now = time.monotonic()
            if now >= next_sweep:
                # The heartbeat is a utime() system call: once per sweep, not per wake-up
                # (a small request wakes the loop three times; issue 18).
                self.notify()
                self._close_expired(now)
                next_sweep = now + 0.25
            if self.ppid != os.getppid():
                self.log.info("parent changed, shutting down: %s", self)
                break
            self._set_accepting(len(self.connections) < MAX_CONNECTIONS or self._evict_one())
        self._drain()

    def _drain(self) -> None:
        self._set_accepting(False)
        for conn in [c for c in self.connections if c.phase != _Phase.BUSY]:
            self._close(conn)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.connections and time.monotonic() < deadline:
            self.notify()
            self._wait_and_dispatch(timeout=0.5)
            for conn in [c for c in self.connections if c.phase != _Phase.BUSY]:
                self._close(conn)
        for pool in self.lanes.values():
            pool.shutdown(wait=False)
        self.poller.close()
        for listener in self.sockets:
            listener.close()

    def _wait_and_dispatch(self, timeout: float) -> None:
        try:
            events = self.poller.select(timeout)
        except OSError as ex:
            if ex.errno != errno.EINTR:
                raise
            return
        for key, _ in events:
            key.data(key.fileobj)

    def _run_callbacks(self, _fileobj: object) -> None:
        with contextlib.suppress(OSError):
            os.read(self.wake_read, 4096)
        while True:
            try:
                callback = self.callbacks.get_nowait()
            except queue.Empty:
                return
            callback()

    def _defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread (called from lane threads)."""
        self.callbacks.put(callback)
        with contextlib.suppress(OSError):  # a full pipe already wakes the loop
            os.write(self.wake_write, b"\0")

    def _set_accepting(self, enabled: bool) -> None:
        if enabled == self.accepting:
            return
        for listener in self.sockets:
            if enabled:
                listener.setblocking(False)
                self.poller.register(listener, selectors.EVENT_READ, self._accept)
            else:
                self.poller.unregister(listener)
        self.accepting = enabled

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for its head; whether one was closed."""
        waiting = [c for c in self.connections if c.phase in (_Phase.IDLE, _Phase.HEAD)]
        if not waiting:
            return False
        self._close(min(waiting, key=lambda c: c.deadline))
        return True

    def _close_expired(self, now: float) -> None:
        for conn in [c for c in self.connections if c.phase != _Phase.BUSY and c.deadline <= now]:
            if conn.phase in (_Phase.HEAD, _Phase.BODY):
                self._reply_and_close(conn, 408, "the request did not arrive in time; send it "
                                      "whole within the server's deadline")
            else:
                self._close(conn)

    # -- reading heads ----------------------------------------------------------------------

    def _accept(self, listener: Any) -> None:
        for _ in range(64):
            try:
                sock, client = listener.accept()
            except OSError as ex:
                if ex.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                    raise
                return
            if len(self.connections) >= MAX_CONNECTIONS and not self._evict_one():
                sock.close()
                return
            server = listener.getsockname()
            phase = _Phase.IDLE
            if self._is_tls(server):
                assert self.tls_context is not None
                sock = self.tls_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                phase = _Phase.HANDSHAKE
            else:
                # Kernel timeouts, not Python's: a socket with a Python timeout polls before
                # every recv and send, one more system call per streamed token (issue 18).
                # They bound the lane threads' blocking reads and writes; the loop's
                # non-blocking ones ignore them.
                set_kernel_timeouts(sock, self.limits.client_timeout)
            sock.setblocking(False)
            conn = _Connection(
                sock, client, server, phase, time.monotonic() + self.limits.header_timeout
            )
            self.connections.add(conn)
            self.poller.register(sock, selectors.EVENT_READ, self._readable(conn))

    def _is_tls(self, server: Any) -> bool:
        return (
            self.tls_context is not None
            and isinstance(server, tuple)
            and server[1] == self.limits.tls_port
        )

    def _readable(self, conn: _Connection) -> Callable[[object], None]:
        return lambda _fileobj: self._on_readable(conn)

    def _on_readable(self, conn: _Connection) -> None:
        if conn.phase == _Phase.HANDSHAKE and not self._handshake(conn):
            return
        while True:
            try:
                data = conn.sock.recv(_RECV_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            conn.buffer += data
            if not isinstance(conn.sock, ssl.SSLSocket) or not conn.sock.pending():
                break
        self._advance(conn)

    def _handshake(self, conn: _Connection) -> bool:
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (ssl.SSLError, OSError) as ex:
            self.log.debug("TLS handshake failed client=%s error=%s", conn.client, ex)
            self._close(conn)
            return False
        conn.phase = _Phase.IDLE
        return True

    def _advance(self, conn: _Connection) -> None:
        """Move a connection on with what it has buffered: wait for more, or dispatch."""
        if conn.phase == _Phase.IDLE and conn.buffer:
            conn.phase = _Phase.HEAD
            if conn.served:  # a fresh connection keeps the deadline it got at accept
                conn.deadline = time.monotonic() + self.limits.header_timeout
        if conn.phase == _Phase.HEAD:
            try:
                head = scan_head(conn.buffer)
            except HeadTooLarge as ex:
                self._reply_and_close(conn, 431, f"{ex}; send shorter headers")
                return
            if head is None:
                return
            conn.head = head
            body = head.body_within(PREREAD_BODY_BYTES)
            conn.needed = head.head_length + (body or 0)
            conn.phase = _Phase.BODY
            conn.deadline = time.monotonic() + PREREAD_BODY_TIMEOUTS * self.limits.header_timeout
        if conn.phase == _Phase.BODY and len(conn.buffer) >= conn.needed:
            self._dispatch(conn)

    # -- lanes ----------------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection) -> None:
        assert conn.head is not None
        lane = lane_for(conn.head.method, conn.head.path, conn.head.query)
        if self.in_lane[lane] >= self.backlog_limits[lane]:
            self._reply_and_close(
                conn, 503, f"the server is busy ({self.in_lane[lane]} {lane.value} requests in "
                "progress or waiting); retry shortly", retry_after=1
            )
            return
        self.poller.unregister(conn.sock)
        conn.phase = _Phase.BUSY
        self.in_lane[lane] += 1
        future = self.lanes[lane].submit(self._serve, conn)
        future.add_done_callback(lambda done: self._defer(lambda: self._finish(conn, lane, done)))

    def _finish(self, conn: _Connection, lane: Lane, future: Future[bool]) -> None:
        """Take a connection back from its thread: keep it alive or close it (loop thread)."""
        self.in_lane[lane] -= 1
        keep = not future.cancelled() and future.exception() is None and future.result()
        if not keep or not self.alive:
            self._close(conn)
            return
        try:
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.phase = _Phase.IDLE
        conn.head = None
        conn.served += 1
        conn.deadline = time.monotonic() + self.cfg.keepalive
        self.poller.register(conn.sock, selectors.EVENT_READ, self._readable(conn))
        if conn.buffer:
            self._advance(conn)

    def _close(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if conn.phase != _Phase.BUSY:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
        util.close(conn.sock)

    def _reply_and_close(
        self, conn: _Connection, status: int, message: str, retry_after: int | None = None
    ) -> None:
        """Send a short JSON error without blocking (best effort) and close (loop thread)."""
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.sock.send(_error_response(status, message, retry_after))
        self._close(conn)

    # -- in a lane thread ---------------------------------------------------------------------

    def _serve(self, conn: _Connection) -> bool:
        """Serve one request; return whether the connection may carry another."""
        req = None
        try:
            if isinstance(conn.sock, ssl.SSLSocket):
                conn.sock.settimeout(self.limits.client_timeout)
            else:
                conn.sock.setblocking(True)  # bounded by the kernel timeouts set at accept
            parser = http.RequestParser(self.cfg, conn.sock, conn.client)
            parser.unreader.unread(bytes(conn.buffer))
            conn.buffer = bytearray()
            req = next(parser)
            keep = self._handle_request(req, conn)
            return keep and self._keep_leftovers(req, parser, conn)
        except (NoMoreData, StopIteration) as ex:
            self.log.debug("connection ended: %s", ex)
        except ParseException as ex:
            self._write_error(conn, _parse_error_status(ex), str(ex))
        except ssl.SSLError as ex:
            self.log.debug("TLS error client=%s error=%s", conn.client, ex)
        except OSError as ex:
            # Resets, broken pipes and client timeouts (EAGAIN: a kernel timeout expired)
            # are the client's business.
            if ex.errno not in (None, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN):
                self.log.exception("socket error while serving a request")
        except Exception:
            self.log.exception("error while serving a request")
            if req is None:
                self._write_error(conn, 500, "internal error while reading the request")
        return False

    def _handle_request(self, req: Any, conn: _Connection) -> bool:
        """Run the WSGI app for ``req`` (as gunicorn's gthread does); whether to keep alive."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            if isinstance(conn.sock, ssl.SSLSocket):
                environ["wsgi.url_scheme"] = "https"
                environ["HTTPS"] = "on"
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            environ["wsgi.input"] = _ClosingInput(environ["wsgi.input"], resp.force_close)
            respiter = self.wsgi(environ, resp.start_response)
            try:
                # A passed-through body carries its own last chunk: no resp.close() then.
                if not _pass_through(resp, respiter, conn.sock):
                    for item in respiter:
                        resp.write(item)
                    resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except Exception:
            if resp is not None and resp.headers_sent:
                # Half a response is out: the connection cannot carry an error any more.
                self.log.exception("error while streaming a response")
                return False
            raise
        finally:
            with contextlib.suppress(Exception):
                self.cfg.post_request(self, req, environ, resp)

    def _keep_leftovers(self, req: Any, parser: Any, conn: _Connection) -> bool:
        """Drain what the app left of the body; keep pipelined bytes for the next request.

        The drain never waits: the answer is out, so only bytes already here are read, and a
        body still on its way closes the connection. (A client that stalled its body until the
        app answered 408 would otherwise hold the thread for another ``client_timeout``.)
        """
        drained = 0
        if req.body is not None:
            conn.sock.setblocking(False)
            try:
                while chunk := req.body.read(8192):
                    drained += len(chunk)
                    if drained > DRAIN_BYTES:
                        return False
            except (BlockingIOError, ssl.SSLWantReadError):
                return False
        unreader = parser.unreader
        take = getattr(unreader, "take_buffered", None)
        if callable(take):
            conn.buffer = bytearray(take())
        else:  # gunicorn 20.1: the unread bytes are the whole buffer
            conn.buffer = bytearray(unreader.buf.getvalue())
            unreader.buf = type(unreader.buf)()
        return True

    def _write_error(self, conn: _Connection, status: int, message: str) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.sock.sendall(_error_response(status, message))


class _ClosingInput:
    """``wsgi.input`` that closes the connection after the answer if reading the body failed.

    Why: after a failed read (the client stalled past ``client_timeout``, broke the chunking or
    hung up) the rest of the body may still arrive, and gunicorn's reader then reports the body
    as ended; keeping the connection would read those bytes as the next request.
    """

    def __init__(self, body: Any, force_close: Callable[[], None]) -> None:
        self._body = body
        self._force_close = force_close

    def _guarded(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except Exception:
            self._force_close()
            raise

    def read(self, *args: Any) -> bytes:
        return cast(bytes, self._guarded(self._body.read, *args))

    def readline(self, *args: Any) -> bytes:
        return cast(bytes, self._guarded(self._body.readline, *args))

    def readlines(self, *args: Any) -> list[bytes]:
        return cast("list[bytes]", self._guarded(self._body.readlines, *args))

    def __iter__(self) -> _ClosingInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class PassThrough(Protocol):
    """A response body whose bytes, framing included, can go to the client as they come
    (:class:`orchestrator.proxy.ProxyStream`)."""

    def can_pass_through(self, chunked: bool, length: int | None) -> bool:
        """Whether the body's own framing is what the client's answer needs."""

    def pass_through(self, head: bytes, send: Callable[[bytes], object]) -> bool:
        """Send ``head`` and the body; whether the answer ended properly."""


def _pass_through(resp: Any, respiter: object, sock: socket.socket) -> bool:
    """Send a proxied body as the engine framed it, if it can be; whether it was.

    Why: gunicorn's ``write`` frames every item as a chunk, so relaying llama-server meant
    de-chunking each event and chunking it again, two ``send`` calls for the first. Here the
    head goes with the first bytes and each ``recv`` from the engine is one ``send``.
    """
    can = getattr(respiter, "can_pass_through", None)
    if can is None or resp.headers_sent or not can(resp.chunked, resp.response_length):
        return False
    body = cast(PassThrough, respiter)
    lines = resp.default_headers()
    lines.extend(f"{name}: {value}\r\n" for name, value in resp.headers)
    lines.append("\r\n")
    resp.headers_sent = True
    ended = body.pass_through("".join(lines).encode("latin-1"), sock.sendall)
    if not ended:
        resp.force_close()
    return True


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_ERROR_TYPES = {
    408: ("invalid_request_error", "request_timeout"),
    414: ("invalid_request_error", "uri_too_long"),
    431: ("invalid_request_error", "request_header_fields_too_large"),
    500: ("server_error", "internal_error"),
    503: ("unavailable_error", "server_busy"),
}


def _parse_error_status(ex: ParseException) -> int:
    if isinstance(ex, LimitRequestLine):
        return 414
    if isinstance(ex, LimitRequestHeaders):
        return 431
    return 400


def _error_response(status: int, message: str, retry_after: int | None = None) -> bytes:
    """Return a whole HTTP/1.1 response carrying the API's one JSON error shape."""
    type_, code = _ERROR_TYPES.get(status, ("invalid_request_error", "malformed_request"))
    if status == 400:
        message = f"malformed HTTP request: {message}; check the request line and headers"
    body = error_body(message, type_, code)
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body

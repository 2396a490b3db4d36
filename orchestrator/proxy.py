"""Forward one request to a runner's llama-server and stream the answer back.

:func:`forward` sends the client's body bytes unchanged (path rewritten to ``/v1/...``,
``Host: localhost``, explicit ``Content-Length``) on a kept-alive connection to the runner
(:mod:`orchestrator.runner_connections`), copies the status and the end-to-end headers
(hop-by-hop headers and any ``Access-Control-*`` header of the engine are dropped) and sets a
:class:`ProxyStream` as ``resp.stream``. The stream owns the lease from then on: it is released
when the last byte is sent *or* when the client goes away; then the upstream connection is shut
down at once, so llama-server stops generating. An answer read to its end leaves its connection
in the pool for the next request.

This is the hot path. The front door (:mod:`orchestrator.httpserver.worker`) asks the stream to
:meth:`~ProxyStream.pass_through`: per ``recv`` from the engine one ``send`` to the client, the
engine's chunked framing kept as it is. A read that is exactly one whole chunk goes out as it is;
others after a walk over the chunk-size lines (:func:`~orchestrator.chunked.scan_chunks`). No
logging, no clock reads, no locks per chunk. Iterating the stream (payloads, de-chunked) remains
for the code that needs them.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from orchestrator import unixhttp
from orchestrator.api.faces import Face, error_document
from orchestrator.chunked import MAX_HELD_BYTES, IncompleteBody, dechunker, scan_chunks
from orchestrator.errors import (
    EngineRejectedError,
    InvalidRequestError,
    OrchestratorError,
    RunnerCrashedError,
    RunnerTimeoutError,
    ServiceUnavailableError,
)
from orchestrator.runner_connections import (
    ConnectionPool,
    ResponseHead,
    RunnerConnection,
    nothing_received,
)

if TYPE_CHECKING:
    import falcon

    from orchestrator.api.request_log import Recording

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
# NOTE(api): a bound on silence, not on the whole answer: a long prompt on a CPU can take
# minutes before the first token, so the limit is generous.
READ_TIMEOUT_SECONDS = 600.0
READ_SIZE = 65536

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers we never pass on: hop-by-hop, the ones we set ourselves, and ones that
# would change the engine's answer (compression would defeat chunk-by-chunk streaming).
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "expect",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
}
# gunicorn writes its own Date and Server; two of each would confuse clients.
_DROP_RESPONSE = HOP_BY_HOP | {"date", "server"}
_BODILESS = frozenset({204, 304})
# An engine 500 small enough to read whole, to tell a request it could not parse from a failure.
MAX_ENGINE_ERROR_BYTES = 64 * 1024
# llama-server's wording when it cannot read a field of the request (it answers 500 for these).
_ENGINE_PARSE_FAILURE = re.compile(r"Failed to parse (?P<field>[A-Za-z_]+)")
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")


class Abortable(Protocol):
    """A long answer that shutdown must cut (:func:`abort_streams`)."""

    def abort(self) -> None:
        """End the answer soon, from another thread."""


# Streams in flight, so shutdown can cut them before it stops the runners (llama-server
# finishes a generation before honouring SIGTERM; a closed connection cancels it at once).
# The request recorder's follow streams register here too, to end at shutdown.
_active: set[Abortable] = set()
_active_lock = threading.Lock()
# Kept-alive connections to the runners, shared by every request of this worker.
_pool = ConnectionPool()


def track_stream(stream: Abortable) -> None:
    """Have :func:`abort_streams` cut ``stream`` until :func:`untrack_stream`."""
    with _active_lock:
        _active.add(stream)


def untrack_stream(stream: Abortable) -> None:
    """Forget ``stream`` (idempotent)."""
    with _active_lock:
        _active.discard(stream)


class LeaseLike(Protocol):
    """What :func:`forward` needs of a scheduler lease."""

    socket_path: str

    def release(self) -> None:
        """Give the runner back."""

    def report_crash(self) -> None:
        """Tell the scheduler the connection died."""


class TimerLike(Protocol):
    """Request-side metrics hooks (see :mod:`orchestrator.api.request_stats`)."""

    status: int

    def first_byte(self) -> None:
        """Record time to first byte."""

    def finish(self) -> None:
        """Record the end of the request."""


def open_runner_connection(address: str) -> http.client.HTTPConnection:
    """Return an unconnected connection to a runner with the proxy's timeouts.

    The connect is bounded by :data:`CONNECT_TIMEOUT_SECONDS`; each later read or write (a bound
    on silence) by :data:`READ_TIMEOUT_SECONDS`, through kernel socket options on a Unix socket
    (see :class:`~orchestrator.unixhttp.UnixHTTPConnection`).

    Args:
        address: A Unix socket path, or ``host:port`` for engines that cannot bind a socket.
    """
    return unixhttp.open_connection(
        address, READ_TIMEOUT_SECONDS, connect_timeout=CONNECT_TIMEOUT_SECONDS
    )


def timed_out(ex: BaseException, since: float | None) -> bool:
    """Return whether a failed read was a timeout.

    A raw ``recv`` reports SO_RCVTIMEO as ``BlockingIOError``; http.client's reader turns it
    into a short read, recognised by the clock when ``since`` (when the read began) is given.
    """
    if isinstance(ex, (TimeoutError, BlockingIOError)):
        return True
    return since is not None and time.monotonic() - since >= READ_TIMEOUT_SECONDS - 1.0


def _request_headers(req: falcon.Request) -> list[tuple[str, str]]:
    connection_tokens = {
        token.strip().lower() for token in (req.get_header("Connection") or "").split(",")
    }
    return [
        (name, value)
        for name, value in req.headers.items()
        if name.lower() not in _DROP_REQUEST and name.lower() not in connection_tokens
    ]


def _response_headers(head: ResponseHead) -> list[tuple[str, str]]:
    connection_tokens = {
        token.strip().lower() for token in (head.header("Connection") or "").split(",")
    }
    kept = []
    for name, value in head.headers:
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower in connection_tokens:
            continue
        if lower.startswith("access-control-"):
            continue
        kept.append((name, value))
    return kept


def _request_bytes(method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """Return a whole HTTP/1.1 request (gunicorn already refused header values with CR or LF)."""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(lines).encode("latin-1") + body


def exchange(address: str, request: bytes) -> tuple[RunnerConnection, ResponseHead]:
    """Send ``request`` to the runner at ``address`` and read the answer's head.

    A kept-alive connection the engine closed while it idled fails on first use; then, and
    only when the engine cannot have read the request, it is sent once more on a new one.

    Raises:
        OSError: The runner could not be reached, died or sent no head in time
            (``BlockingIOError``/``TimeoutError``), or sent no HTTP
            (:class:`~orchestrator.runner_connections.MalformedAnswer`).
    """
    conn = _pool.take(address, CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
    try:
        conn.send(request)
        return conn, conn.read_head()
    except OSError as ex:
        conn.close()
        if not (conn.reused and nothing_received(ex)):
            raise
    except BaseException:
        conn.close()
        raise
    conn = _pool.fresh(address, CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS)
    try:
        conn.send(request)
        return conn, conn.read_head()
    except BaseException:
        conn.close()
        raise


def read_body(conn: RunnerConnection, head: ResponseHead, limit: int) -> bytes:
    """Read an answer's body whole, or its first ``limit`` bytes (the connection is then spent).

    Raises:
        OSError: The body ended early or the socket failed.
    """
    if head.chunked:
        read = dechunker(conn)
        parts, size = [], 0
        while size < limit and (data := read()):
            parts.append(data)
            size += len(data)
        return b"".join(parts)[:limit]
    want = limit if head.length is None else min(head.length, limit)
    data = b""
    while len(data) < want:
        more = conn.recv()
        if not more:
            if head.length is None:
                break
            raise IncompleteBody("the engine's body ended before its Content-Length")
        data += more
    conn.buffered = data[want:]
    return data[:want]


def shutdown_connection(conn: http.client.HTTPConnection) -> None:
    """Shut an :mod:`http.client` engine connection's socket down now, from any thread (never
    raises): llama-server sees the disconnect at once and stops generating."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def error_event(error: OrchestratorError, face: Face = Face.OPENAI) -> bytes:
    """Return one SSE event carrying ``error`` in the shape the face's client reads.

    OpenAI: a ``data:`` event with the error object (the openai client raises ``APIError`` on
    it). Anthropic: an ``event: error`` whose data is ``{"type": "error", "error": {...}}``,
    what the anthropic SDK's stream raises on.
    """
    document = error_document(
        face, error.status, error.message, error.type, error.code, error.param
    )
    data = json.dumps(document).encode()
    if face is Face.ANTHROPIC:
        return b"event: error\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


class ProxyStream:
    """The response body of one proxied request; owns the connection and the lease.

    Two ways to send it: iterating yields the engine's payload bytes as they arrive (the
    Anthropic face, a client of HTTP/1.0, Falcon's test client); the front door instead calls
    :meth:`pass_through` when the engine's framing can go to the client as it is.
    :meth:`close` (called after the last chunk or a failed write) releases the lease and ends
    the metrics timer; the connection goes back to the pool when the answer was read to its
    end, else it is shut down at once so that llama-server stops generating. It is idempotent
    and also runs when the body ends by itself.

    Args:
        conn: The connection the answer came on.
        head: The engine's answer head.
        lease: The runner lease to release at the end.
        timer: Request metrics, or ``None``.
        is_sse: Whether the body is ``text/event-stream`` (enables event-aligned errors).
        model: Model name for log lines and error messages.
        face: The API face, for the shape of an error event.
        recording: The request recorder's handle, or ``None`` (then nothing is recorded and
            nothing is added per chunk).
    """

    def __init__(
        self,
        conn: RunnerConnection,
        head: ResponseHead,
        lease: LeaseLike,
        timer: TimerLike | None,
        *,
        is_sse: bool,
        model: str,
        face: Face = Face.OPENAI,
        recording: Recording | None = None,
    ) -> None:
        self._face = face
        self._recording = recording
        if recording is not None:
            recording.respond(head.status, is_sse)
        self._conn = conn
        self._head = head
        self._lease = lease
        self._timer = timer
        self._is_sse = is_sse
        self._model = model
        self._gen: Iterator[bytes] | None = None
        self._finished = False
        self._complete = False
        self._aborted = False
        self._started = time.monotonic()
        with _active_lock:
            _active.add(self)

    def __iter__(self) -> Iterator[bytes]:
        read = dechunker(self._conn) if self._head.chunked else self._plain_reader()
        if self._recording is not None:
            read = self._recording.tap(read)
        self._gen = self._relay_events(read) if self._is_sse else self._relay_bytes(read)
        return self._gen

    def can_pass_through(self, chunked: bool, length: int | None) -> bool:
        """Whether the engine's body bytes, framing included, are what the client must get.

        Args:
            chunked: The client's answer is chunked.
            length: The client's answer's ``Content-Length``, if it has one.
        """
        if self._gen is not None or self._finished:
            return False
        if chunked:
            return self._head.chunked
        return length is not None and not self._head.chunked and self._head.length == length

    def pass_through(self, head: bytes, send: Callable[[bytes], object]) -> bool:
        """Send ``head`` (the client's answer head) and the engine's body as it comes.

        One ``send`` per ``recv``, the head with the first bytes. Chunks are passed on whole
        and, for an event stream, through the end of the last complete event; after a failure
        an event stream gets one error event and its last chunk.

        Returns:
            Whether the client's answer ended properly (its connection may carry another).

        Raises:
            OSError: Sending to the client failed (the caller closes; :meth:`close` follows).
        """
        try:
            if self._head.chunked:
                return self._pass_chunks(head, send)
            return self._pass_length(head, send)
        finally:
            self._finish()

    def _pass_chunks(self, head: bytes, send: Callable[[bytes], object]) -> bool:
        # The first read takes what came with the engine's head; later ones read the socket
        # itself (a C call: no Python frame per token).
        recv = functools.partial(self._conn.sock.recv, READ_SIZE)
        keep = self._recording.keep_framed if self._recording is not None else None
        events = self._is_sse
        # How a whole chunk that may go out at once ends: for an event stream, with an event.
        whole_end = b"\n\n\r\n" if events else b"\r\n"
        data = b""
        pos = 0
        read = self._first_read
        while True:
            # Only the engine's side is caught here: a failed send to the client propagates.
            try:
                chunk = read()
                read = recv
                if not chunk:
                    raise IncompleteBody("the engine's body ended before its last chunk")
                if keep is not None:
                    keep(chunk)
                data = data + chunk if data else chunk
                # PERF: llama-server writes one event per chunk, so a read is usually exactly
                # one whole chunk: it goes out without scan_chunks' walk. With the direct socket
                # read above, 14 % less worker CPU per streamed token (188 -> 162 us median,
                # 12 streams each, interleaved). Its size line must read exactly as the
                # payload's length in hex; anything else walks.
                size = len(data) - data.find(b"\r\n") - 4
                if size > 0 and data.endswith(whole_end) and data.startswith(b"%x\r\n" % size):
                    cut = pos = len(data)
                    ended = False
                else:
                    cut, pos, ended = scan_chunks(data, pos, events, None)
            except OSError as ex:
                return self._pass_failure(ex, head, send)
            if cut:
                out = data if cut == len(data) else data[:cut]
                data = data[cut:]
                pos -= cut
                if head:
                    out = head + out
                    head = b""
                send(out)
            if ended:
                self._conn.buffered = data
                self._complete = True
                return True

    def _pass_length(self, head: bytes, send: Callable[[bytes], object]) -> bool:
        remaining = self._head.length or 0
        recv = self._conn.recv
        keep = self._recording.keep_payload if self._recording is not None else None
        read = self._first_read
        while remaining > 0:
            try:
                data = read()
                read = recv
                if not data:
                    raise IncompleteBody("the engine's body ended before its Content-Length")
            except OSError as ex:
                return self._pass_failure(ex, head, send)
            if len(data) > remaining:
                self._conn.buffered = data[remaining:]
                data = data[:remaining]
            remaining -= len(data)
            if keep is not None:
                keep(data)
            if head:
                data = head + data
                head = b""
            send(data)
        if head:
            send(head)
        self._complete = True
        return True

    def _first_read(self) -> bytes:
        """Read the body's first bytes and record the time to first byte."""
        data = self._conn.recv()
        if self._timer is not None:
            self._timer.first_byte()
        return data

    def _pass_failure(self, ex: OSError, head: bytes, send: Callable[[bytes], object]) -> bool:
        """Answer the client after the engine failed mid-body; whether its answer ended."""
        log.warning("proxy stream failed model=%s error=%r", self._model, ex)
        error = self._failure(ex)
        if not (self._is_sse and self._head.chunked):
            # A JSON body cannot carry an error once it has started: the cut is the signal.
            if head:
                send(head)
            return False
        event = error_event(error, self._face)
        send(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        return True

    def _plain_reader(self) -> Callable[[], bytes]:
        """Return ``read()`` for a body with a Content-Length or ended by the close."""
        conn = self._conn
        length = self._head.length
        remaining = length

        def read() -> bytes:
            nonlocal remaining
            if remaining is not None and remaining <= 0:
                return b""
            data = conn.recv()
            if remaining is None:
                return data
            if not data:
                raise IncompleteBody("the engine's body ended before its Content-Length")
            if len(data) > remaining:
                conn.buffered = data[remaining:]
                data = data[:remaining]
            remaining -= len(data)
            return data

        return read

    def close(self) -> None:
        """End the stream: release the lease, keep or cut the connection (idempotent)."""
        gen = self._gen
        if gen is not None:
            self._gen = None
            # Runs the generator's finally block when it is suspended mid-stream.
            gen.close()  # type: ignore[attr-defined]
        self._finish()

    def abort(self) -> None:
        """Cut the upstream connection from another thread; the client gets an error event."""
        self._aborted = True
        self._conn.shutdown()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        with _active_lock:
            _active.discard(self)
        if self._complete and not self._aborted and not self._head.will_close:
            _pool.give_back(self._conn)
        else:
            self._conn.shutdown()
            self._conn.close()
        try:
            self._lease.release()
        finally:
            if self._timer is not None:
                self._timer.finish()
            if self._recording is not None:
                self._recording.finish()

    def _failure(self, ex: BaseException) -> OrchestratorError:
        error = self._failure_error(ex)
        if self._recording is not None:
            self._recording.fail_with(error)
        return error

    def _failure_error(self, ex: BaseException) -> OrchestratorError:
        if self._aborted:
            return ServiceUnavailableError(
                "the daemon is shutting down and ended this answer; retry the request after it "
                "restarts"
            )
        if timed_out(ex, None):
            return RunnerTimeoutError(
                f"the runner of model {self._model!r} sent nothing for "
                f"{READ_TIMEOUT_SECONDS:.0f}s; retry the request"
            )
        self._lease.report_crash()
        return RunnerCrashedError(
            f"the runner of model {self._model!r} stopped in the middle of the answer; "
            "retry the request (the runner is restarted on demand)"
        )

    def _relay_bytes(self, read: Callable[[], bytes]) -> Iterator[bytes]:
        try:
            chunk = read()
            if self._timer is not None:
                self._timer.first_byte()
            while chunk:
                yield chunk
                chunk = read()
            self._complete = True
        except OSError as ex:
            # A JSON body cannot carry an error once it has started: the cut is the signal.
            log.warning("proxy stream failed model=%s error=%r", self._model, ex)
            self._failure(ex)
        finally:
            self._finish()

    def _relay_events(self, read: Callable[[], bytes]) -> Iterator[bytes]:
        held = b""
        try:
            chunk = read()
            if self._timer is not None:
                self._timer.first_byte()
            while chunk:
                # NOTE(api): pass on whole events only, so an error event after a crash is never
                # glued to half an event. The common case (one event per chunk) costs one
                # endswith().
                if held:
                    chunk = held + chunk
                    held = b""
                if not chunk.endswith(_EVENT_ENDS) and len(chunk) < MAX_HELD_BYTES:
                    cut = _last_event_end(chunk)
                    if cut == 0:
                        held = chunk
                        chunk = read()
                        continue
                    held = chunk[cut:]
                    chunk = chunk[:cut]
                yield chunk
                chunk = read()
            if held:
                yield held
            self._complete = True
        except OSError as ex:
            log.warning("proxy stream failed model=%s error=%r", self._model, ex)
            yield error_event(self._failure(ex), self._face)
        finally:
            self._finish()


def engine_rejection(body: bytes) -> InvalidRequestError | None:
    """Return the 400 for an engine 500 that says it could not parse the request, else ``None``.

    llama-server answers 500 when a field of an OpenAI request has the wrong shape (``messages``
    with a number for ``content``, ``tools`` that is not a list, a tool call without a
    ``type``): ``{"error": {"code": 500, "message": "Failed to parse messages: ..."}}``. That is
    the client's mistake, so the client gets our 400 naming the field, with the engine's words.
    """
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(message, str):
        return None
    match = _ENGINE_PARSE_FAILURE.match(message)
    if match is None:
        return None
    field = match.group("field")
    return InvalidRequestError(
        f"the engine could not read {field!r} in the request ({message.strip()}); send it in "
        "the OpenAI format",
        param=field,
    )


def engine_error(model: str, status: int, body: bytes) -> OrchestratorError:
    """Return the error to raise for an engine answer with an error status (``body``: its
    first bytes), for faces that render errors in their own shape."""
    rejection = engine_rejection(body) if status == 500 else None
    if rejection is not None:
        return rejection
    message = ""
    type_ = None
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or "")
            type_ = error.get("type") if isinstance(error.get("type"), str) else None
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        pass
    if not message:
        text = body.decode("utf-8", "replace").strip()[:500]
        message = f"the engine answered HTTP {status}" + (f": {text}" if text else "")
    if status == 500 and "not supported" in message:
        # llama-server's 500 for an image sent to a model without a projector ("image input is
        # not supported - hint: ... mmproj"): a request the model cannot serve, so a 400.
        return InvalidRequestError(f"model {model!r}: {message}", details={"status": status})
    return EngineRejectedError(
        f"model {model!r}: {message}", status=status, type_=type_, details={"status": status}
    )


def _finish_engine_error(
    req: falcon.Request,
    resp: falcon.Response,
    conn: RunnerConnection,
    head: ResponseHead,
    lease: LeaseLike,
    timer: TimerLike | None,
    model: str,
) -> None:
    """Answer an engine 500 (read whole): our 400 for a request it could not parse, else as is.

    Raises:
        InvalidRequestError: The engine could not parse the request.
        RunnerCrashedError: The runner died while sending its error.
    """
    try:
        body = read_body(conn, head, MAX_ENGINE_ERROR_BYTES)
    except OSError as ex:
        if timer is not None:
            timer.status = RunnerCrashedError.status
        lease.report_crash()
        raise RunnerCrashedError(
            f"the runner of model {model!r} stopped while answering; retry the request",
            details={"error": repr(ex)},
        ) from ex
    finally:
        conn.close()
        lease.release()
        if timer is not None:
            timer.finish()
    rejection = engine_rejection(body)
    if rejection is not None:
        if timer is not None:
            timer.status = rejection.status
        raise rejection
    resp.status = head.status
    headers = _response_headers(head)
    resp.set_headers([(name, value) for name, value in headers if name.lower() != "content-length"])
    resp.data = body if req.method != "HEAD" else None


def _raise_engine_error(
    conn: RunnerConnection,
    head: ResponseHead,
    lease: LeaseLike,
    timer: TimerLike | None,
    model: str,
) -> None:
    """Read an engine error answer (64 KiB at most) and raise it for the face's renderer."""
    try:
        body = read_body(conn, head, MAX_ENGINE_ERROR_BYTES)
    except OSError:
        body = b""
    finally:
        conn.close()
        lease.release()
        if timer is not None:
            timer.finish()
    raise engine_error(model, head.status, body)


def abort_streams() -> int:
    """Cut every stream in flight (daemon shutdown); return how many there were."""
    with _active_lock:
        streams = list(_active)
    for stream in streams:
        stream.abort()
    return len(streams)


def close_idle_connections() -> None:
    """Close the kept-alive connections to runners (daemon shutdown, runner replaced)."""
    _pool.close_all()


def _last_event_end(data: bytes) -> int:
    """Return the offset just past the last SSE event terminator in ``data``, 0 if none."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def forward(
    req: falcon.Request,
    resp: falcon.Response,
    lease: LeaseLike,
    *,
    upstream_path: str,
    body: bytes,
    model: str,
    timer: TimerLike | None = None,
    face: Face = Face.OPENAI,
    recording: Recording | None = None,
) -> None:
    """Send ``body`` to the runner of ``lease`` and set up ``resp`` to stream its answer.

    Takes ownership of ``lease``: on success the stream releases it, on failure this function
    does before raising.

    Args:
        req: The client's request (method and end-to-end headers are passed on).
        resp: Receives status, headers and a :class:`ProxyStream`.
        lease: The runner to talk to.
        upstream_path: Path on the engine (``/v1/chat/completions``).
        body: The client's body bytes, forwarded unchanged.
        model: Model name for messages.
        timer: Request metrics hooks.
        face: The API face: on any face but OpenAI an engine error status is raised as
            :class:`EngineRejectedError` (rendered in the face's shape) instead of passed on.
        recording: The request recorder's handle for a streamed answer (the caller records
            what this function raises, and an answer it sets as ``resp.data``).

    Raises:
        RunnerCrashedError: The runner could not be reached or died before answering.
        RunnerTimeoutError: The runner accepted the request but sent no headers in time.
    """
    request = _request_bytes(req.method, upstream_path, _request_headers(req), body)
    sent = time.monotonic()
    try:
        conn, head = exchange(lease.socket_path, request)
    except OSError as ex:
        if timer is not None:
            timer.status = 504 if timed_out(ex, sent) else 502
        try:
            if timed_out(ex, sent):
                raise RunnerTimeoutError(
                    f"the runner of model {model!r} did not answer within "
                    f"{READ_TIMEOUT_SECONDS:.0f}s; retry the request",
                    details={"error": repr(ex)},
                ) from ex
            lease.report_crash()
            raise RunnerCrashedError(
                f"the runner of model {model!r} could not be reached or died before answering; "
                "retry the request (the runner is restarted on demand)",
                details={"error": repr(ex), "socket": lease.socket_path},
            ) from ex
        finally:
            lease.release()
            if timer is not None:
                timer.finish()
    except BaseException:
        lease.release()
        if timer is not None:
            timer.finish()
        raise

    if timer is not None:
        timer.status = head.status
    if head.status >= 400 and face is not Face.OPENAI:
        _raise_engine_error(conn, head, lease, timer, model)
    if head.status == 500 and head.length is not None and head.length <= MAX_ENGINE_ERROR_BYTES:
        _finish_engine_error(req, resp, conn, head, lease, timer, model)
        return
    resp.status = head.status
    content_type = head.header("Content-Type") or ""
    resp.set_headers(_response_headers(head))
    resp.set_header("X-Accel-Buffering", "no")
    stream = ProxyStream(
        conn,
        head,
        lease,
        timer,
        is_sse=content_type.startswith("text/event-stream"),
        model=model,
        face=face,
        recording=recording,
    )
    if req.method == "HEAD" or head.status in _BODILESS:
        # Falcon sends no body for these and would never iterate (or close) the stream.
        stream.close()
        return
    resp.stream = stream

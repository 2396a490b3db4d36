"""Forward one request to a runner's llama-server and stream the answer back.

:func:`forward` sends the client's body bytes unchanged (path rewritten to ``/v1/...``,
``Host: localhost``, explicit ``Content-Length``) over the runner's Unix socket with
:mod:`http.client`, copies the status and the end-to-end headers (hop-by-hop headers and any
``Access-Control-*`` header of the engine are dropped) and sets a :class:`ProxyStream` as
``resp.stream``. The stream owns the lease from then on: it is released when the last byte is
sent *or* when the client goes away (gunicorn closes the iterable after a failed write); the
upstream connection is shut down at once, so llama-server stops generating.

This is the hot path (measured on 2 cores: a thread-per-stream relay costs about 120 ms of CPU
per 1000 tokens, README's Performance section): per token one ``recv`` (no ``poll``: see the
``io_timeout`` of :class:`~orchestrator.unixhttp.UnixHTTPConnection`), a few slices in
:func:`dechunker`, one ``yield``; no logging, no clock reads, no locks per chunk.
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
from orchestrator.errors import (
    EngineRejectedError,
    InvalidRequestError,
    OrchestratorError,
    RunnerCrashedError,
    RunnerTimeoutError,
    ServiceUnavailableError,
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
# An SSE event bigger than this without a blank line is passed on anyway.
MAX_HELD_BYTES = 1024 * 1024

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


def _response_headers(upstream: http.client.HTTPResponse) -> list[tuple[str, str]]:
    connection_tokens = {
        token.strip().lower() for token in (upstream.getheader("Connection") or "").split(",")
    }
    kept = []
    for name, value in upstream.getheaders():
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower in connection_tokens:
            continue
        if lower.startswith("access-control-"):
            continue
        kept.append((name, value))
    return kept


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


def dechunker(upstream: http.client.HTTPResponse, sock: socket.socket) -> Callable[[], bytes]:
    """Return ``read()`` giving the payload of the next complete chunks; ``b""`` at the end.

    The hot path of streaming: llama-server sends one SSE event per chunk, so each call is
    usually one ``recv`` and a few slices, where :meth:`http.client.HTTPResponse.read1` walks
    half a dozen Python frames per chunk. The first call takes what http.client already
    buffered after the headers; later ones read the socket directly.

    Raises:
        http.client.IncompleteRead: The body ended before its last chunk.
        OSError: The socket failed (``BlockingIOError`` when SO_RCVTIMEO expired).
    """
    fp_read1 = upstream.fp.read1  # type: ignore[union-attr]
    recv = sock.recv
    pending = b""
    fresh = True
    done = False

    def read() -> bytes:
        nonlocal pending, fresh, done
        if done:
            return b""
        out: list[bytes] = []
        while True:
            line_end = pending.find(b"\r\n")
            if line_end >= 0:
                try:
                    size = int(pending[:line_end].partition(b";")[0], 16)
                except ValueError:
                    raise http.client.IncompleteRead(pending) from None
                if size == 0:
                    done = True
                    return b"".join(out)
                end = line_end + 2 + size
                if len(pending) >= end + 2:
                    out.append(pending[line_end + 2 : end])
                    pending = pending[end + 2 :]
                    continue
            if out:
                return out[0] if len(out) == 1 else b"".join(out)
            if fresh:
                fresh = False
                data = fp_read1(READ_SIZE)
            else:
                data = recv(READ_SIZE)
            if not data:
                raise http.client.IncompleteRead(pending)
            pending = pending + data if pending else data

    return read


def shutdown_connection(conn: http.client.HTTPConnection) -> None:
    """Shut an engine connection's socket down now, from any thread (never raises).

    ``shutdown()`` takes effect even while a response still holds a reference to the socket's
    file, so llama-server sees the disconnect at once and stops generating.
    """
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ProxyStream:
    """The response body of one proxied request; owns the connection and the lease.

    Iterating yields the engine's bytes as they arrive. :meth:`close` (called by gunicorn after
    the last chunk or a failed write) shuts the upstream socket, releases the lease and ends the
    metrics timer; it is idempotent and also runs when iteration ends by itself.

    Args:
        conn: The connection the response came on.
        upstream: The engine's response, headers already read.
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
        conn: http.client.HTTPConnection,
        upstream: http.client.HTTPResponse,
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
            recording.respond(upstream.status, is_sse)
        self._conn = conn
        self._upstream = upstream
        self._lease = lease
        self._timer = timer
        self._is_sse = is_sse
        self._model = model
        self._gen: Iterator[bytes] | None = None
        self._finished = False
        self._aborted = False
        self._started = time.monotonic()
        with _active_lock:
            _active.add(self)

    def __iter__(self) -> Iterator[bytes]:
        upstream, sock = self._upstream, self._conn.sock
        if upstream.chunked and sock is not None and upstream.fp is not None:
            read = dechunker(upstream, sock)
        else:
            read = functools.partial(upstream.read1, READ_SIZE)
        if self._recording is not None:
            read = self._recording.tap(read)
        self._gen = self._relay_events(read) if self._is_sse else self._relay_bytes(read)
        return self._gen

    def close(self) -> None:
        """End the stream: close the upstream at once, release the lease (idempotent)."""
        gen = self._gen
        if gen is not None:
            self._gen = None
            # Runs the generator's finally block when it is suspended mid-stream.
            gen.close()  # type: ignore[attr-defined]
        self._finish()

    def abort(self) -> None:
        """Cut the upstream connection from another thread; the client gets an error event."""
        self._aborted = True
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        shutdown_connection(self._conn)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        with _active_lock:
            _active.discard(self)
        self._shutdown_socket()
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
        # Chunked bodies are read from the raw socket; the others arrive at once after the
        # headers, so the clock since the start tells their timeout apart.
        if timed_out(ex, None if self._upstream.chunked else self._started):
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
            if not self._upstream.chunked and self._upstream.length:
                # read1() ends quietly when a Content-Length body stops short.
                raise http.client.IncompleteRead(b"", self._upstream.length)
        except (OSError, http.client.HTTPException) as ex:
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
        except (OSError, http.client.HTTPException) as ex:
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
    conn: http.client.HTTPConnection,
    upstream: http.client.HTTPResponse,
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
        body = upstream.read(MAX_ENGINE_ERROR_BYTES)
    except (OSError, http.client.HTTPException) as ex:
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
    resp.status = upstream.status
    headers = _response_headers(upstream)
    resp.set_headers([(name, value) for name, value in headers if name.lower() != "content-length"])
    resp.data = body if req.method != "HEAD" else None


def _raise_engine_error(
    conn: http.client.HTTPConnection,
    upstream: http.client.HTTPResponse,
    lease: LeaseLike,
    timer: TimerLike | None,
    model: str,
) -> None:
    """Read an engine error answer (64 KiB at most) and raise it for the face's renderer."""
    try:
        body = upstream.read(MAX_ENGINE_ERROR_BYTES)
    except (OSError, http.client.HTTPException):
        body = b""
    finally:
        conn.close()
        lease.release()
        if timer is not None:
            timer.finish()
    raise engine_error(model, upstream.status, body)


def abort_streams() -> int:
    """Cut every stream in flight (daemon shutdown); return how many there were."""
    with _active_lock:
        streams = list(_active)
    for stream in streams:
        stream.abort()
    return len(streams)


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
    conn = open_runner_connection(lease.socket_path)
    sent = time.monotonic()
    try:
        conn.putrequest(req.method, upstream_path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "localhost")
        for name, value in _request_headers(req):
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        upstream = conn.getresponse()
    except (OSError, http.client.HTTPException) as ex:
        conn.close()
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
        conn.close()
        lease.release()
        if timer is not None:
            timer.finish()
        raise

    if timer is not None:
        timer.status = upstream.status
    length = upstream.length
    if upstream.status >= 400 and face is not Face.OPENAI:
        _raise_engine_error(conn, upstream, lease, timer, model)
    if upstream.status == 500 and length is not None and length <= MAX_ENGINE_ERROR_BYTES:
        _finish_engine_error(req, resp, conn, upstream, lease, timer, model)
        return
    resp.status = upstream.status
    content_type = upstream.getheader("Content-Type") or ""
    resp.set_headers(_response_headers(upstream))
    resp.set_header("X-Accel-Buffering", "no")
    stream = ProxyStream(
        conn,
        upstream,
        lease,
        timer,
        is_sse=content_type.startswith("text/event-stream"),
        model=model,
        face=face,
        recording=recording,
    )
    if req.method == "HEAD" or upstream.status in _BODILESS:
        # Falcon sends no body for these and would never iterate (or close) the stream.
        stream.close()
        return
    resp.stream = stream

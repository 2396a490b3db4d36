"""One request to a runner on behalf of a face that translates (Ollama, Responses).

The OpenAI routes hand the client's bytes to :func:`orchestrator.proxy.forward` untouched. A
face that speaks another protocol instead builds an OpenAI (or llama-server) body, sends it
here and reads the answer back as JSON or as parsed SSE events, which it turns into its own
protocol. Both paths share everything that matters: :func:`~orchestrator.api.openai.resolve_model`,
the scheduler's :meth:`acquire` (memory guard, queue limits, cold start), the proxy's
connection and timeouts (:func:`~orchestrator.proxy.open_runner_connection`), the request
metrics (labelled with the face) and the error hierarchy. No second proxy.

An :class:`EngineAnswer` owns the connection and the lease from the moment :func:`call_engine`
returns: reading it to the end, or :meth:`EngineAnswer.close`, gives both back. A face that
streams wraps :meth:`EngineAnswer.events` in its own generator and makes sure that generator
is closed (Falcon closes ``resp.stream`` after the last chunk or a failed write).

An engine error status (4xx/5xx) never reaches the face as an answer: it is read (64 KiB at
most) and raised as :class:`~orchestrator.errors.EngineRejectedError` with the engine's status
and words, which the error renderer puts in the face's shape.
"""

from __future__ import annotations

import functools
import http.client
import json
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.api.faces import Face
from orchestrator.errors import (
    EngineNotFoundError,
    OrchestratorError,
    RunnerCrashedError,
    RunnerTimeoutError,
    ServiceUnavailableError,
)
from orchestrator.proxy import (
    MAX_ENGINE_ERROR_BYTES,
    READ_SIZE,
    READ_TIMEOUT_SECONDS,
    LeaseLike,
    TimerLike,
    engine_error,
    open_runner_connection,
    shutdown_connection,
    timed_out,
    track_stream,
    untrack_stream,
)
from orchestrator.store.reference import model_label

if TYPE_CHECKING:
    from orchestrator.api.request_log import ClientRequest, Recording
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

# A whole (non-streamed) answer read into memory: a long generation is a few hundred KiB,
# embeddings of a large batch a few MiB.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# One SSE event larger than this is a broken engine, not an answer.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class EngineAnswer:
    """The engine's successful answer to one translated request.

    Attributes:
        status: The engine's HTTP status (2xx).
        content_type: Its ``Content-Type``.
        record: The model that answered.
        model: The name the client asked for.
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        upstream: http.client.HTTPResponse,
        lease: LeaseLike,
        timer: TimerLike,
        record: ModelRecord,
        model: str,
        recording: Recording | None = None,
    ) -> None:
        self._conn = conn
        self._recording = recording
        self._upstream = upstream
        self._lease = lease
        self._timer = timer
        self._finished = False
        self._aborted = False
        self.status = upstream.status
        self.content_type = upstream.getheader("Content-Type") or ""
        self.record = record
        self.model = model
        # Seconds spent acquiring the runner (queue, admission, cold start): Ollama's
        # load_duration. Set by call_engine.
        self.acquire_seconds = 0.0
        if recording is not None:
            recording.respond(self.status, self.is_stream)
        # Shutdown cuts translated answers too (llama-server finishes a generation before it
        # honours SIGTERM; a closed connection cancels it at once).
        track_stream(self)

    @property
    def is_stream(self) -> bool:
        """Return whether the answer is server-sent events."""
        return self.content_type.startswith("text/event-stream")

    def json(self) -> Any:
        """Read the whole answer and return its JSON value; the answer is closed after.

        Raises:
            RunnerCrashedError: The runner died mid-answer or sent something not JSON.
            RunnerTimeoutError: It went silent for the proxy's read timeout.
        """
        started = time.monotonic()
        try:
            data = self._upstream.read(MAX_ANSWER_BYTES + 1)
            self._timer.first_byte()
            if self._recording is not None:
                self._recording.capture(data)
            if len(data) > MAX_ANSWER_BYTES:
                raise RunnerCrashedError(
                    f"the answer of model {self.model!r} is over {MAX_ANSWER_BYTES} bytes; ask "
                    "for less (fewer inputs or a lower max_tokens)"
                )
            return json.loads(data)
        except (OSError, http.client.HTTPException) as ex:
            raise self._failure(ex, started) from ex
        except ValueError as ex:
            raise RunnerCrashedError(
                f"the runner of model {self.model!r} sent an answer that is not JSON; retry the "
                "request",
                details={"error": repr(ex)},
            ) from ex
        finally:
            self.close()

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield the JSON ``data`` of each server-sent event until ``[DONE]`` or the end.

        Events whose data is not a JSON object are skipped (llama-server sends none). The
        answer is closed when the iterator ends or is closed.

        Raises:
            RunnerCrashedError: The runner died mid-stream.
            RunnerTimeoutError: It went silent for the proxy's read timeout.
        """
        pending = b""
        started = time.monotonic()
        read: Callable[[], bytes] = functools.partial(self._upstream.read1, READ_SIZE)
        if self._recording is not None:
            read = self._recording.tap(read)
        try:
            while True:
                chunk = read()
                if not chunk:
                    break
                self._timer.first_byte()
                pending = pending + chunk if pending else chunk
                while True:
                    end, skip = _event_end(pending)
                    if end < 0:
                        break
                    event, pending = pending[:end], pending[end + skip :]
                    data = _event_data(event)
                    if data is None:
                        continue
                    if data == b"[DONE]":
                        return
                    try:
                        value = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(value, dict):
                        yield value
                if len(pending) > MAX_EVENT_BYTES:
                    raise RunnerCrashedError(
                        f"the runner of model {self.model!r} sent an event over "
                        f"{MAX_EVENT_BYTES} bytes; retry the request"
                    )
        except (OSError, http.client.HTTPException) as ex:
            raise self._failure(ex, started) from ex
        finally:
            self.close()

    def abort(self) -> None:
        """Cut the engine connection from another thread (daemon shutdown)."""
        self._aborted = True
        shutdown_connection(self._conn)

    def close(self) -> None:
        """Close the connection (the engine stops generating), give the lease back (idempotent)."""
        if self._finished:
            return
        self._finished = True
        untrack_stream(self)
        shutdown_connection(self._conn)
        self._conn.close()
        try:
            self._lease.release()
        finally:
            self._timer.finish()
            if self._recording is not None:
                self._recording.finish()

    def _failure(self, ex: BaseException, started: float) -> OrchestratorError:
        error = self._failure_error(ex, started)
        if self._recording is not None:
            self._recording.fail_with(error)
        return error

    def _failure_error(self, ex: BaseException, started: float) -> OrchestratorError:
        if self._aborted:
            self._timer.status = ServiceUnavailableError.status
            return ServiceUnavailableError(
                "the daemon is shutting down and ended this answer; retry the request after it "
                "restarts"
            )
        if timed_out(ex, started):
            self._timer.status = RunnerTimeoutError.status
            return RunnerTimeoutError(
                f"the runner of model {self.model!r} sent nothing for "
                f"{READ_TIMEOUT_SECONDS:.0f}s; retry the request"
            )
        self._timer.status = RunnerCrashedError.status
        self._lease.report_crash()
        return RunnerCrashedError(
            f"the runner of model {self.model!r} stopped in the middle of the answer; retry "
            "the request (the runner is restarted on demand)",
            details={"error": repr(ex)},
        )


def _event_end(data: bytes) -> tuple[int, int]:
    """Return (offset, terminator length) of the first SSE event end in ``data``; (-1, 0)."""
    lf = data.find(b"\n\n")
    crlf = data.find(b"\r\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf >= 0 else (-1, 0)


def _event_data(event: bytes) -> bytes | None:
    """Return the joined ``data:`` lines of one SSE event, ``None`` when it has none."""
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def call_engine(
    ctx: ApiContext,
    *,
    face: Face,
    model: str,
    mode: str,
    upstream_path: str,
    payload: dict[str, Any],
    record: ModelRecord | None = None,
    client: ClientRequest | None = None,
) -> EngineAnswer:
    """Send ``payload`` as JSON to ``upstream_path`` on a runner of ``model``; return the answer.

    Args:
        ctx: The API context (store, scheduler, metrics).
        face: The face asking, for the metrics.
        model: The model name the client gave (resolved in the local store).
        mode: The runner mode (``completion``, ``embedding``, ``reranking``).
        upstream_path: The engine path (``/v1/chat/completions``).
        payload: The body; its ``model`` is sent as given.
        record: The resolved model, when the face resolved it already.
        client: The client's own request, for the request recorder
            (:func:`orchestrator.api.recorder.client_request`).

    Raises:
        ModelNotFoundError: Not in the local store.
        EngineNotFoundError: No llama-server.
        EngineRejectedError: The engine answered with an error status.
        RunnerCrashedError, RunnerTimeoutError: The runner died or went silent.
        OrchestratorError: Whatever acquiring a runner raises (507, 429, 503...).
    """
    # Imported here: api.openai imports the proxy and the store; this module is imported by
    # the faces only.
    from orchestrator.api.openai import resolve_model
    from orchestrator.api.recorder import begin_engine_call

    if record is None:
        record = resolve_model(ctx.store, model)
    if ctx.engine_path is None:
        raise EngineNotFoundError(ctx.engine_error or "llama-server was not found")
    body = json.dumps(payload).encode()
    timer = ctx.request_stats.begin(model_label(record.tags, record.id), mode, face.value)
    acquiring = time.monotonic()
    try:
        lease = ctx.scheduler.acquire(record, mode)
    except BaseException as ex:
        timer.status = getattr(ex, "status", 500)
        timer.finish()
        raise
    # Records the client's own request (path and body), not the translation sent here.
    recording = begin_engine_call(
        ctx, face, record, model, mode, lease, upstream_path, body, client
    )
    conn = open_runner_connection(lease.socket_path)
    sent = time.monotonic()
    try:
        conn.putrequest("POST", upstream_path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", "localhost")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        upstream = conn.getresponse()
        timer.status = upstream.status
        if upstream.status >= 400:
            error_body = upstream.read(MAX_ENGINE_ERROR_BYTES)
            raise engine_error(model, upstream.status, error_body)
    except (OSError, http.client.HTTPException) as ex:
        conn.close()
        if timed_out(ex, sent):
            timer.status = RunnerTimeoutError.status
            lease.release()
            timer.finish()
            raise _recorded(
                recording,
                RunnerTimeoutError(
                    f"the runner of model {model!r} did not answer within "
                    f"{READ_TIMEOUT_SECONDS:.0f}s; retry the request",
                    details={"error": repr(ex)},
                ),
            ) from ex
        timer.status = RunnerCrashedError.status
        lease.report_crash()
        lease.release()
        timer.finish()
        raise _recorded(
            recording,
            RunnerCrashedError(
                f"the runner of model {model!r} could not be reached or died before answering; "
                "retry the request (the runner is restarted on demand)",
                details={"error": repr(ex), "socket": lease.socket_path},
            ),
        ) from ex
    except BaseException as ex:
        conn.close()
        lease.release()
        timer.finish()
        _recorded(recording, ex)
        raise
    answer = EngineAnswer(conn, upstream, lease, timer, record, model, recording)
    answer.acquire_seconds = sent - acquiring
    return answer


def _recorded(recording: Recording | None, error: BaseException) -> BaseException:
    """Record that the request failed with ``error`` and ended; return ``error``."""
    if recording is not None:
        recording.fail_with(error)
        recording.finish()
    return error

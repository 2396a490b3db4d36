"""``GET /engines/requests``: the request recorder over HTTP, and its two hooks into requests.

What is recorded, and where (the log itself is :mod:`orchestrator.api.request_log`):

- **OpenAI pass-through** (``/engines/v1/...``, ``/v1/...``, ``/rerank``): the resource calls
  :func:`begin_forward` with the body it read and hands the :class:`Recording` to
  :func:`orchestrator.proxy.forward`, whose stream taps its reads.
- **Translating faces** (Ollama, Responses, Anthropic's ``max_tokens: 0``): their engine requests
  go through :func:`orchestrator.api.engine_call.call_engine`, which calls
  :func:`begin_engine_call`. The record must show what the *client* sent, on the path it used,
  not the OpenAI body the face made of it, so the face passes :func:`client_request` (its
  request line, two headers and the JSON it read) to ``call_engine``. The answer recorded is the
  engine's (OpenAI chat completion, made whole when it was streamed): one shape for every face,
  and the face's own answer is a pure function of it.

``GET /engines/requests[?model=]`` answers DMR's JSON array; with ``Accept:
text/event-stream`` it follows: ``event: connected``, with ``include_existing=true`` one
``event: existing_request`` per kept record, then one ``event: new_request`` per finished
request. A follow holds a work-lane thread, so it is bounded: a comment line every
:data:`HEARTBEAT_SECONDS` (which also finds a client that left), at most
:data:`FOLLOW_MAX_SECONDS` in all, at most :data:`MAX_FOLLOWERS` at once, and it ends at
daemon shutdown (it registers with :func:`orchestrator.proxy.track_stream`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import query_bool, query_string
from orchestrator.api.faces import Face
from orchestrator.api.logs import client_gone
from orchestrator.api.request_log import ClientRequest, Entry, Follower, Recording, RequestLog
from orchestrator.errors import ServiceUnavailableError
from orchestrator.proxy import LeaseLike, track_stream, untrack_stream

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext
    from orchestrator.runners.scheduler import Scheduler
    from orchestrator.store.records import ModelRecord

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
FOLLOW_MAX_SECONDS = 3600.0
MAX_FOLLOWERS = 8
ORIGIN_HEADER = "X-Request-Origin"
_CONNECTED = b'event: connected\ndata: {"status": "connected"}\n\n'
_HEARTBEAT = b": keep-alive\n\n"


def client_request(req: falcon.Request, body: dict[str, Any], face: Face) -> ClientRequest:
    """Return what the recorder keeps of a translating face's request: its path, the JSON
    object the face read (serialized again: media is cut and secrets redacted from it anyway),
    its User-Agent and its ``X-Request-Origin`` (else the face's name)."""
    return ClientRequest(
        req.method,
        req.path,
        json.dumps(body).encode(),
        req.get_header("User-Agent") or "",
        req.get_header(ORIGIN_HEADER) or face.value,
    )


def _runner_of(lease: LeaseLike) -> tuple[str, int]:
    """Return (identity, context size) of the leased runner (its socket is unique)."""
    info = getattr(lease, "runner", None)
    return lease.socket_path, int(getattr(info, "context_size", 0) or 0)


def begin_forward(
    ctx: ApiContext, req: falcon.Request, record: ModelRecord, model: str, mode: str,
    lease: LeaseLike, body: bytes,
) -> Recording | None:  # fmt: skip
    """Start recording a pass-through request (``None`` when the recorder is off)."""
    request_log = ctx.recorder
    if request_log is None or not request_log.enabled:
        return None
    runner, context_size = _runner_of(lease)
    client = ClientRequest(
        req.method,
        req.path,
        body,
        req.get_header("User-Agent") or "",
        req.get_header(ORIGIN_HEADER) or "",
    )
    return request_log.begin(
        model=model, model_id=record.id, mode=mode, runner=runner,
        context_size=context_size, client=client,
    )  # fmt: skip


def begin_engine_call(
    ctx: ApiContext, face: Face, record: ModelRecord, model: str, mode: str,
    lease: LeaseLike, upstream_path: str, body: bytes, client: ClientRequest | None,
) -> Recording | None:  # fmt: skip
    """Start recording a translating face's engine call; never raises.

    ``client`` is the face's own request (:func:`client_request`); without it the body sent to
    the engine is recorded instead.
    """
    request_log = ctx.recorder
    if request_log is None or not request_log.enabled:
        return None
    try:
        if client is None:
            client = ClientRequest("POST", upstream_path, body, origin=face.value)
        runner, context_size = _runner_of(lease)
        return request_log.begin(
            model=model, model_id=record.id, mode=mode, runner=runner,
            context_size=context_size, client=client,
        )  # fmt: skip
    except Exception:  # the recorder must never fail a request
        log.exception("request recorder failed model=%s", model)
        return None


def new_request_log(max_per_model: int, scheduler: Scheduler) -> RequestLog:
    """Return the recorder of a daemon: liveness and ``config`` from its scheduler."""

    def live_runners() -> set[str]:
        return {status.info.socket_path for status in scheduler.management.ps()}

    def config_for(model_id: str, mode: str, context_size: int) -> dict[str, Any]:
        settings = scheduler.configs.get(model_id, mode)
        config = settings.to_api() if settings is not None else {}
        if context_size and "context-size" not in config:
            config["context-size"] = context_size
        return config

    return RequestLog(max_per_model, live_runners, config_for)


def wants_events(accept: str) -> bool:
    """Return whether an ``Accept`` header names ``text/event-stream`` (a follow).

    Named explicitly only: ``*/*`` (curl, browsers) and no header get JSON, as in DMR.
    """
    return any(
        part.split(";", 1)[0].strip().lower() == "text/event-stream" for part in accept.split(",")
    )


def _event(name: bytes, data: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


class _FollowStream:
    """The body of one follow: events until the client leaves, the deadline or shutdown."""

    def __init__(
        self, request_log: RequestLog, follower: Follower, existing: list[Entry],
        env: dict[str, Any], heartbeat: float, deadline: float,
    ) -> None:  # fmt: skip
        self._log = request_log
        self._follower = follower
        self._existing = existing
        self._env = env
        self._heartbeat = heartbeat
        self._deadline = deadline
        self._closed = threading.Event()
        self._gen: Iterator[bytes] | None = None
        track_stream(self)

    def abort(self) -> None:
        """End the follow (daemon shutdown), from any thread."""
        self._closed.set()
        self._follower.closed = True
        self._follower.offer(None)

    def __iter__(self) -> Iterator[bytes]:
        self._gen = self._events()
        return self._gen

    def _events(self) -> Iterator[bytes]:
        try:
            yield _CONNECTED
            for kept in self._existing:
                yield _event(b"existing_request", self._log.event(kept))
            self._existing = []
            while not self._closed.is_set():
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return
                entry = self._follower.next(min(self._heartbeat, remaining))
                if entry is not None:
                    yield _event(b"new_request", self._log.event(entry))
                elif self._follower.closed or client_gone(self._env):
                    return
                else:
                    yield _HEARTBEAT
        finally:
            self._release()

    def close(self) -> None:
        """End the follow (idempotent; the server calls it after the last chunk)."""
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()  # type: ignore[attr-defined]  # runs its finally when suspended
        self._release()

    def _release(self) -> None:
        untrack_stream(self)
        self._log.unsubscribe(self._follower)


class RequestsResource:
    """``GET /engines/requests``: the recorded requests, as JSON or followed as events.

    Args:
        ctx: Shared API context (its ``recorder``).
        heartbeat: Seconds between keep-alive comments of a follow.
        max_seconds: Longest a follow lasts.
    """

    def __init__(
        self,
        ctx: ApiContext,
        heartbeat: float = HEARTBEAT_SECONDS,
        max_seconds: float = FOLLOW_MAX_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.heartbeat = heartbeat
        self.max_seconds = max_seconds

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        request_log = self.ctx.recorder
        if request_log is None:
            raise ServiceUnavailableError("the request recorder is not running")
        # Imported here: api.openai imports this module (its resources record requests).
        from orchestrator.api.openai import resolve_model

        model = query_string(req, "model")
        model_id = resolve_model(self.ctx.store, model).id if model else None
        include_existing = query_bool(req, "include_existing")
        if not wants_events(req.get_header("Accept") or ""):
            # As DMR: include_existing means nothing without a follow.
            resp.content_type = falcon.MEDIA_JSON
            resp.data = json.dumps(request_log.snapshot(model_id)).encode()
            return
        if request_log.follower_count >= MAX_FOLLOWERS:
            raise ServiceUnavailableError(
                f"{MAX_FOLLOWERS} clients already follow the request recorder; close one "
                "and retry",
                retry_after=int(self.heartbeat),
            )
        follower = request_log.subscribe(model_id)
        existing = request_log.existing(model_id) if include_existing else []
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = _FollowStream(
            request_log, follower, existing, req.env, self.heartbeat,
            time.monotonic() + self.max_seconds,
        )  # fmt: skip


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register ``GET /engines/requests``."""
    app.add_route("/engines/requests", RequestsResource(ctx))

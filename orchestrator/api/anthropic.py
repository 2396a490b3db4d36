"""The Anthropic Messages API face (spec 1.8; DMR's ``pkg/anthropic/handler.go``).

``POST /anthropic/v1/messages`` and ``POST /anthropic/v1/messages/count_tokens``, also under
``/engines/v1/...``, ``/engines/llama.cpp/v1/...`` and the bare ``/v1/...``. The engine speaks
the protocol itself (llama-server's ``/v1/messages`` and ``/v1/messages/count_tokens``), so
the face is DMR's thin one: read the body (10 MiB), take ``model``, resolve it in the local
store (no auto-pull), acquire a runner and hand the bytes to
:func:`orchestrator.proxy.forward`, as the OpenAI routes do. Errors, ours and the engine's,
are rendered in Anthropic's shape ``{"type": "error", "error": {"type", "message"}}`` by the
one error renderer (:mod:`orchestrator.api.faces` names these paths); a failure after a
stream started is an ``event: error``.

Beyond DMR, which forwards whatever it gets, two thin layers make the answers Anthropic's
where the engine's differ (each difference is measured and listed in the module that fixes
it): :mod:`orchestrator.api.anthropic_request` refuses malformed bodies with a 400 the engine
would answer with a 500 or a made-up answer, and rewrites the ``tool_choice`` values the
engine misreads; :mod:`orchestrator.api.anthropic_answer` fixes ``stop_reason``, ``model``,
``id`` and the streamed ``tool_use`` and error events. A streamed answer stays a stream (the
fix is per event); a whole answer is fixed once it has arrived. ``max_tokens: 0`` (fill the
prompt cache, generate nothing), which the engine cannot do, is answered by
:mod:`orchestrator.api.anthropic_warm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon

from orchestrator.api.anthropic_answer import FixedStream, fix_message_bytes
from orchestrator.api.anthropic_request import MessagesRequest, check_request, engine_body
from orchestrator.api.anthropic_warm import answer_warm_only
from orchestrator.api.faces import Face
from orchestrator.api.openai import (
    check_backend,
    http_status,
    read_model_request,
    resolve_model,
)
from orchestrator.api.recorder import begin_forward
from orchestrator.errors import (
    EngineNotFoundError,
    EngineRejectedError,
    InvalidRequestError,
    OrchestratorError,
    RunnerCrashedError,
)
from orchestrator.proxy import ProxyStream, engine_error, forward
from orchestrator.store.reference import model_label

if TYPE_CHECKING:
    from orchestrator.api.request_log import Recording
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

MODE = "completion"
# A whole (non-streamed) message read before it is fixed; a long answer is tens of KiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# (route suffix after /anthropic, /engines[/{backend}] or nothing; engine path; generates?)
_ROUTES = (
    ("/v1/messages", "/v1/messages", True),
    ("/v1/messages/count_tokens", "/v1/messages/count_tokens", False),
)
_EXAMPLE = '{"model": "ai/smollm2", "max_tokens": 64, "messages": [{"role": "user", ...}]}'


class MessagesResource:
    """``POST .../v1/messages`` (``generating``) or ``.../v1/messages/count_tokens``.

    Args:
        ctx: Shared API context.
        upstream_path: The engine's path for this route.
        generating: Whether the route generates (messages) or only counts tokens.
    """

    def __init__(self, ctx: ApiContext, upstream_path: str, *, generating: bool) -> None:
        self.ctx = ctx
        self.upstream_path = upstream_path
        self.generating = generating

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        check_backend(backend)
        body, payload, model = read_model_request(req, _EXAMPLE)
        request = check_request(payload, model, generating=self.generating)
        record = resolve_model(self.ctx.store, model)
        if self.ctx.engine_path is None:
            raise EngineNotFoundError(self.ctx.engine_error or "llama-server was not found")
        if request.warm_only:
            try:
                answer_warm_only(self.ctx, req, resp, record, request, payload)
            except EngineRejectedError as ex:
                raise client_error(ex) from ex
            return
        self._forward(req, resp, record, request, body, engine_body(payload, body))

    def _forward(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        record: ModelRecord,
        request: MessagesRequest,
        body: bytes,
        sent: bytes,
    ) -> None:
        """Acquire a runner, forward ``sent`` and fix the answer (``body``: for the recorder)."""
        model = request.model
        timer = self.ctx.request_stats.begin(
            model_label(record.tags, record.id), MODE, Face.ANTHROPIC.value
        )
        try:
            lease = self.ctx.scheduler.acquire(record, MODE)
        except BaseException as ex:
            timer.status = getattr(ex, "status", 500)
            timer.finish()
            raise
        recording = begin_forward(self.ctx, req, record, model, MODE, lease, body)
        try:
            forward(req, resp, lease, upstream_path=self.upstream_path, body=sent, model=model,
                    timer=timer, face=Face.ANTHROPIC, recording=recording)  # fmt: skip
        except BaseException as ex:
            _record_failure(recording, ex)
            raise
        stream = resp.stream
        if not isinstance(stream, ProxyStream):
            _raise_engine_answer(resp, model, recording)
            return
        if not self.generating:
            return  # count_tokens: {"input_tokens": N}, as Anthropic's
        if (resp.content_type or "").startswith("text/event-stream"):
            resp.stream = FixedStream(stream, request)
            return
        resp.data = _read_message(stream, request)
        resp.stream = None
        resp.delete_header("Content-Length")  # the engine's; Falcon sets the fixed one


def _read_message(stream: ProxyStream, request: MessagesRequest) -> bytes:
    """Read a whole message from the engine and return it fixed.

    Raises:
        RunnerCrashedError: The runner stopped mid-answer or sent no message.
    """
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in stream:
            size += len(chunk)
            if size > MAX_MESSAGE_BYTES:
                break
            parts.append(chunk)
    finally:
        stream.close()
    fixed = fix_message_bytes(b"".join(parts), request) if size <= MAX_MESSAGE_BYTES else None
    if fixed is None:
        raise RunnerCrashedError(
            f"the runner of model {request.model!r} stopped in the middle of the answer or sent "
            "no message; retry the request (the runner is restarted on demand)"
        )
    return fixed


def _raise_engine_answer(resp: falcon.Response, model: str, recording: Recording | None) -> None:
    """Raise an engine error the proxy passed on whole (its 500s), for Anthropic's shape.

    :func:`~orchestrator.proxy.forward` raises every engine error status on this face but a
    small 500, which it reads whole and sets as ``resp.data`` in the engine's (OpenAI) shape.
    """
    status = http_status(resp.status)
    if status < 400:
        return
    error = client_error(engine_error(model, status, resp.data or b""))
    _record_failure(recording, error)
    resp.data = None
    raise error


def client_error(error: OrchestratorError) -> OrchestratorError:
    """Return a 400 for an engine 500 that names a feature the model lacks, else ``error``.

    llama-server answers an image block sent to a model without a projector with a 500
    ("image input is not supported - hint: ... mmproj"); that is the request's fault, and
    Anthropic's answer to a request a model cannot serve is ``invalid_request_error``.
    """
    if error.status == 500 and "not supported" in error.message:
        return InvalidRequestError(error.message)
    return error


def _record_failure(recording: Recording | None, error: BaseException) -> None:
    if recording is not None:
        recording.fail_with(error)
        recording.finish()


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register the Messages and count_tokens routes under every prefix (spec 1.8)."""
    for suffix, upstream, generating in _ROUTES:
        resource = MessagesResource(ctx, upstream, generating=generating)
        app.add_route("/anthropic" + suffix, resource)
        app.add_route("/engines" + suffix, resource)
        app.add_route("/engines/{backend}" + suffix, resource)
        app.add_route(suffix, resource)

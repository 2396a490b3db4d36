"""The one error renderer of the API: every failure leaves in the error shape of its face.

Three handlers cover every path (house style 3.6):

- :class:`~orchestrator.errors.OrchestratorError` (ours): its status, ``type``, ``code``,
  ``param`` and message; ``details`` go to the log only.
- Falcon's own :class:`falcon.HTTPError` (unknown route, 405 with ``Allow``, bad headers):
  through :func:`serialize_http_error`, which maps the status onto our vocabulary.
- Anything else: the traceback is logged with the request id and the client gets a 500
  ``internal_error`` whose message names that id, never the exception text.

The body is ``{"error": {"message", "type", "param", "code"}}`` with all four keys on the OpenAI
and Responses faces; Ollama's paths (``/api/...``) get ``{"error": "<message>"}`` and Anthropic's
``{"type": "error", "error": {"type", "message"}}`` (:mod:`orchestrator.api.faces` picks the
shape from the path).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon

from orchestrator.api.faces import error_bytes, face_of_path
from orchestrator.errors import OrchestratorError

log = logging.getLogger(__name__)

# Falcon's HTTPError statuses mapped onto our (type, code) vocabulary; the type words are
# OpenAI's or llama-server's (house style 3.6).
_HTTP_ERROR_CODES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    411: ("invalid_request_error", "length_required"),
    413: ("invalid_request_error", "request_too_large"),
    414: ("invalid_request_error", "uri_too_long"),
    415: ("invalid_request_error", "unsupported_media_type"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    431: ("invalid_request_error", "request_header_fields_too_large"),
    501: ("not_supported_error", "not_supported"),
    503: ("unavailable_error", "unavailable"),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """Return the serialized OpenAI-shaped error body with all four keys."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def request_id_of(req: falcon.Request) -> str:
    """Return the request id the middleware assigned (``-`` before it ran)."""
    return str(getattr(req.context, "request_id", "-"))


def status_code_of(status: Any) -> int:
    """Return the integer code of a Falcon status (``'404 Not Found'``, ``404``, HTTPStatus)."""
    return int(str(falcon.code_to_http_status(status)).split(" ", 1)[0])


def _http_error_message(req: falcon.Request, ex: falcon.HTTPError, status: int) -> str:
    if isinstance(ex, falcon.HTTPRouteNotFound) or (status == 404 and ex.description is None):
        return f"no route matches {req.method} {req.path!r}; see the API reference for the routes"
    if status == 405:
        allowed = dict(ex.headers or {}).get("Allow", "")
        return f"method {req.method} is not allowed on {req.path!r}; use one of: {allowed}"
    if ex.description:
        text = str(ex.description).rstrip(".")
        return text[:1].lower() + text[1:]
    title = str(ex.title or "")
    if title[:3].isdigit():
        title = title[4:]
    return (title[:1].lower() + title[1:]) or f"the request failed with status {status}"


def _discard_stream(resp: falcon.Response) -> None:
    """Drop a body stream set before the failure, closing it (it may hold a runner lease)."""
    stream = resp.stream
    resp.stream = None
    close = getattr(stream, "close", None)
    if callable(close):
        close()


def serialize_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    """Render one of Falcon's own errors in the OpenAI shape (``set_error_serializer``)."""
    status = status_code_of(ex.status)
    type_, code = _HTTP_ERROR_CODES.get(
        status,
        ("server_error", "internal_error") if status >= 500 else ("invalid_request_error", None),
    )
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_bytes(
        face_of_path(req.path), status, _http_error_message(req, ex, status), type_, code
    )
    log.info(
        "request failed rid=%s status=%d code=%s path=%s",
        request_id_of(req),
        status,
        code,
        req.path,
    )


def handle_orchestrator_error(
    req: falcon.Request, resp: falcon.Response, ex: OrchestratorError, params: dict[str, Any]
) -> None:
    """Render an :class:`OrchestratorError` (``add_error_handler``)."""
    resp.status = ex.status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_bytes(
        face_of_path(req.path), ex.status, ex.message, ex.type, ex.code, ex.param
    )
    if ex.retry_after is not None:  # 429 and 503 refusals say when to come back
        resp.set_header("Retry-After", str(ex.retry_after))
    _discard_stream(resp)
    level = logging.WARNING if ex.status >= 500 else logging.INFO
    log.log(
        level,
        "request failed rid=%s status=%d code=%s message=%r details=%r",
        request_id_of(req),
        ex.status,
        ex.code,
        ex.message,
        ex.details,
    )


def handle_unexpected_error(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    """Log a bug with its traceback and answer 500 naming the request id."""
    if isinstance(ex, (falcon.HTTPError, falcon.HTTPStatus)):
        # NOTE(api): Falcon 3 matches handlers by MRO, so its own defaults still win for these;
        # this branch only guards against a framework that dispatches differently.
        raise ex
    request_id = request_id_of(req)
    log.error(
        "unexpected error rid=%s method=%s path=%s",
        request_id,
        req.method,
        req.path,
        exc_info=ex,
    )
    resp.status = 500
    resp.content_type = falcon.MEDIA_JSON
    _discard_stream(resp)
    resp.data = error_bytes(
        face_of_path(req.path),
        500,
        f"internal error while handling request {request_id!r}; the daemon log has the details",
        "server_error",
        "internal_error",
    )


def install(app: falcon.App) -> None:
    """Register the renderer on ``app``: our errors, Falcon's errors, and bugs."""
    app.set_error_serializer(serialize_http_error)
    app.add_error_handler(Exception, handle_unexpected_error)
    app.add_error_handler(OrchestratorError, handle_orchestrator_error)

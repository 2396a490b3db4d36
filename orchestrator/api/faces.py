"""The API faces the daemon serves, and the error shape each one's clients understand.

One daemon, four protocols over the same runners (spec 1.4, 1.7-1.9):

================  ===========================================  ==================================
Face              Paths                                        Error body
================  ===========================================  ==================================
``openai``        ``/engines[/{backend}]/v1/...``, ``/v1/...``  ``{"error": {"message", "type",
                  and everything else (management routes)       "param", "code"}}``
``ollama``        ``/api/...``                                 ``{"error": "<message>"}``
``anthropic``     ``/anthropic/v1/messages[...]``,             ``{"type": "error", "error":
                  ``.../v1/messages[/count_tokens]``           {"type", "message"}}``
``responses``     ``.../responses[/...]``                      the OpenAI shape (the Responses
                                                               API's own)
================  ===========================================  ==================================

The face is a property of the path alone, so the one error renderer
(:mod:`orchestrator.api.error_handlers`), the metrics and the access log all agree on it
without the resources telling them. The Anthropic clients key on ``error.type``; its words are
Anthropic's (``not_found_error``, ``overloaded_error``...), chosen by status.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any


class Face(enum.Enum):
    """The protocol a request speaks, by its path."""

    OPENAI = "openai"
    OLLAMA = "ollama"
    ANTHROPIC = "anthropic"
    RESPONSES = "responses"


# Paths after the /exp/vDD4.40 prefix was removed (the middleware does it first).
_ANTHROPIC = re.compile(r"^(?:/anthropic|/engines(?:/[^/]+)?)?/v1/messages(?:/count_tokens)?/?$")
_RESPONSES = re.compile(r"^(?:/engines(?:/[^/]+)?)?(?:/v1)?/responses(?:/.*)?$")

# Anthropic's error types by status (docs.anthropic.com, "Errors"); 529 is theirs for overload.
_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def face_of_path(path: str) -> Face:
    """Return the face of a request path."""
    if path.startswith("/api/") or path == "/api":
        return Face.OLLAMA
    if _ANTHROPIC.match(path):
        return Face.ANTHROPIC
    if _RESPONSES.match(path):
        return Face.RESPONSES
    return Face.OPENAI


def anthropic_error_type(status: int) -> str:
    """Return Anthropic's error ``type`` word for an HTTP status."""
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_document(
    face: Face, status: int, message: str, type_: str, code: str | None, param: str | None
) -> dict[str, Any]:
    """Return the error body of ``face`` for one failure (as a JSON-ready mapping)."""
    if face is Face.OLLAMA:
        return {"error": message}
    if face is Face.ANTHROPIC:
        return {
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
        }
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_bytes(
    face: Face,
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
) -> bytes:
    """Return :func:`error_document` serialized."""
    return json.dumps(error_document(face, status, message, type_, code, param)).encode()

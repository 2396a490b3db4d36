"""``max_tokens: 0``: fill the prompt cache and answer an empty message (Anthropic's meaning).

The anthropic SDK documents ``max_tokens: 0`` as "populate the prompt cache without
generating a response". llama-server's own ``/v1/messages`` generates a token anyway (its
``n_predict`` 0 is not "nothing") and answers that text. The face instead sends the prompt with
``max_tokens: 1`` through :func:`~orchestrator.api.engine_call.call_engine`, so the runner
evaluates it and keeps it in its prompt cache, drops the token, and answers a message without
content: ``stop_reason: "max_tokens"``, the engine's input token counts, ``output_tokens: 0``.
Streamed, the same message comes as message_start, message_delta, message_stop.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.anthropic_answer import fix_message
from orchestrator.api.anthropic_request import tool_choice_rewrite
from orchestrator.api.engine_call import call_engine
from orchestrator.api.faces import Face
from orchestrator.api.recorder import client_request

if TYPE_CHECKING:
    from orchestrator.api.anthropic_request import MessagesRequest
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

_USAGE_KEYS = ("input_tokens", "cache_read_input_tokens")


def empty_message(engine_message: dict[str, Any], request: MessagesRequest) -> dict[str, Any]:
    """Return the answer to a ``max_tokens: 0`` request from the engine's one-token answer."""
    found = engine_message.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    message: dict[str, Any] = {
        "id": engine_message.get("id") or "msg_warm",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": request.model,
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {key: usage[key] for key in _USAGE_KEYS if isinstance(usage.get(key), int)}
        | {"output_tokens": 0},
    }
    return fix_message(message, request)


def event_stream(message: dict[str, Any]) -> bytes:
    """Return ``message`` as Anthropic's events (no content blocks)."""
    start = {**message, "stop_reason": None}
    events = (
        ("message_start", {"type": "message_start", "message": start}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                "usage": {"output_tokens": 0},
            },
        ),  # fmt: skip
        ("message_stop", {"type": "message_stop"}),
    )
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"
        for name, data in events
    )


def answer_warm_only(
    ctx: ApiContext,
    req: falcon.Request,
    resp: falcon.Response,
    record: ModelRecord,
    request: MessagesRequest,
    payload: dict[str, Any],
) -> None:
    """Evaluate the prompt on a runner and set ``resp`` to the empty message.

    Raises:
        OrchestratorError: Whatever :func:`call_engine` raises (engine errors included), for
            the error renderer.
    """
    warm = tool_choice_rewrite(payload) or dict(payload)
    warm["max_tokens"] = 1
    warm["stream"] = False
    answer = call_engine(ctx, face=Face.ANTHROPIC, model=request.model, mode="completion",
                         upstream_path="/v1/messages", payload=warm, record=record,
                         client=client_request(req, payload, Face.ANTHROPIC))  # fmt: skip
    engine_message = answer.json()
    message = empty_message(engine_message if isinstance(engine_message, dict) else {}, request)
    if request.stream:
        resp.content_type = "text/event-stream"
        resp.data = event_stream(message)
    else:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(message).encode()

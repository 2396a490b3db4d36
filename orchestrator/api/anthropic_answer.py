"""Fixing llama-server's Anthropic answers where they differ from Anthropic's API.

Measured against the engine this daemon ships (``tools/server/server-task.cpp``,
``to_json_anthropic*``) and the anthropic SDK, the native answer is right but for:

- ``stop_reason``: a stop sequence ends the answer with ``"end_turn"`` and the sequence in
  ``stop_sequence``; Anthropic says ``"stop_sequence"``. A stop word of the chat template
  (not one the client asked for) is reported the same way; Anthropic would say ``end_turn``
  with ``stop_sequence: null``. Both the whole message and the stream's ``message_delta``.
- ``model``: the engine names the GGUF file's path in the store (it ignores the request's
  ``model``); Anthropic echoes the model asked for. The whole message and ``message_start``.
- ``id``: ``chatcmpl-...`` (the engine's chat id); Anthropic's are ``msg_...``.
- A streamed ``tool_use`` block starts without ``"input": {}``; the SDK then has no ``input``
  on a tool call without arguments (Anthropic always sends the empty object).
- A failure inside the engine's stream is ``event: error`` with the engine's bare error
  object; Anthropic's data is ``{"type": "error", "error": {"type", "message"}}``, which is
  what the SDK reads the message from.

Everything else passes through as the engine wrote it: event order (message_start,
content_block_start, content_block_delta..., content_block_stop, message_delta, message_stop;
no ``ping``, which Anthropic's docs make optional), usage, text, thinking and tool blocks.

Cost on the hot path: a streamed chunk that holds no event to fix (every
``content_block_delta``) is passed on after three substring tests, not parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.api.faces import anthropic_error_type

if TYPE_CHECKING:
    from orchestrator.api.anthropic_request import MessagesRequest
    from orchestrator.proxy import ProxyStream

_ENGINE_ID_PREFIX = "chatcmpl-"
_ANTHROPIC_ID_PREFIX = "msg_"
# Substrings of every event that needs fixing; a chunk with none of them is passed on as is.
_MARKERS = (b"event: message_", b'"tool_use"', b"event: error")


def fix_stop(holder: dict[str, Any], request: MessagesRequest) -> None:
    """Make ``stop_reason``/``stop_sequence`` of a message or ``message_delta`` Anthropic's."""
    sequence = holder.get("stop_sequence")
    if not isinstance(sequence, str):
        return
    if sequence in request.stop_sequences:
        if holder.get("stop_reason") == "end_turn":
            holder["stop_reason"] = "stop_sequence"
    else:
        holder["stop_sequence"] = None


def fix_message(message: dict[str, Any], request: MessagesRequest) -> dict[str, Any]:
    """Fix a whole message (or ``message_start``'s) in place; return it."""
    message["model"] = request.model
    message_id = message.get("id")
    if isinstance(message_id, str) and message_id.startswith(_ENGINE_ID_PREFIX):
        message["id"] = _ANTHROPIC_ID_PREFIX + message_id[len(_ENGINE_ID_PREFIX) :]
    fix_stop(message, request)
    for block in message.get("content") or ():
        if isinstance(block, dict) and block.get("type") == "tool_use":
            block.setdefault("input", {})
    return message


def fix_message_bytes(data: bytes, request: MessagesRequest) -> bytes | None:
    """Return a whole JSON message fixed, ``None`` when it is not a JSON message."""
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "message":
        return None
    return json.dumps(fix_message(message, request), ensure_ascii=False).encode()


def _fix_data(name: str, data: dict[str, Any], request: MessagesRequest) -> dict[str, Any]:
    if name == "message_start" and isinstance(data.get("message"), dict):
        fix_message(data["message"], request)
    elif name == "message_delta" and isinstance(data.get("delta"), dict):
        fix_stop(data["delta"], request)
    elif name == "content_block_start" and isinstance(data.get("content_block"), dict):
        block = data["content_block"]
        if block.get("type") == "tool_use":
            block.setdefault("input", {})
    elif name == "error" and data.get("type") != "error":
        # The engine's own error object ({"code", "message", "type"}) in Anthropic's envelope.
        code = data.get("code")
        status = code if isinstance(code, int) else 500
        data = {
            "type": "error",
            "error": {
                "type": anthropic_error_type(status),
                "message": str(data.get("message") or "the engine failed during the answer"),
            },
        }
    return data


def fix_event(event: bytes, request: MessagesRequest) -> bytes:
    """Return one SSE event (without its blank line) fixed; unknown shapes unchanged."""
    name = ""
    data_line = -1
    lines = event.split(b"\n")
    for index, line in enumerate(lines):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            data_line = index
    if data_line < 0 or name not in ("message_start", "message_delta", "content_block_start",
                                     "error"):  # fmt: skip
        return event
    try:
        data = json.loads(lines[data_line][5:])
    except ValueError:
        return event
    if not isinstance(data, dict):
        return event
    fixed = _fix_data(name, data, request)
    lines[data_line] = b"data: " + json.dumps(fixed, ensure_ascii=False).encode()
    return b"\n".join(lines)


def fix_chunk(chunk: bytes, request: MessagesRequest) -> bytes:
    """Return a chunk of whole SSE events with the events that need it fixed."""
    if not (_MARKERS[0] in chunk or _MARKERS[1] in chunk or _MARKERS[2] in chunk):
        return chunk
    if b"\r\n" in chunk:  # llama-server ends lines with LF; be lenient with CRLF
        chunk = chunk.replace(b"\r\n", b"\n")
    # The chunk ends with a blank line, so the last piece is empty.
    return b"\n\n".join(fix_event(event, request) if event else event
                         for event in chunk.split(b"\n\n"))  # fmt: skip


class FixedStream:
    """The engine's event stream with :func:`fix_chunk` applied; closes what it wraps.

    Falcon hands this iterable to gunicorn, which calls :meth:`close` after the last chunk or
    a failed write; the wrapped :class:`~orchestrator.proxy.ProxyStream` then releases the
    runner and the connection.
    """

    def __init__(self, stream: ProxyStream, request: MessagesRequest) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        request = self._request
        for chunk in self._stream:
            yield fix_chunk(chunk, request)

    def close(self) -> None:
        """Close the engine stream (idempotent)."""
        self._stream.close()

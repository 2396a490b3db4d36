"""What the request recorder keeps of a body: requests made safe and small, answers made whole.

Pure functions, no I/O, so the rules are unit-tested on their own and the recorder
(:mod:`orchestrator.api.request_log`) runs them off the streaming hot path: a request body is
cleaned when its answer has ended, an answer is put back together when someone reads it.

Requests (:func:`clean_request`), as DMR's ``truncateMediaFields`` and more:

- base64 media is cut to its first 100 characters plus ``...[truncated N chars]``: any
  ``data:`` URI (``image_url.url``, ``input_image.image_url``, Ollama's and Anthropic's too) and
  raw base64 under the keys media travels in (``input_audio.data``, Anthropic's
  ``source.data``, Ollama's ``images``);
- secrets are redacted: the value of any key named like a credential (``authorization``,
  ``api_key``, ``x-api-key``, ``password``, ``access_token``...) at any depth becomes
  ``[redacted]``. Request bodies carry them where a client forwards credentials to a tool
  (the Responses API's MCP tools take ``headers``/``authorization``). Prompts are not touched:
  showing them is the recorder's purpose, and the route is behind ``DMR_API_KEY``.

Answers (:func:`replay_answer`): a JSON answer is kept as text; a server-sent event stream is
turned into the one JSON answer a non-streamed request would have got, as DMR does: OpenAI
chat and text completions (content, reasoning and tool-call arguments concatenated per choice),
Anthropic messages (text, thinking and tool input per block) and Responses API streams (the
final ``response`` object). An error status, an ``error:`` line of llama-server or an error
event becomes the record's ``error`` instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_MEDIA_CHARS = 100
REDACTED = "[redacted]"
SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "access_token",
        "refresh_token",
        "id_token",
        "bearer_token",
        "cookie",
        "set-cookie",
    }
)
# Keys whose string values (or list of strings) are raw base64 media, not text.
_RAW_MEDIA_KEYS = frozenset({"data", "images"})
_BASE64 = re.compile(r"[A-Za-z0-9+/=_\-\s]+\Z")


def truncate_media(value: str) -> str:
    """Return ``value`` with base64 data past :data:`MAX_MEDIA_CHARS` cut (DMR's wording)."""
    if value.startswith("data:"):
        head, sep, data = value.partition(",")
        if sep and len(data) > MAX_MEDIA_CHARS:
            dropped = len(data) - MAX_MEDIA_CHARS
            return f"{head},{data[:MAX_MEDIA_CHARS]}...[truncated {dropped} chars]"
        return value
    if len(value) > MAX_MEDIA_CHARS:
        dropped = len(value) - MAX_MEDIA_CHARS
        return f"{value[:MAX_MEDIA_CHARS]}...[truncated {dropped} chars]"
    return value


def cap_text(text: str, limit: int) -> str:
    """Return ``text`` cut to ``limit`` characters, saying how many were dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[truncated {len(text) - limit} chars]"


def _clean_string(value: str, key: str | None) -> str:
    if len(value) <= MAX_MEDIA_CHARS:
        return value
    if value.startswith("data:") and ";base64," in value[:200]:
        return truncate_media(value)
    if key in _RAW_MEDIA_KEYS and _BASE64.match(value):
        return truncate_media(value)
    return value


def _clean(value: Any, key: str | None) -> Any:
    """Return ``value`` cleaned; the very same object when nothing had to change."""
    if isinstance(value, str):
        return _clean_string(value, key)
    if isinstance(value, list):
        items = [_clean(item, key) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for name, item in value.items():
            if name.lower() in SECRET_KEYS and item not in (None, ""):
                new: Any = REDACTED
            else:
                new = _clean(item, name)
            changed = changed or new is not item
            out[name] = new
        return out if changed else value
    return value


def clean_request(body: bytes, limit: int) -> str:
    """Return the request body as the recorder shows it: media cut, secrets redacted, capped.

    A body that is not JSON is kept as text (capped); one that needed no change keeps its
    original bytes and spacing.
    """
    text = body.decode("utf-8", "replace")
    try:
        value = json.loads(body)
        cleaned = _clean(value, None)
    except (ValueError, RecursionError):
        return cap_text(text, limit)
    if cleaned is not value:
        text = json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    return cap_text(text, limit)


def error_json(text: str) -> str:
    """Return ``text`` if it is JSON, else ``{"error": text}`` (DMR's normalizeErrorToJSON)."""
    if not text.strip():
        return json.dumps({"error": "unknown error"})
    try:
        json.loads(text)
    except ValueError:
        return json.dumps({"error": text})
    return text


def sse_events(raw: str) -> list[tuple[str, str]]:
    """Return ``(event name, data)`` of each event; llama-server's ``error:`` lines included."""
    events: list[tuple[str, str]] = []
    for block in re.split(r"\r?\n\r?\n", raw):
        name = "message"
        data: list[str] = []
        for line in block.splitlines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("error:"):
                events.append(("error", line[6:].strip()))
        if data:
            events.append((name, "\n".join(data)))
    return events


def _new_choice(index: int) -> dict[str, Any]:
    return {"index": index, "content": [], "reasoning": [], "text": [], "tools": {}, "finish": None}


def _fold_tool_calls(state: dict[str, Any], calls: Any) -> None:
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict):
            continue
        slot = state["tools"].setdefault(
            call.get("index", len(state["tools"])),
            {"id": None, "type": "function", "name": "", "arguments": []},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        if isinstance(function.get("name"), str):
            slot["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            slot["arguments"].append(function["arguments"])


def _fold_choice(choices: dict[int, dict[str, Any]], choice: dict[str, Any]) -> None:
    index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
    state = choices.setdefault(index, _new_choice(index))
    delta = choice.get("delta")
    if isinstance(delta, dict):
        if isinstance(delta.get("content"), str):
            state["content"].append(delta["content"])
        if isinstance(delta.get("reasoning_content"), str):
            state["reasoning"].append(delta["reasoning_content"])
        _fold_tool_calls(state, delta.get("tool_calls"))
    if isinstance(choice.get("text"), str):
        state["text"].append(choice["text"])
    if choice.get("finish_reason"):
        state["finish"] = choice["finish_reason"]


def _final_choice(state: dict[str, Any], text_completion: bool) -> dict[str, Any]:
    if text_completion:
        return {
            "index": state["index"],
            "text": "".join(state["text"]),
            "finish_reason": state["finish"] or "stop",
        }
    message: dict[str, Any] = {"role": "assistant", "content": "".join(state["content"])}
    if state["reasoning"]:
        message["reasoning_content"] = "".join(state["reasoning"])
    if state["tools"]:
        message["tool_calls"] = [
            {
                "id": slot["id"],
                "type": slot["type"],
                "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])},
            }
            for _index, slot in sorted(state["tools"].items())
        ]
    return {"index": state["index"], "message": message, "finish_reason": state["finish"] or "stop"}


def _openai_answer(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    choices: dict[int, dict[str, Any]] = {}
    text_completion = False
    for chunk in chunks:
        text_completion = text_completion or chunk.get("object") == "text_completion"
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                _fold_choice(choices, choice)
    final = dict(chunks[-1])
    final["object"] = "text_completion" if text_completion else "chat.completion"
    final["choices"] = [
        _final_choice(state, text_completion) for _index, state in sorted(choices.items())
    ]
    return final


def _anthropic_answer(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, list[str]] = {}
    for chunk in chunks:
        kind = chunk.get("type")
        if kind == "message_start" and isinstance(chunk.get("message"), dict):
            message = dict(chunk["message"])
        elif kind == "content_block_start" and isinstance(chunk.get("content_block"), dict):
            blocks[chunk.get("index", len(blocks))] = dict(chunk["content_block"])
        elif kind == "content_block_delta" and isinstance(chunk.get("delta"), dict):
            block = blocks.setdefault(chunk.get("index", 0), {"type": "text", "text": ""})
            delta = chunk["delta"]
            for field in ("text", "thinking"):
                if isinstance(delta.get(field), str):
                    block[field] = block.get(field, "") + delta[field]
            if isinstance(delta.get("partial_json"), str):
                partial_json.setdefault(chunk.get("index", 0), []).append(delta["partial_json"])
        elif kind == "message_delta" and message is not None:
            if isinstance(chunk.get("delta"), dict):
                message.update({k: v for k, v in chunk["delta"].items() if v is not None})
            if isinstance(chunk.get("usage"), dict):
                message["usage"] = {**(message.get("usage") or {}), **chunk["usage"]}
    if message is None:
        return None
    for index, parts in partial_json.items():
        try:
            blocks[index]["input"] = json.loads("".join(parts) or "{}")
        except (ValueError, KeyError):
            blocks.setdefault(index, {})["input"] = "".join(parts)
    message["content"] = [block for _index, block in sorted(blocks.items())]
    message.setdefault("stop_reason", "end_turn")
    return message


def _stream_error(name: str, value: Any, data: str) -> str | None:
    """Return the record's error for an error event, ``None`` for any other event."""
    if name == "error":
        return error_json(data)
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind in ("error", "response.failed"):
        return data
    if kind is None and "error" in value and "choices" not in value:
        return data  # the proxy's error event: {"error": {...}}
    return None


def replay_stream(raw: str) -> tuple[str, str]:
    """Return ``(response, error)`` for an event stream: one final JSON answer, or the error.

    An unknown kind of stream is returned as it is.
    """
    chunks: list[dict[str, Any]] = []
    for name, data in sse_events(raw):
        if data == "[DONE]":
            break
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        failure = _stream_error(name, value, data)
        if failure is not None:
            return "", failure
        if isinstance(value, dict):
            chunks.append(value)
    if not chunks:
        return raw, ""
    kinds = {chunk.get("type") for chunk in chunks}
    finals = ("response.completed", "response.incomplete")
    completed = [chunk for chunk in chunks if chunk.get("type") in finals]
    answer: dict[str, Any] | None
    if completed and isinstance(completed[-1].get("response"), dict):
        answer = completed[-1]["response"]
    elif "message_start" in kinds:
        answer = _anthropic_answer(chunks)
    elif any("choices" in chunk for chunk in chunks):
        answer = _openai_answer(chunks)
    else:
        answer = None
    if answer is None:
        return raw, ""
    return json.dumps(answer, ensure_ascii=False), ""


def replay_answer(raw: bytes, *, status: int, is_sse: bool) -> tuple[str, str]:
    """Return ``(response, error)`` of a finished answer as the recorder shows them.

    Args:
        raw: The answer's body bytes as kept (possibly cut short by the recorder's cap).
        status: The HTTP status the client got.
        is_sse: Whether the body was ``text/event-stream``.
    """
    text = raw.decode("utf-8", "replace")
    if status >= 400:
        return "", error_json(text)
    if is_sse:
        return replay_stream(text)
    return text, ""

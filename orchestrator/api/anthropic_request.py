"""Checking an Anthropic Messages body before llama-server sees it, and the two fixes it needs.

llama-server converts an Anthropic body to a chat request itself
(``server_chat_convert_anthropic_to_oai``), but it checks almost nothing: a body without
``messages`` is its 500 ("'messages' is required"), ``"messages": 3`` or a message that is a
number silently becomes an empty prompt. :func:`check_request` refuses those with Anthropic's
own 400 (``invalid_request_error``, the field named first in the message) so a client's
mistake is never a 500 or a made-up answer. ``"max_tokens": 0`` is valid (Anthropic: fill the
prompt cache, generate nothing); the engine would generate a token, so the face answers it
itself (:mod:`orchestrator.api.anthropic_warm`).

Two request fields the engine reads wrongly are rewritten by :func:`tool_choice_rewrite` (the
only time the client's bytes are not forwarded as they are):

- ``tool_choice: {"type": "none"}`` is ignored by the engine (only ``auto``/``any``/``tool``
  are read), so the model is still offered every tool. Anthropic's meaning is "do not call
  tools": the tools are left out of the engine's request.
- ``tool_choice: {"type": "tool", "name": N}`` becomes "call some tool" (``required``) over
  every tool. Anthropic's meaning is "call N": only tool N is sent.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from orchestrator.errors import InvalidRequestError

_ROLES = ("user", "assistant")
_TOOL_CHOICES = ("auto", "any", "tool", "none")
# Block fields that must be strings when present, by block type.
_STRING_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "thinking": ("thinking",),
    "tool_use": ("id", "name"),
    "tool_result": ("tool_use_id",),
}


@dataclasses.dataclass(frozen=True)
class MessagesRequest:
    """What the face needs of a checked body.

    Attributes:
        model: The model name as the client gave it.
        stream: Whether the answer is server-sent events.
        warm_only: ``max_tokens`` is 0: fill the prompt cache, generate nothing.
        stop_sequences: The client's stop sequences (to tell ``stop_sequence`` from
            ``end_turn`` in the answer).
    """

    model: str
    stream: bool
    stop_sequences: tuple[str, ...]
    warm_only: bool = False


def _fail(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def _check_blocks(blocks: list[Any], where: str) -> None:
    """Check a list of content blocks (each an object with a string ``type``)."""
    for index, block in enumerate(blocks):
        at = f"{where}.{index}"
        if not isinstance(block, dict):
            raise _fail("each content block must be an object such as "
                        '{"type": "text", "text": "..."}', at)  # fmt: skip
        kind = block.get("type")
        if not isinstance(kind, str):
            raise _fail('each content block needs a string "type" (text, image, tool_use, '
                        "tool_result...)", f"{at}.type")  # fmt: skip
        for field in _STRING_FIELDS.get(kind, ()):
            if not isinstance(block.get(field), str):
                raise _fail(f"a {kind} block needs a string {field!r}", f"{at}.{field}")
        if kind == "tool_use" and not isinstance(block.get("input", {}), dict):
            raise _fail("the input of a tool_use block must be an object", f"{at}.input")
        if kind == "image" and not isinstance(block.get("source"), dict):
            raise _fail("an image block needs a source object", f"{at}.source")
        if kind == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                _check_blocks(content, f"{at}.content")
            elif content is not None and not isinstance(content, str):
                raise _fail("the content of a tool_result must be a string or a list of blocks",
                            f"{at}.content")  # fmt: skip


def _check_messages(payload: dict[str, Any]) -> None:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _fail('required: a non-empty list such as [{"role": "user", "content": "Hi"}]',
                    "messages")  # fmt: skip
    for index, message in enumerate(messages):
        at = f"messages.{index}"
        if not isinstance(message, dict):
            raise _fail('each message must be an object with "role" and "content"', at)
        role = message.get("role")
        if role not in _ROLES:
            raise _fail(f"role must be 'user' or 'assistant' (the system prompt goes in the "
                        f"top-level 'system'), got {role!r}", f"{at}.role")  # fmt: skip
        content = message.get("content")
        if isinstance(content, list):
            _check_blocks(content, f"{at}.content")
        elif not isinstance(content, str):
            raise _fail("content must be a string or a list of content blocks", f"{at}.content")


def _check_system(payload: dict[str, Any]) -> None:
    system = payload.get("system")
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _fail("must be a string or a list of text blocks", "system")
    for index, block in enumerate(system):
        if not (isinstance(block, dict) and block.get("type") == "text"
                and isinstance(block.get("text"), str)):  # fmt: skip
            raise _fail('each system block must be {"type": "text", "text": "..."}',
                        f"system.{index}")  # fmt: skip


def _check_numbers(payload: dict[str, Any], *, generating: bool) -> None:
    max_tokens = payload.get("max_tokens")
    if (
        generating
        and max_tokens is not None
        and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0)
    ):
        raise _fail(f"must be a non-negative integer, got {max_tokens!r}", "max_tokens")
    for key in ("temperature", "top_p"):
        value = payload.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise _fail(f"must be a number, got {value!r}", key)
    top_k = payload.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _fail(f"must be a non-negative integer, got {top_k!r}", "top_k")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _fail(f"must be true or false, got {stream!r}", "stream")


def _check_tools(payload: dict[str, Any]) -> None:
    tools = payload.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("must be a list of tools", "tools")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _fail('each tool needs a string "name"', f"tools.{index}.name")
            if not isinstance(tool.get("input_schema", {}), dict):
                raise _fail("input_schema must be a JSON schema object",
                            f"tools.{index}.input_schema")  # fmt: skip
            names.append(tool["name"])
    choice = payload.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise _fail("must be an object whose type is auto, any, tool or none", "tool_choice")
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise _fail(f"names no tool of the request: {choice.get('name')!r}", "tool_choice.name")


def _stop_sequences(payload: dict[str, Any]) -> tuple[str, ...]:
    stops = payload.get("stop_sequences")
    if stops is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(stop, str) and stop for stop in stops):
        raise _fail("must be a list of non-empty strings", "stop_sequences")
    return tuple(stops)


def check_request(payload: dict[str, Any], model: str, *, generating: bool) -> MessagesRequest:
    """Check a Messages (``generating``) or count_tokens body; return what the face needs.

    Raises:
        InvalidRequestError: A field is missing or of the wrong shape (``param`` names it).
    """
    _check_messages(payload)
    _check_system(payload)
    _check_numbers(payload, generating=generating)
    _check_tools(payload)
    stops = _stop_sequences(payload)
    return MessagesRequest(
        model=model,
        stream=payload.get("stream") is True,
        stop_sequences=stops,
        warm_only=generating and payload.get("max_tokens") == 0,
    )


def tool_choice_rewrite(payload: dict[str, Any]) -> dict[str, Any] | None:
    """Return the body with the ``tool_choice`` rewrite of the module docstring, or ``None``
    when the body needs none."""
    choice = payload.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in ("none", "tool"):
        return None
    rewritten = dict(payload)
    if choice["type"] == "none":
        rewritten.pop("tools", None)
        rewritten.pop("tool_choice", None)
    else:
        rewritten["tools"] = [tool for tool in payload["tools"] if tool["name"] == choice["name"]]
    return rewritten


def engine_body(payload: dict[str, Any], body: bytes) -> bytes:
    """Return the bytes to send to the engine: ``body`` itself unless ``tool_choice`` needs
    rewriting."""
    rewritten = tool_choice_rewrite(payload)
    return body if rewritten is None else json.dumps(rewritten).encode()

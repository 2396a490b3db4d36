"""Reading a ``POST /v1/responses`` body: every field checked, the input made into items.

:func:`parse_request` returns a :class:`ResponsesRequest` or raises
:class:`~orchestrator.errors.InvalidRequestError` with ``param`` naming the field at fault
(``input[2].content[0].type``, ``tools[1].name``...), so a bad request is always a 400 in the
OpenAI shape and never reaches the engine. Unknown top-level fields are ignored, as OpenAI's
own API ignores those its SDKs do not send; the fields DMR refuses (spec 1.9: ``include``,
``stream_options``, ``top_logprobs``, ``truncation`` other than ``disabled``, ``background``,
``conversation``, ``prompt``, ``service_tier``, ``safety_identifier``) are refused here too.

The input, a string or a list of items, becomes a list of items in the API's own output shape
(``message`` with ``input_text``/``input_image``/``output_text`` parts, ``function_call``,
``function_call_output``), each with an id and ``status: completed``. That list is what
``GET .../input_items`` lists and what a later ``previous_response_id`` replays, in the same
form as the output items a response answers with, so one converter
(:func:`orchestrator.api.responses_translate.chat_messages`) turns both into chat messages.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import string
from typing import Any

from orchestrator.errors import InvalidRequestError

_ID_ALPHABET = string.ascii_lowercase + string.digits
_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOOL_CHOICE_WORDS = ("none", "auto", "required")
_ROLES = ("user", "system", "developer", "assistant")
# OpenAI's limits on metadata: 16 pairs, keys of 64 characters, values of 512.
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_UNSUPPORTED = (
    "the Responses API of Docker Model Runner has no {field} (a hosted-OpenAI feature); "
    "leave it out"
)


def new_id(prefix: str) -> str:
    """Return ``<prefix>_`` + 24 random ``[a-z0-9]`` characters (OpenAI's and DMR's id shape)."""
    return prefix + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclasses.dataclass
class ResponsesRequest:
    """A checked create request.

    Attributes:
        model: The model name as the client gave it.
        input_items: The input as items (ids assigned).
        instructions: The system text (not carried over by ``previous_response_id``).
        previous_response_id: The response this one continues.
        tools: Function tools in the Responses shape (echoed in the response).
        tool_choice: ``auto``/``none``/``required`` or ``{"type": "function", "name"}``.
        parallel_tool_calls: Whether the model may call several tools at once.
        temperature, top_p: Sampling, as given.
        max_output_tokens: The generation cap (``max_tokens`` for the engine).
        text: The ``text`` configuration echoed in the response.
        metadata: Up to 16 string pairs, echoed.
        user: The end-user id, echoed.
        reasoning_effort: ``reasoning.effort`` (or DMR's top-level ``reasoning_effort``).
        store: Whether to keep the response for retrieval and chaining.
        stream: Whether to answer with server-sent events.
    """

    model: str
    input_items: list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: dict[str, Any] = dataclasses.field(default_factory=lambda: {"format": {"type": "text"}})
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    user: str | None = None
    reasoning_effort: str | None = None
    store: bool = True
    stream: bool = False


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _optional_str(body: dict[str, Any], key: str, where: str | None = None) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _bad(f"{where or key} must be a string, got {value!r}", where or key)


def _required_str(body: dict[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if isinstance(value, str) and value:
        return value
    raise _bad(f"{where} is required and must be a non-empty string, got {value!r}", where)


def _optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise _bad(f"{key} must be true or false, got {value!r}", key)


def _optional_number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"{key} must be a number from {low:g} to {high:g}, got {value!r}", key)
    return float(value)


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_output_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(
            f"max_output_tokens must be a whole number of at least 1, got {value!r}",
            "max_output_tokens",
        )
    return value


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Refuse what DMR refuses (spec 1.9): hosted features with no local meaning."""
    if body.get("include"):
        raise _bad(_UNSUPPORTED.format(field="include"), "include")
    for key in ("stream_options", "top_logprobs", "conversation", "prompt"):
        if body.get(key) is not None:
            raise _bad(_UNSUPPORTED.format(field=key), key)
    for key in ("service_tier", "safety_identifier"):
        if body.get(key) not in (None, ""):
            raise _bad(_UNSUPPORTED.format(field=key), key)
    if body.get("truncation") not in (None, "", "disabled"):
        raise _bad(
            f"truncation {body['truncation']!r} is not supported; only 'disabled' (the engine "
            "refuses a prompt over the context instead of cutting it)",
            "truncation",
        )
    if body.get("background") not in (None, False):
        raise _bad(
            "background responses are not supported; send the request and wait (or stream)",
            "background",
        )


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _METADATA_PAIRS:
        raise _bad(
            f"metadata must be an object of at most {_METADATA_PAIRS} string pairs", "metadata"
        )
    for key, item in value.items():
        if len(key) > _METADATA_KEY or not isinstance(item, str) or len(item) > _METADATA_VALUE:
            raise _bad(
                f"metadata[{key!r}] must be a string of at most {_METADATA_VALUE} characters "
                f"under a key of at most {_METADATA_KEY}",
                "metadata",
            )
    return dict(value)


def _tool(index: int, tool: Any) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise _bad(f"{where} must be an object such as {{'type': 'function', ...}}", where)
    if tool.get("type") != "function":
        raise _bad(
            f"{where}.type {tool.get('type')!r} is not supported: only function tools run "
            "locally (hosted tools such as web_search need OpenAI)",
            f"{where}.type",
        )
    # Also DMR's nested chat-style form, {"type": "function", "function": {...}}.
    spec = tool["function"] if isinstance(tool.get("function"), dict) else tool
    name = _required_str(spec, "name", f"{where}.name")
    parameters = spec.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _bad(f"{where}.parameters must be a JSON schema object", f"{where}.parameters")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad(f"{where}.strict must be true or false", f"{where}.strict")
    return {
        "type": "function",
        "name": name,
        "description": _optional_str(spec, "description", f"{where}.description"),
        "parameters": parameters,
        "strict": strict,
    }


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("tools")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools must be a list of function tools", "tools")
    return [_tool(index, tool) for index, tool in enumerate(value)]


def _tool_choice(body: dict[str, Any]) -> str | dict[str, Any]:
    value = body.get("tool_choice")
    if value is None:
        return "auto"
    if value in _TOOL_CHOICE_WORDS:
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "name": _required_str(value, "name", "tool_choice.name")}
    raise _bad(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}, "
        f"got {value!r}",
        "tool_choice",
    )


def _text(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("text")
    if value is None:
        return {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise _bad("text must be an object such as {'format': {'type': 'text'}}", "text")
    fmt = value.get("format")
    if fmt is None:
        fmt = {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad(
            "text.format.type must be 'text', 'json_object' or 'json_schema'", "text.format.type"
        )
    text: dict[str, Any] = {"format": {"type": fmt["type"]}}
    if value.get("verbosity") is not None:
        text["verbosity"] = value["verbosity"]
    if fmt["type"] != "json_schema":
        return text
    name = fmt.get("name")
    if not isinstance(name, str) or not _FORMAT_NAME.match(name):
        raise _bad(
            "text.format.name is required with json_schema: letters, digits, _ and - only, "
            "at most 64",
            "text.format.name",
        )
    if not isinstance(fmt.get("schema"), dict):
        raise _bad("text.format.schema must be a JSON schema object", "text.format.schema")
    strict = fmt.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad("text.format.strict must be true or false", "text.format.strict")
    text["format"].update(
        name=name,
        schema=fmt["schema"],
        strict=strict,
        description=_optional_str(fmt, "description", "text.format.description"),
    )
    return text


def _reasoning_effort(body: dict[str, Any]) -> str | None:
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _bad("reasoning must be an object such as {'effort': 'low'}", "reasoning")
        effort = _optional_str(reasoning, "effort", "reasoning.effort")
        if effort is not None:
            return effort
    return _optional_str(body, "reasoning_effort")


def _text_part(part: dict[str, Any], where: str, kind: str) -> dict[str, Any]:
    text = part.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text must be a string", f"{where}.text")
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


def _image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if isinstance(url, dict):  # chat style {"url": ...}
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise _bad(
            f"{where}.image_url must be the image's URL or data: URL (file_id needs OpenAI's "
            "file store)",
            f"{where}.image_url",
        )
    detail = part.get("detail") or "auto"
    return {"type": "input_image", "image_url": url, "detail": detail}


def _content_part(part: Any, where: str, role: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _bad(f"{where} must be an object such as {{'type': 'input_text', ...}}", where)
    kind = part.get("type")
    if kind in ("input_text", "text"):
        return _text_part(part, where, "output_text" if role == "assistant" else "input_text")
    if kind == "output_text":
        return _text_part(part, where, "output_text")
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind in ("input_image", "image_url") and role != "assistant":
        return _image_part(part, where)
    raise _bad(
        f"{where}.type {kind!r} is not supported here: use input_text or input_image (files and "
        "audio need OpenAI)",
        f"{where}.type",
    )


def _message_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise _bad(
            f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}", f"{where}.role"
        )
    content = item.get("content")
    if isinstance(content, str):
        parts = [_content_part({"type": "input_text", "text": content}, where, role)]
    elif isinstance(content, list):
        parts = [
            _content_part(part, f"{where}.content[{index}]", role)
            for index, part in enumerate(content)
        ]
    else:
        raise _bad(f"{where}.content must be a string or a list of parts", f"{where}.content")
    item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("msg")
    return {"id": item_id, "type": "message", "role": role, "content": parts, "status": "completed"}


def _function_call_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("fc")
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": _required_str(item, "call_id", f"{where}.call_id"),
        "name": _required_str(item, "name", f"{where}.name"),
        "arguments": _optional_str(item, "arguments", f"{where}.arguments") or "",
        "status": "completed",
    }


def _function_output_item(item: dict[str, Any], where: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for index, part in enumerate(output):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise _bad(
                    f"{where}.output[{index}] must be a text part ({{'type': 'input_text', "
                    "'text': ...}})",
                    f"{where}.output[{index}]",
                )
            texts.append(part["text"])
        output = "".join(texts)
    if not isinstance(output, str):
        raise _bad(f"{where}.output must be a string", f"{where}.output")
    item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("fco")
    return {
        "id": item_id,
        "type": "function_call_output",
        "call_id": _required_str(item, "call_id", f"{where}.call_id"),
        "output": output,
        "status": "completed",
    }


def input_items(value: Any) -> list[dict[str, Any]]:
    """Return the ``input`` field as items (see the module docstring).

    Raises:
        InvalidRequestError: Not a string or list, or an item or part this face cannot run.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [_message_item({"role": "user", "content": value}, "input")]
    if not isinstance(value, list):
        raise _bad("input must be a string or a list of input items", "input")
    items = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object such as {{'role': 'user', ...}}", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            items.append(_message_item(item, where))
        elif kind == "function_call":
            items.append(_function_call_item(item, where))
        elif kind == "function_call_output":
            items.append(_function_output_item(item, where))
        else:
            raise _bad(
                f"{where}.type {kind!r} is not supported: use message, function_call or "
                "function_call_output items",
                f"{where}.type",
            )
    return items


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """Return the checked request in ``body``.

    Raises:
        InvalidRequestError: A field is missing, of the wrong type, or refused.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad(
            f"model is required: name the model to use, e.g. 'ai/smollm2' (got {model!r})",
            "model",
        )
    _refuse_unsupported(body)
    previous = _optional_str(body, "previous_response_id")
    items = input_items(body.get("input"))
    if not items and not previous:
        raise _bad("input is required: a string or a list of input items", "input")
    return ResponsesRequest(
        model=model.strip(),
        input_items=items,
        instructions=_optional_str(body, "instructions"),
        previous_response_id=previous or None,
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        parallel_tool_calls=_optional_bool(body, "parallel_tool_calls", True),
        temperature=_optional_number(body, "temperature", 0.0, 2.0),
        top_p=_optional_number(body, "top_p", 0.0, 1.0),
        max_output_tokens=_max_output_tokens(body),
        text=_text(body),
        metadata=_metadata(body),
        user=_optional_str(body, "user"),
        reasoning_effort=_reasoning_effort(body),
        store=_optional_bool(body, "store", True),
        stream=_optional_bool(body, "stream", False),
    )

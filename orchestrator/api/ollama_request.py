"""Ollama requests (``/api/chat``, ``/api/generate``, ``/api/embed``) as OpenAI bodies.

Pure functions: the resources in :mod:`orchestrator.api.ollama` read the body, these check it
and build the chat completions (or embeddings) body llama-server gets, plus the runner settings
the request asks for (:class:`RunnerWish`). Anything malformed is an
:class:`~orchestrator.errors.InvalidRequestError` naming the field, so a client gets a 400 in
Ollama's shape, never an engine 500.

``options`` (Ollama's sampling and runner options, docs/api.md "Valid Parameters"):

=====================  =======================================================================
Ollama                 OpenAI body / runner
=====================  =======================================================================
``num_predict``        ``max_tokens`` (negative, Ollama's "no limit", sends none)
``temperature``,       the same keys (``top_k``, ``min_p``, ``typical_p``, ``repeat_penalty``,
``top_p``, ``top_k``,  ``repeat_last_n``, ``mirostat*`` are llama-server's own extensions of
``seed``, ``stop``...  the OpenAI body)
``num_keep``           ``n_keep``
``num_ctx``            the runner's context size (:class:`RunnerWish`; not a body key)
anything else          ignored (``num_gpu``, ``num_thread``...: fixed by the runner's flags)
=====================  =======================================================================
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from orchestrator.errors import InvalidRequestError
from orchestrator.settings import parse_duration

# Ollama option -> OpenAI/llama-server key, for floats and for integers.
_FLOAT_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}
_INT_OPTIONS = {
    "top_k": "top_k",
    "seed": "seed",
    "repeat_last_n": "repeat_last_n",
    "mirostat": "mirostat",
    "num_keep": "n_keep",
}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1
# A keep-alive shorter than this is Ollama's "unload when done" (0): it applies to the request
# that asks for it and is not stored, so one such request does not make every later request of
# every client start the runner afresh.
MIN_KEEP_ALIVE_SECONDS = 1.0
# llama.cpp pads the context to 256 tokens and aborts at load with a context of one token.
MIN_CONTEXT = 256
# Base64 openings of the image formats llama-server's mtmd reads (DMR's sniffing).
_IMAGE_PREFIXES = (("/9j/", "image/jpeg"), ("iVBOR", "image/png"), ("R0lG", "image/gif"))


@dataclasses.dataclass(frozen=True)
class RunnerWish:
    """What one request asks of its model's runner (``None``: no change asked).

    Attributes:
        context_size: ``options.num_ctx``.
        keep_alive: ``keep_alive`` in seconds to keep as the runner's setting (``-1`` never).
        reasoning_budget: ``think``: ``-1`` (true) or ``0`` (false), as DMR maps it.
        unload_after: ``keep_alive`` was under :data:`MIN_KEEP_ALIVE_SECONDS` (``0``): stop the
            runner once this request is done, and leave the stored setting alone.
    """

    context_size: int | None = None
    keep_alive: float | None = None
    reasoning_budget: int | None = None
    unload_after: bool = False

    @property
    def empty(self) -> bool:
        """Return whether nothing is asked."""
        return self == RunnerWish()


def model_name(body: dict[str, Any]) -> str:
    """Return ``model``, else ``name`` (Ollama's older field), stripped.

    Raises:
        InvalidRequestError: Neither is a non-empty string.
    """
    for key in ("model", "name"):
        value = body.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequestError(f"{key} must be a model name, got {value!r}", param=key)
        return value.strip()
    raise InvalidRequestError(
        "model is required: name the model to use, e.g. 'ai/smollm2'", param="model"
    )


def stream_flag(body: dict[str, Any]) -> bool:
    """Return ``stream`` (Ollama streams unless told ``false``).

    Raises:
        InvalidRequestError: Not a boolean.
    """
    value = body.get("stream")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise InvalidRequestError(f"stream must be true or false, got {value!r}", param="stream")
    return value


def optional_text(body: dict[str, Any], key: str) -> str:
    """Return ``body[key]`` as a string (``""`` when absent or null).

    Raises:
        InvalidRequestError: Present but not a string.
    """
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{key} must be a string, got {value!r}", param=key)
    return value


def parse_keep_alive(value: object, param: str = "keep_alive") -> float | None:
    """Return Ollama's ``keep_alive`` in seconds: a duration string or a number of seconds.

    Negative means "never unload" (``-1``); ``None`` or ``""``: not given.

    Raises:
        InvalidRequestError: Neither a duration nor a number.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequestError(
            f"{param} must be a duration such as '5m' or a number of seconds, got {value!r}",
            param=param,
        )
    try:
        seconds = parse_duration(value)
    except ValueError as ex:
        raise InvalidRequestError(
            f"{param} {value!r} is not a duration; use a value such as '10m', '1h', 300, "
            "0 (unload when idle) or -1 (keep loaded)",
            param=param,
        ) from ex
    return -1.0 if seconds < 0 else seconds


def _number(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(
            f"options.{key} must be a number, got {value!r}", param=f"options.{key}"
        )
    return float(value)


def _integer(options: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = _number(options, key)
    if value is None:
        return None
    if value != int(value) or not low <= value <= high:
        raise InvalidRequestError(
            f"options.{key} must be a whole number from {low} to {high}, got "
            f"{options[key]!r}",
            param=f"options.{key}",
        )
    return int(value)


def _stop(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequestError(
        f"options.stop must be a list of strings, got {value!r}", param="options.stop"
    )


def options_of(body: dict[str, Any]) -> dict[str, Any]:
    """Return ``options`` (``{}`` when absent).

    Raises:
        InvalidRequestError: Not an object.
    """
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidRequestError(
            f'options must be an object such as {{"temperature": 0}}, got {options!r}',
            param="options",
        )
    return options


def sampling_params(options: dict[str, Any]) -> dict[str, Any]:
    """Return the OpenAI/llama-server body keys for Ollama's ``options`` (table above).

    Raises:
        InvalidRequestError: An option has the wrong type or is out of range.
    """
    params: dict[str, Any] = {}
    for key, target in _FLOAT_OPTIONS.items():
        number = _number(options, key)
        if number is not None:
            params[target] = number
    for key, target in _INT_OPTIONS.items():
        # llama-server reads the seed as an unsigned 32-bit number (-1: random).
        high = _UINT32_MAX if key == "seed" else _INT32_MAX
        integer = _integer(options, key, _INT32_MIN, high)
        if integer is not None:
            params[target] = integer
    predict = _integer(options, "num_predict", _INT32_MIN, _INT32_MAX)
    if predict is not None and predict >= 0:
        params["max_tokens"] = predict
    stop = _stop(options.get("stop"))
    if stop is not None:
        params["stop"] = stop
    return params


def think_budget(value: object) -> int | None:
    """Return the reasoning budget ``think`` asks for (DMR: true -1, false 0, levels ignored).

    Raises:
        InvalidRequestError: Neither a boolean nor a level word.
    """
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, bool):
        return -1 if value else 0
    raise InvalidRequestError(
        f"think must be true, false or a level such as 'high', got {value!r}", param="think"
    )


def runner_wish(body: dict[str, Any], options: dict[str, Any]) -> RunnerWish:
    """Return the runner settings a request asks for: ``num_ctx``, ``keep_alive``, ``think``.

    ``keep_alive`` is the top-level field, else ``options.keep_alive`` (as DMR reads it); under
    one second it means "unload when this request is done" (:attr:`RunnerWish.unload_after`).

    Raises:
        InvalidRequestError: One of them is malformed.
    """
    context = _integer(options, "num_ctx", _INT32_MIN, _INT32_MAX)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    if keep_alive is None:
        keep_alive = parse_keep_alive(options.get("keep_alive"), "options.keep_alive")
    unload_after = keep_alive is not None and 0 <= keep_alive < MIN_KEEP_ALIVE_SECONDS
    return RunnerWish(
        context_size=context if context is not None and context > 0 else None,
        keep_alive=None if unload_after else keep_alive,
        reasoning_budget=think_budget(body.get("think")),
        unload_after=unload_after,
    )


def image_url(data: str) -> str:
    """Return a data URI for base64 image bytes (MIME sniffed from the opening, as DMR does).

    A value that already is a ``data:`` or ``http(s)://`` URL is passed on.
    """
    text = data.strip()
    if text.startswith(("data:", "http://", "https://")):
        return text
    mime = next((kind for prefix, kind in _IMAGE_PREFIXES if text.startswith(prefix)), None)
    return f"data:{mime or 'image/jpeg'};base64,{text}"


def _images(value: object, param: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequestError(
            f"{param} must be a list of base64-encoded images, got {value!r}", param=param
        )
    return list(value)


def _content(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": image_url(image)}} for image in images]
    return parts


def _tool_calls(value: object, where: str) -> list[dict[str, Any]]:
    """Return Ollama tool calls (arguments an object) as OpenAI ones (arguments a string)."""
    if not isinstance(value, list):
        raise InvalidRequestError(f"{where}.tool_calls must be a list, got {value!r}")
    calls = []
    for position, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str):
            raise InvalidRequestError(
                f'{where}.tool_calls[{position}] must be {{"function": {{"name": ..., '
                f'"arguments": {{...}}}}}}, got {call!r}',
                param="messages",
            )
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        call_id = call.get("id")
        calls.append(
            {
                "id": call_id if isinstance(call_id, str) and call_id else f"call_{position}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return calls


def _message(message: object, position: int, call_ids: dict[str, str]) -> dict[str, Any]:
    where = f"messages[{position}]"
    if not isinstance(message, dict):
        raise InvalidRequestError(
            f'{where} must be an object such as {{"role": "user", "content": "Hi"}}, '
            f"got {message!r}",
            param="messages",
        )
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidRequestError(f"{where}.role must be a non-empty string", param="messages")
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise InvalidRequestError(f"{where}.content must be a string", param="messages")
    converted: dict[str, Any] = {
        "role": role,
        "content": _content(text or "", _images(message.get("images"), f"{where}.images")),
    }
    if message.get("tool_calls"):
        converted["tool_calls"] = _tool_calls(message["tool_calls"], where)
        for call in converted["tool_calls"]:
            call_ids[call["function"]["name"]] = call["id"]
    call_id = message.get("tool_call_id")
    tool_name = message.get("tool_name")
    if isinstance(call_id, str) and call_id:
        converted["tool_call_id"] = call_id
    elif role == "tool" and isinstance(tool_name, str) and tool_name in call_ids:
        # Ollama names the tool a result belongs to; OpenAI templates want the call's id.
        converted["tool_call_id"] = call_ids[tool_name]
    return converted


def chat_messages(value: object) -> list[dict[str, Any]]:
    """Return Ollama ``messages`` as OpenAI messages (images as ``image_url`` parts).

    Raises:
        InvalidRequestError: Not a list of messages.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError(f"messages must be a list, got {value!r}", param="messages")
    call_ids: dict[str, str] = {}
    return [_message(message, position, call_ids) for position, message in enumerate(value)]


def response_format(value: object) -> dict[str, Any] | None:
    """Return the ``response_format`` for Ollama's ``format`` (``"json"`` or a JSON schema).

    Raises:
        InvalidRequestError: Another string, or neither a string nor an object.
    """
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": value}}
    raise InvalidRequestError(
        f"format must be \"json\" or a JSON schema object, got {value!r}", param="format"
    )


def _tools(value: object) -> list[Any] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise InvalidRequestError(
            f"tools must be a list of tool objects, got {value!r}", param="tools"
        )
    return value


def _common(
    body: dict[str, Any], model: str, stream: bool, options: dict[str, Any]
) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "stream": stream}
    if stream:
        # The usage chunk at the end carries the prompt's token count with the timings.
        payload["stream_options"] = {"include_usage": True}
    payload.update(sampling_params(options))
    format_ = response_format(body.get("format"))
    if format_ is not None:
        payload["response_format"] = format_
    return payload


def chat_payload(
    body: dict[str, Any], model: str, stream: bool, options: dict[str, Any]
) -> dict[str, Any]:
    """Return the chat completions body for an ``/api/chat`` request.

    Raises:
        InvalidRequestError: A field is malformed.
    """
    payload = _common(body, model, stream, options)
    payload["messages"] = chat_messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    if tools:
        payload["tools"] = tools
    return payload


def generate_payload(
    body: dict[str, Any], model: str, stream: bool, options: dict[str, Any]
) -> dict[str, Any]:
    """Return the chat completions body for ``/api/generate``: ``system`` then the prompt.

    Raises:
        InvalidRequestError: A field is malformed.
    """
    payload = _common(body, model, stream, options)
    messages: list[dict[str, Any]] = []
    system = optional_text(body, "system")
    if system:
        messages.append({"role": "system", "content": system})
    images = _images(body.get("images"), "images")
    messages.append({"role": "user", "content": _content(optional_text(body, "prompt"), images)})
    payload["messages"] = messages
    return payload


def embed_inputs(body: dict[str, Any]) -> list[str]:
    """Return ``/api/embed``'s ``input`` as a list of texts (one string or a list).

    Raises:
        InvalidRequestError: Neither.
    """
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequestError(
        f"input must be a string or a list of strings, got {value!r}", param="input"
    )


def dimensions_of(body: dict[str, Any]) -> int | None:
    """Return ``/api/embed``'s ``dimensions`` (a positive whole number) or ``None``.

    Raises:
        InvalidRequestError: Not a positive whole number.
    """
    value = body.get("dimensions")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _INT32_MAX:
        raise InvalidRequestError(
            f"dimensions must be a positive whole number, got {value!r}", param="dimensions"
        )
    return value

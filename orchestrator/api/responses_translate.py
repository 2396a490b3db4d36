"""Translation between the Responses API and llama-server's chat completions.

Requests go out as ``/v1/chat/completions`` bodies (:func:`chat_payload`): the history (the
items of a ``previous_response_id`` chain, oldest first) and the request's own items become
chat messages through one converter, :func:`chat_messages`, which reads input and output items
alike (an output ``message`` or ``function_call`` replays as an assistant turn). Answers come
back as Response objects (:func:`response_object`, :func:`output_items`, :func:`usage`) in the
shape the ``openai`` package parses: every field its ``Response`` model requires is present,
ids are ``resp_``/``msg_``/``fc_`` + 24 ``[a-z0-9]``.

``output_text`` is also put in the JSON, as DMR does: the ``openai`` package computes its own
from ``output`` (a property that wins over the field), and raw-HTTP clients such as DMR's own
end-to-end test read the field.
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.api.responses_request import ResponsesRequest, new_id


def as_dict(value: Any) -> dict[str, Any]:
    """Return ``value`` when it is a JSON object, else ``{}`` (engine answers are untrusted)."""
    return value if isinstance(value, dict) else {}


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Return chat content: a plain string when the parts are all text, else chat parts."""
    if all(part["type"] != "input_image" for part in parts):
        return "".join(part.get("text") or part.get("refusal") or "" for part in parts)
    chat_parts: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] == "input_image":
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") not in (None, "auto"):
                image["detail"] = part["detail"]
            chat_parts.append({"type": "image_url", "image_url": image})
        else:
            chat_parts.append({"type": "text", "text": part.get("text") or ""})
    return chat_parts


def chat_messages(
    items: list[dict[str, Any]], instructions: str | None = None
) -> list[dict[str, Any]]:
    """Return the chat messages for ``items`` (input or output items), oldest first.

    ``instructions`` lead as a system message. Consecutive ``function_call`` items (parallel
    calls) join the assistant turn before them; ``developer`` becomes ``system``, which every
    chat template knows.
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            )
    return messages


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {key: tool[key] for key in ("name", "description", "parameters") if tool[key]}
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    fmt = text["format"]
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {"name": fmt["name"], "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        if fmt.get("description"):
            schema["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": schema}
    return None


def chat_payload(request: ResponsesRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the ``/v1/chat/completions`` body for ``request`` after ``history`` items."""
    payload: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(history + request.input_items, request.instructions),
        "stream": request.stream,
    }
    if request.stream:
        # Usage arrives in a last chunk only when asked for; the final Response needs it.
        payload["stream_options"] = {"include_usage": True}
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_output_tokens,
        "response_format": _response_format(request.text),
        "reasoning_effort": request.reasoning_effort,
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    if request.tools:
        payload["tools"] = [_chat_tool(tool) for tool in request.tools]
        payload["parallel_tool_calls"] = request.parallel_tool_calls
        choice = request.tool_choice
        payload["tool_choice"] = (
            {"type": "function", "function": {"name": choice["name"]}}
            if isinstance(choice, dict)
            else choice
        )
    return payload


def message_item(text: str, status: str, item_id: str | None = None) -> dict[str, Any]:
    """Return an assistant ``message`` output item holding ``text``."""
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call_item(
    call_id: str, name: str, arguments: str, status: str, item_id: str | None = None
) -> dict[str, Any]:
    """Return a ``function_call`` output item."""
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id or new_id("call"),
        "name": name,
        "arguments": arguments,
    }


def output_items(message: dict[str, Any], finish_reason: str | None) -> list[dict[str, Any]]:
    """Return the output items of one chat answer's ``message``: its text, then its calls."""
    status = "incomplete" if finish_reason == "length" else "completed"
    items = []
    content = message.get("content")
    if isinstance(content, list):  # parts, from an engine that sends them
        content = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    if isinstance(content, str) and content:
        items.append(message_item(content, status))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append(
            function_call_item(
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
                "completed",
            )
        )
    return items


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the Responses ``usage`` of a chat ``usage`` (``None`` when there is none)."""
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    details = chat_usage.get("prompt_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(details.get("cached_tokens") or 0),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion),
    }


def response_object(
    request: ResponsesRequest, response_id: str, created_at: int, status: str
) -> dict[str, Any]:
    """Return a Response with no output yet: the request's settings echoed, ``status`` set."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": request.reasoning_effort, "summary": None},
        "store": request.store,
        "temperature": request.temperature,
        "text": request.text,
        "tool_choice": request.tool_choice,
        "tools": request.tools,
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
    }


def finish(
    response: dict[str, Any],
    items: list[dict[str, Any]],
    finish_reason: str | None,
    chat_usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """Fill ``response`` with its output and final status; return it.

    ``length`` means the generation hit ``max_output_tokens`` (or the context): ``incomplete``
    with reason ``max_output_tokens``; anything else is ``completed``.
    """
    response["output"] = items
    response["output_text"] = "".join(
        part["text"]
        for item in items
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    response["usage"] = usage(chat_usage)
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
    return response


def fail(response: dict[str, Any], message: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Mark ``response`` failed with ``message`` (``server_error``, OpenAI's code); return it."""
    response["status"] = "failed"
    response["output"] = items
    response["error"] = {"code": "server_error", "message": message}
    return response


def from_chat_answer(response: dict[str, Any], answer: Any) -> dict[str, Any]:
    """Return ``response`` finished from a whole (non-streamed) chat completion ``answer``.

    An answer without choices (a broken engine) finishes with no output.
    """
    choices = as_dict(answer).get("choices")
    choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
    reason = choice.get("finish_reason")
    items = output_items(as_dict(choice.get("message")), reason)
    return finish(response, items, reason, as_dict(answer).get("usage"))


def sse_event(event: dict[str, Any]) -> bytes:
    """Return one server-sent event: ``event: <type>`` and its JSON ``data``."""
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode())

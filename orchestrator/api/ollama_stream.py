"""OpenAI chat answers (whole or streamed) as Ollama's ``/api/chat`` and ``/api/generate`` objects.

llama-server's answer carries ``timings`` (``prompt_n``, ``prompt_ms``, ``predicted_n``,
``predicted_ms``: in the whole answer, in the streamed chunk with ``finish_reason`` and in the
usage chunk), which become Ollama's counters in nanoseconds (:func:`eval_stats`):

=========================  ============================================================
Ollama                     from
=========================  ============================================================
``prompt_eval_count``      ``timings.prompt_n`` (tokens evaluated; cached ones are not)
``prompt_eval_duration``   ``timings.prompt_ms``
``eval_count``             ``timings.predicted_n``
``eval_duration``          ``timings.predicted_ms``
``total_duration``         our clock, from the request's arrival to its last object
``load_duration``          time to acquire the runner: queue, admission, cold start
=========================  ============================================================

Streamed tool calls arrive as argument fragments (one OpenAI delta per few tokens); Ollama
sends each call once, whole, with ``arguments`` as an object. :class:`ToolCallBuffer` gathers
the fragments and the calls go out in one message just before the final object.

A failure after the first line cannot change the status any more: :class:`NdjsonStream` ends
the stream with one ``{"error": "..."}`` line, which the ollama clients raise on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.api.engine_call import EngineAnswer

log = logging.getLogger(__name__)

_NS_PER_MS = 1_000_000
# OpenAI finish_reason -> Ollama done_reason.
_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}


def mapping(value: object) -> dict[str, Any]:
    """Return ``value`` when it is a JSON object, else ``{}`` (engine answers are checked)."""
    return value if isinstance(value, dict) else {}


def text(value: object) -> str:
    """Return ``value`` when it is a string, else ``""``."""
    return value if isinstance(value, str) else ""


def created_at() -> str:
    """Return now as Ollama writes ``created_at`` (RFC 3339, UTC, microseconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def done_reason(finish_reason: object) -> str:
    """Return Ollama's ``done_reason`` for an OpenAI ``finish_reason`` (``stop`` otherwise)."""
    return _DONE_REASONS.get(finish_reason, "stop") if isinstance(finish_reason, str) else "stop"


def _ms(timings: dict[str, Any], key: str) -> int | None:
    value = timings.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return max(int(value * _NS_PER_MS), 0)


def _count(source: dict[str, Any], key: str) -> int | None:
    value = source.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def eval_stats(
    timings: dict[str, Any] | None,
    usage: dict[str, Any] | None,
    started: float,
    load_seconds: float | None = None,
) -> dict[str, int]:
    """Return Ollama's duration (ns) and count fields from the engine's figures.

    Args:
        timings: llama-server's ``timings`` object, if it sent one.
        usage: The OpenAI ``usage`` object (counts when ``timings`` is missing).
        started: ``time.monotonic()`` when the request arrived.
        load_seconds: Time spent acquiring the runner; ``None``: ``total`` minus both
            evaluations stands in for it.
    """
    total = max(int((time.monotonic() - started) * 1e9), 0)
    stats: dict[str, int] = {"total_duration": total}
    timings = timings or {}
    usage = usage or {}
    prompt_count = _count(timings, "prompt_n")
    eval_count = _count(timings, "predicted_n")
    if prompt_count is None:
        prompt_count = _count(usage, "prompt_tokens")
    if eval_count is None:
        eval_count = _count(usage, "completion_tokens")
    prompt_ns = _ms(timings, "prompt_ms")
    eval_ns = _ms(timings, "predicted_ms")
    if load_seconds is not None:
        stats["load_duration"] = max(int(load_seconds * 1e9), 0)
    else:
        stats["load_duration"] = max(total - (prompt_ns or 0) - (eval_ns or 0), 0)
    if prompt_count is not None:
        stats["prompt_eval_count"] = prompt_count
    if prompt_ns is not None:
        stats["prompt_eval_duration"] = prompt_ns
    if eval_count is not None:
        stats["eval_count"] = eval_count
    if eval_ns is not None:
        stats["eval_duration"] = eval_ns
    return stats


def _arguments(text: str) -> Any:
    """Return tool-call arguments as an object; text that is no JSON object stays text."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("tool call arguments are not JSON; passed on as text")
        return text
    return value


def ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return OpenAI tool calls (arguments a JSON string) in Ollama's shape (an object)."""
    converted = []
    for position, call in enumerate(calls):
        function = mapping(call.get("function"))
        arguments = function.get("arguments")
        entry: dict[str, Any] = {
            "function": {
                "index": position,
                "name": function.get("name") or "",
                "arguments": _arguments(arguments) if isinstance(arguments, str) else arguments,
            }
        }
        if call.get("id"):
            entry["id"] = call["id"]
        converted.append(entry)
    return converted


class ToolCallBuffer:
    """Gathers the fragments of streamed tool calls until they are whole."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: object) -> None:
        """Add one delta's ``tool_calls`` (a list of fragments keyed by ``index``)."""
        if not isinstance(deltas, list):
            return
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            key = index if isinstance(index, int) else position
            call = self._calls.setdefault(key, {"id": "", "name": "", "arguments": ""})
            if isinstance(delta.get("id"), str):
                call["id"] = call["id"] or delta["id"]
            function = delta.get("function")
            if not isinstance(function, dict):
                continue
            if isinstance(function.get("name"), str):
                call["name"] += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call["arguments"] += arguments
            elif arguments is not None:
                call["arguments"] += json.dumps(arguments)

    def take(self) -> list[dict[str, Any]]:
        """Return the whole calls in Ollama's shape, in index order, and forget them."""
        calls = [
            {"id": call["id"], "function": {"name": call["name"], "arguments": call["arguments"]}}
            for _, call in sorted(self._calls.items())
        ]
        self._calls.clear()
        return ollama_tool_calls(calls)


class Translator:
    """Turns OpenAI chat answers into Ollama objects for one request.

    Args:
        model: The model name the client gave (echoed in every object).
        generate: ``/api/generate`` (text in ``response``) rather than ``/api/chat``.
        started: ``time.monotonic()`` when the request arrived.
        load_seconds: Time spent acquiring the runner (Ollama's ``load_duration``).
    """

    def __init__(
        self, model: str, *, generate: bool, started: float, load_seconds: float | None = None
    ) -> None:
        self.model = model
        self.generate = generate
        self.started = started
        self.load_seconds = load_seconds
        self._tools = ToolCallBuffer()
        self._finish: object = None
        self._timings: dict[str, Any] | None = None
        self._usage: dict[str, Any] | None = None

    def _object(
        self, content: str, thinking: str = "", tool_calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.generate:
            body["response"] = content
            if thinking:
                body["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            body["message"] = message
        return body

    def _final(self, body: dict[str, Any]) -> dict[str, Any]:
        body["done"] = True
        body["done_reason"] = done_reason(self._finish)
        body.update(eval_stats(self._timings, self._usage, self.started, self.load_seconds))
        return body

    def _note(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]

    def chunk(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the Ollama objects (``done: false``) for one streamed OpenAI chunk."""
        self._note(event)
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        delta = mapping(choice.get("delta"))
        self._tools.add(delta.get("tool_calls"))
        content = text(delta.get("content"))
        thinking = text(delta.get("reasoning_content"))
        if not content and not thinking:
            return []
        return [{**self._object(content, thinking), "done": False}]

    def end(self) -> list[dict[str, Any]]:
        """Return the last objects of a stream: whole tool calls (if any), then the final one."""
        objects = []
        calls = self._tools.take()
        if calls and not self.generate:
            objects.append({**self._object("", tool_calls=calls), "done": False})
        objects.append(self._final(self._object("")))
        return objects

    def whole(self, answer: object) -> dict[str, Any]:
        """Return the one Ollama object for a whole (non-streamed) OpenAI answer."""
        body = mapping(answer)
        self._note(body)
        choices = body.get("choices")
        choice = mapping(choices[0] if isinstance(choices, list) and choices else None)
        self._finish = choice.get("finish_reason")
        message = mapping(choice.get("message"))
        calls = message.get("tool_calls")
        return self._final(
            self._object(
                text(message.get("content")),
                text(message.get("reasoning_content")),
                ollama_tool_calls(calls) if isinstance(calls, list) and calls else None,
            )
        )


def ndjson_line(body: dict[str, Any]) -> bytes:
    """Return one NDJSON line."""
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def error_line(ex: BaseException) -> bytes:
    """Return the ``{"error": ...}`` line that ends a stream after a failure."""
    if isinstance(ex, OrchestratorError):
        log.warning("ollama stream failed after it began code=%s message=%r", ex.code, ex.message)
        return ndjson_line({"error": ex.message})
    log.error("ollama stream failed after it began", exc_info=ex)
    return ndjson_line({"error": "internal error; the daemon log has the details"})


class NdjsonStream:
    """The NDJSON body of a streamed ``/api/chat`` or ``/api/generate``; owns the answer.

    :meth:`close` (gunicorn calls it after the last chunk or a failed write, even when the body
    was never iterated) closes the engine answer, which gives the runner back.

    Args:
        answer: The engine's streamed answer.
        translator: Turns its chunks into Ollama objects.
        on_close: Called once after the answer is closed (``keep_alive: 0``'s unload).
    """

    def __init__(
        self,
        answer: EngineAnswer,
        translator: Translator,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._answer = answer
        self._translator = translator
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        try:
            for event in self._answer.events():
                for body in self._translator.chunk(event):
                    yield ndjson_line(body)
            for body in self._translator.end():
                yield ndjson_line(body)
        except Exception as ex:  # noqa: BLE001 - the status is sent; the line is all we have
            yield error_line(ex)
        finally:
            self.close()

    def close(self) -> None:
        """Close the engine answer (idempotent): the runner stops generating and is released."""
        self._answer.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

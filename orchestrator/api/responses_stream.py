"""Streamed Responses: llama-server's chat-completion chunks turned into Responses events.

The events and their order are OpenAI's, as the ``openai`` package's stream helper
(``client.responses.stream``) checks them: ``response.created``, ``response.in_progress``;
per output item ``response.output_item.added``, then for a message
``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, and for a function call
``response.function_call_arguments.delta``..., ``response.function_call_arguments.done``; then
``response.output_item.done``; last ``response.completed`` (or ``response.incomplete`` when
the generation hit ``max_output_tokens``). Every event carries ``sequence_number`` from 0; each
SSE block names its type in ``event:`` too. Items are sequential: text that follows a tool
call, or a call that follows text, closes the item before it.

A failure after the first event cannot change the HTTP status any more: it becomes an
``error`` event (``code``, ``message``, ``param``, at the top level, as OpenAI sends it: the
``openai`` package would raise on an ``error`` key) followed by ``response.failed`` carrying
what was generated so far.

:class:`EventStream` is the body: it owns the engine answer (closing it gives the runner back,
even when the body was never iterated) and hands the final Response to ``on_done`` (the store)
once the stream ended on its own, not when the client went away.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.api.responses_translate import (
    as_dict,
    fail,
    finish,
    function_call_item,
    message_item,
    sse_event,
)
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.api.engine_call import EngineAnswer

log = logging.getLogger(__name__)


class ResponseEvents:
    """The event translator for one streamed response (no I/O: chunks in, SSE bytes out).

    Args:
        response: The Response being built (``status: in_progress``, no output yet).
    """

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.items: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None
        self._sequence = 0
        self._text: dict[str, Any] | None = None  # the open message item
        self._text_parts: list[str] = []
        self._call: dict[str, Any] | None = None  # the open function_call item
        self._call_index: Any = None  # its index in the chat deltas

    def _event(self, type_: str, **fields: Any) -> bytes:
        event = {"type": type_, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse_event(event)

    def _snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.response)

    def start(self) -> Iterator[bytes]:
        """Yield ``response.created`` and ``response.in_progress``."""
        yield self._event("response.created", response=self._snapshot())
        yield self._event("response.in_progress", response=self._snapshot())

    def chunk(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        """Yield the events of one chat-completion chunk."""
        if isinstance(chunk.get("usage"), dict):
            self.chat_usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = as_dict(choice.get("delta"))
        content = delta.get("content")
        if isinstance(content, str) and content:
            yield from self._text_delta(content)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                yield from self._call_delta(call)

    def _output_index(self) -> int:
        return len(self.items)

    def _text_delta(self, content: str) -> Iterator[bytes]:
        yield from self._close_call()
        if self._text is None:
            self._text = message_item("", "in_progress")
            self._text["content"] = []
            self._text_parts = []
            yield self._event(
                "response.output_item.added",
                output_index=self._output_index(),
                item=copy.deepcopy(self._text),
            )
            yield self._event(
                "response.content_part.added",
                item_id=self._text["id"],
                output_index=self._output_index(),
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
        self._text_parts.append(content)
        yield self._event(
            "response.output_text.delta",
            item_id=self._text["id"],
            output_index=self._output_index(),
            content_index=0,
            delta=content,
            logprobs=[],
        )

    def _call_delta(self, call: dict[str, Any]) -> Iterator[bytes]:
        function = as_dict(call.get("function"))
        index = call.get("index", 0)
        if self._call is None or index != self._call_index:
            yield from self._close_text("completed")
            yield from self._close_call()
            self._call = function_call_item(
                str(call.get("id") or ""), str(function.get("name") or ""), "", "in_progress"
            )
            self._call_index = index
            yield self._event(
                "response.output_item.added",
                output_index=self._output_index(),
                item=copy.deepcopy(self._call),
            )
        elif function.get("name") and not self._call["name"]:
            self._call["name"] = str(function["name"])
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            self._call["arguments"] += fragment
            yield self._event(
                "response.function_call_arguments.delta",
                item_id=self._call["id"],
                output_index=self._output_index(),
                delta=fragment,
            )

    def _close_text(self, status: str) -> Iterator[bytes]:
        if self._text is None:
            return
        item = message_item("".join(self._text_parts), status, self._text["id"])
        part = item["content"][0]
        index = self._output_index()
        self._text = None
        yield self._event(
            "response.output_text.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            text=part["text"],
            logprobs=[],
        )
        yield self._event(
            "response.content_part.done",
            item_id=item["id"],
            output_index=index,
            content_index=0,
            part=part,
        )
        self.items.append(item)
        yield self._event("response.output_item.done", output_index=index, item=item)

    def _close_call(self) -> Iterator[bytes]:
        if self._call is None:
            return
        item = dict(self._call, status="completed")
        index = self._output_index()
        self._call = None
        yield self._event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            name=item["name"],
            arguments=item["arguments"],
        )
        self.items.append(item)
        yield self._event("response.output_item.done", output_index=index, item=item)

    def finished_item(self, item: dict[str, Any]) -> Iterator[bytes]:
        """Yield the events of an output item that is already whole (a replay), its ids kept."""
        index = self._output_index()
        if item["type"] == "message":
            text = "".join(p.get("text", "") for p in item["content"] if p["type"] == "output_text")
            added = dict(item, status="in_progress", content=[])
            self._text, self._text_parts = added, [text]
            yield self._event("response.output_item.added", output_index=index, item=added)
            yield self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
            yield self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
            yield from self._close_text(str(item.get("status") or "completed"))
        elif item["type"] == "function_call":
            self._call = dict(item, status="in_progress", arguments="")
            yield self._event(
                "response.output_item.added", output_index=index, item=dict(self._call)
            )
            self._call["arguments"] = item["arguments"]
            yield self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=item["arguments"],
            )
            yield from self._close_call()

    def final(self, kind: str, response: dict[str, Any]) -> bytes:
        """Return the last event, ``kind``, carrying ``response``."""
        return self._event(kind, response=response)

    def end(self) -> Iterator[bytes]:
        """Yield the closing events: open items done, then completed or incomplete."""
        status = "incomplete" if self.finish_reason == "length" else "completed"
        yield from self._close_text(status)
        yield from self._close_call()
        finish(self.response, list(self.items), self.finish_reason, self.chat_usage)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        yield self.final(kind, self._snapshot())

    def failed(self, error: BaseException) -> Iterator[bytes]:
        """Yield ``error`` then ``response.failed`` with what was generated so far."""
        if isinstance(error, OrchestratorError):
            code, message = error.code, error.message
        else:
            code, message = "internal_error", "the response stream failed; retry the request"
        partial = list(self.items)
        if self._text is not None:
            partial.append(message_item("".join(self._text_parts), "incomplete", self._text["id"]))
        if self._call is not None:
            partial.append(dict(self._call, status="incomplete"))
        self._text = self._call = None
        yield self._event("error", code=code, message=message, param=None)
        fail(self.response, message, partial)
        yield self._event("response.failed", response=self._snapshot())


class EventStream:
    """The SSE body of a streamed create; owns the engine answer.

    Args:
        answer: The engine's streamed chat answer.
        events: The translator holding the Response being built.
        on_done: Called with the final Response (completed, incomplete or failed) when the
            stream ended on its own.
    """

    def __init__(
        self,
        answer: EngineAnswer,
        events: ResponseEvents,
        on_done: Callable[[dict[str, Any]], None],
    ) -> None:
        self._answer = answer
        self._events = events
        self._on_done = on_done

    def __iter__(self) -> Iterator[bytes]:
        events = self._events
        try:
            yield from events.start()
            try:
                for chunk in self._answer.events():
                    yield from events.chunk(chunk)
                closing = list(events.end())
            except Exception as ex:  # noqa: BLE001 - the status is sent; events are all we have
                if not isinstance(ex, OrchestratorError):
                    log.exception("responses stream %s failed", events.response["id"])
                closing = list(events.failed(ex))
            # Stored before the last event leaves: a client that reads the final event and
            # at once retrieves or chains the response must find it.
            self._on_done(events.response)
            yield from closing
        finally:
            self.close()

    def close(self) -> None:
        """Close the engine answer (idempotent): the runner stops and is given back."""
        self._answer.close()


def replay(response: dict[str, Any]) -> Iterator[bytes]:
    """Yield the events of a finished stored ``response`` (``GET .../{id}?stream=true``)."""
    snapshot = copy.deepcopy(response)
    snapshot.update(status="in_progress", output=[], usage=None, error=None)
    snapshot.update(incomplete_details=None)
    snapshot.pop("output_text", None)
    snapshot.pop("completed_at", None)
    events = ResponseEvents(snapshot)
    yield from events.start()
    for item in response.get("output") or []:
        yield from events.finished_item(item)
    kind = {"incomplete": "response.incomplete", "failed": "response.failed"}
    yield events.final(kind.get(str(response.get("status")), "response.completed"), response)

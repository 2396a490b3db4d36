"""Chat chunks to Responses events, checked by the openai package's own stream accumulator."""

from __future__ import annotations

import json
from typing import Any

from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from orchestrator.api.responses_request import parse_request
from orchestrator.api.responses_stream import ResponseEvents, replay
from orchestrator.api.responses_translate import response_object
from orchestrator.errors import RunnerCrashedError


def new_events() -> ResponseEvents:
    request = parse_request({"model": "m", "input": "x"})
    return ResponseEvents(response_object(request, "resp_" + "a" * 24, 1, "in_progress"))


def decode(blocks: list[bytes]) -> list[dict[str, Any]]:
    events = []
    for block in blocks:
        name, data = block.decode().rstrip("\n").split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        events.append(event)
    return events


def through_sdk(events: list[dict[str, Any]]) -> ResponseStreamState[Any]:
    """Feed the events to the SDK's accumulator (it raises on anything out of order)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
    return state


def text_chunk(text: str, reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": reason}]}


def call_chunk(index: int, fragment: str, call_id: str = "", name: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": fragment}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}


def run(chunks: list[dict[str, Any]]) -> tuple[ResponseEvents, list[dict[str, Any]]]:
    translator = new_events()
    blocks = list(translator.start())
    for chunk in chunks:
        blocks += list(translator.chunk(chunk))
    blocks += list(translator.end())
    return translator, decode(blocks)


def test_text_stream_events_in_order() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    translator, events = run([
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        text_chunk("Hel"), text_chunk("lo"), text_chunk("", "stop"),
        {"choices": [], "usage": usage},
    ])
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[6]["text"] == "Hello"
    final = through_sdk(events)._completed_response
    assert final is not None and final.output_text == "Hello"
    assert final.usage is not None and final.usage.total_tokens == 7
    assert translator.response["status"] == "completed"


def test_text_then_two_tool_calls_are_sequential_items() -> None:
    _, events = run([
        text_chunk("Checking."),
        call_chunk(0, '{"ci', "call_a", "get_weather"), call_chunk(0, 'ty":"Paris"}'),
        call_chunk(1, '{"city":"Rome"}', "call_b", "get_weather"),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ])
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "message"), (1, "function_call"), (2, "function_call")]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in done] == ['{"city":"Paris"}', '{"city":"Rome"}']
    final = through_sdk(events)._completed_response
    assert final is not None
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert [getattr(item, "call_id", None) for item in final.output[1:]] == ["call_a", "call_b"]


def test_length_ends_incomplete() -> None:
    translator, events = run([text_chunk("a"), text_chunk("b", "length")])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"
    through_sdk(events)
    assert translator.response["status"] == "incomplete"


def test_failure_mid_stream_is_error_then_failed() -> None:
    translator = new_events()
    blocks = list(translator.start()) + list(translator.chunk(text_chunk("partial")))
    blocks += list(translator.failed(RunnerCrashedError("the runner stopped")))
    events = decode(blocks)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    error = events[-2]
    assert "error" not in error  # a top-level "error" key makes the openai package raise
    assert (error["code"], error["message"], error["param"]) == (
        "runner_crashed", "the runner stopped", None)
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "the runner stopped"}
    assert failed["output"][0]["content"][0]["text"] == "partial"
    through_sdk(events)


def test_replay_of_a_stored_response_is_a_valid_stream() -> None:
    translator, events = run([text_chunk("Hi"), call_chunk(0, "{}", "call_z", "f"),
                              text_chunk("", "tool_calls")])
    stored = translator.response
    replayed = decode(list(replay(stored)))
    assert replayed[-1]["type"] == "response.completed"
    assert [e["type"] for e in replayed] == [e["type"] for e in events]
    final = through_sdk(replayed)._completed_response
    assert final is not None and final.id == stored["id"]
    assert [item.id for item in final.output] == [item["id"] for item in stored["output"]]

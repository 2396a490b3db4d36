"""OpenAI answers as Ollama objects (orchestrator/api/ollama_stream.py): pure, no HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from orchestrator.api.ollama_stream import (
    ToolCallBuffer,
    Translator,
    done_reason,
    eval_stats,
    ollama_tool_calls,
)

TIMINGS = {"prompt_n": 32, "prompt_ms": 261.225, "predicted_n": 5, "predicted_ms": 69.24}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "finish_reason": finish, "delta": delta}], **extra}


@pytest.mark.parametrize(
    ("finish", "reason"),
    [("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"), (None, "stop"),
     ("content_filter", "stop")],
)
def test_done_reason_maps_finish_reason(finish: str | None, reason: str) -> None:
    assert done_reason(finish) == reason


def test_eval_stats_come_from_timings_in_nanoseconds() -> None:
    """Counts and durations are llama-server's; without an acquire time, load is what is left."""
    started = time.monotonic() - 1.0
    stats = eval_stats(TIMINGS, {"prompt_tokens": 99, "completion_tokens": 99}, started)
    assert stats["prompt_eval_count"] == 32
    assert stats["prompt_eval_duration"] == 261_225_000
    assert stats["eval_count"] == 5
    assert stats["eval_duration"] == 69_240_000
    assert stats["total_duration"] >= 1_000_000_000
    assert stats["load_duration"] == (
        stats["total_duration"] - stats["prompt_eval_duration"] - stats["eval_duration"]
    )


def test_load_duration_is_the_time_to_acquire_the_runner_when_known() -> None:
    """With the acquire time (queue, cold start) given, that is Ollama's load_duration."""
    stats = eval_stats(TIMINGS, None, time.monotonic() - 2.0, load_seconds=0.75)
    assert stats["load_duration"] == 750_000_000
    assert stats["total_duration"] >= 2_000_000_000


def test_eval_stats_fall_back_to_usage_without_durations() -> None:
    """No timings (another engine): counts from usage, no invented durations."""
    stats = eval_stats(None, {"prompt_tokens": 7, "completion_tokens": 3}, time.monotonic())
    assert stats["prompt_eval_count"] == 7
    assert stats["eval_count"] == 3
    assert "eval_duration" not in stats and "prompt_eval_duration" not in stats


def test_streamed_tool_call_fragments_become_one_whole_call() -> None:
    """Argument fragments across deltas are joined; arguments come out as an object."""
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    buffer = ToolCallBuffer()
    buffer.add([{"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": ""}}])
    for start in range(0, len(arguments), 4):
        buffer.add([{"index": 0, "function": {"arguments": arguments[start:start + 4]}}])
    buffer.add([{"index": 1, "id": "call_2", "function": {"name": "now", "arguments": "{}"}}])
    calls = buffer.take()
    assert calls == [
        {"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                      "arguments": {"city": "Paris", "unit": "celsius"}}},
        {"id": "call_2", "function": {"index": 1, "name": "now", "arguments": {}}},
    ]
    assert buffer.take() == []


def test_arguments_that_are_not_json_stay_text() -> None:
    (call,) = ollama_tool_calls([{"function": {"name": "f", "arguments": "{broken"}}])
    assert call["function"]["arguments"] == "{broken"


def test_chat_stream_translation() -> None:
    """Content deltas become done:false lines; the end carries done_reason and the stats."""
    translator = Translator("ai/smollm2", generate=False, started=time.monotonic())
    assert translator.chunk(chunk({"role": "assistant", "content": None})) == []
    (first,) = translator.chunk(chunk({"content": "Hel"}))
    assert first["message"] == {"role": "assistant", "content": "Hel"}
    assert first["done"] is False and first["model"] == "ai/smollm2"
    assert first["created_at"].endswith("Z")
    assert translator.chunk(chunk({}, "length", timings=TIMINGS)) == []
    (last,) = translator.end()
    assert last["done"] is True
    assert last["done_reason"] == "length"
    assert last["message"] == {"role": "assistant", "content": ""}
    assert last["eval_count"] == 5


def test_chat_stream_sends_tool_calls_once_before_the_end() -> None:
    translator = Translator("m", generate=False, started=time.monotonic())
    translator.chunk(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {
        "name": "f", "arguments": '{"a"'}}]}))
    assert translator.chunk(chunk({"tool_calls": [{"index": 0, "function": {
        "arguments": ": 1}"}}]})) == []
    translator.chunk(chunk({}, "tool_calls"))
    calls_line, last = translator.end()
    assert calls_line["done"] is False
    assert calls_line["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert last["done_reason"] == "tool_calls"
    assert "tool_calls" not in last["message"]


def test_generate_translation_uses_response_and_thinking() -> None:
    translator = Translator("m", generate=True, started=time.monotonic())
    (line,) = translator.chunk(chunk({"reasoning_content": "hmm", "content": "Hi"}))
    assert line["response"] == "Hi" and line["thinking"] == "hmm"
    assert "message" not in line


def test_whole_answer_translation() -> None:
    answer = {
        "choices": [{"finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "reasoning_content": "think",
            "tool_calls": [{"id": "x", "type": "function",
                            "function": {"name": "f", "arguments": '{"k": [1]}'}}]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
        "timings": TIMINGS,
    }
    body = Translator("m", generate=False, started=time.monotonic()).whole(answer)
    assert body["done"] is True and body["done_reason"] == "tool_calls"
    assert body["message"]["content"] == ""
    assert body["message"]["thinking"] == "think"
    assert body["message"]["tool_calls"][0]["function"]["arguments"] == {"k": [1]}
    assert body["prompt_eval_count"] == 32
    # A malformed answer still gives a well-formed final object.
    broken = Translator("m", generate=True, started=time.monotonic()).whole("nonsense")
    assert broken["response"] == "" and broken["done"] is True

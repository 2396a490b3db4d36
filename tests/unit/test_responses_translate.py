"""Responses requests checked and translated to chat completions; chat answers to Responses."""

from __future__ import annotations

import re
from typing import Any

import openai.types.responses as types
import pytest

from orchestrator.api.responses_request import new_id, parse_request
from orchestrator.api.responses_translate import (
    chat_payload,
    from_chat_answer,
    response_object,
)
from orchestrator.errors import InvalidRequestError

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True}


def payload_of(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return chat_payload(parse_request({"model": "ai/smollm2", **body}), history or [])


def test_ids_have_openai_and_dmr_shape() -> None:
    ids = {new_id("resp") for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"resp_[a-z0-9]{24}", value) for value in ids)


def test_string_input_and_instructions() -> None:
    payload = payload_of({"input": "Hi", "instructions": "Be brief", "max_output_tokens": 5,
                          "temperature": 0, "top_p": 0.5, "stream": True})
    assert payload["messages"] == [{"role": "system", "content": "Be brief"},
                                   {"role": "user", "content": "Hi"}]
    assert payload["max_tokens"] == 5 and payload["temperature"] == 0 and payload["top_p"] == 0.5
    assert payload["stream"] is True and payload["stream_options"] == {"include_usage": True}
    assert "tools" not in payload and "response_format" not in payload


def test_items_become_chat_messages() -> None:
    items = [
        {"role": "developer", "content": "Rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is "},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Checking"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "rain"}]},
    ]
    messages = payload_of({"input": items})["messages"]
    assert messages[0] == {"role": "system", "content": "Rules"}
    assert messages[1]["content"] == [
        {"type": "text", "text": "What is "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                            "detail": "low"}}]
    assert messages[2]["role"] == "assistant" and messages[2]["content"] == "Checking"
    assert [call["id"] for call in messages[2]["tool_calls"]] == ["call_1", "call_2"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                         "arguments": '{"city":"Paris"}'}
    assert messages[3:] == [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                            {"role": "tool", "tool_call_id": "call_2", "content": "rain"}]


def test_history_comes_before_the_input_and_instructions_lead() -> None:
    history = parse_request({"model": "m", "input": "first"}).input_items + [
        {"id": "msg_x", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "reply", "annotations": []}]}]
    messages = payload_of({"input": "second", "instructions": "Sys"}, history)["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "Sys"), ("user", "first"), ("assistant", "reply"), ("user", "second")]


def test_tools_tool_choice_and_text_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    payload = payload_of({
        "input": "x", "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema,
                            "strict": True}},
    })
    assert payload["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": WEATHER_TOOL["parameters"], "strict": True}}]
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert payload["parallel_tool_calls"] is False
    assert payload["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "out", "schema": schema, "strict": True}}
    assert payload_of({"input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "model": ""}, "model"),
        ({}, "input"),
        ({"input": 3}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
         "input[0].content[0].image_url"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 1}]},
         "input[0].output"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "maybe"}, "tool_choice"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "top_p": "high"}, "top_p"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
         "text.format.name"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
         "text.format.schema"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata"),
        ({"input": "x", "store": "yes"}, "store"),
        ({"input": "x", "stream": 1}, "stream"),
        ({"input": "x", "include": ["file_search_call.results"]}, "include"),
        ({"input": "x", "stream_options": {"include_obfuscation": False}}, "stream_options"),
        ({"input": "x", "top_logprobs": 2}, "top_logprobs"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "prompt": {"id": "p"}}, "prompt"),
        ({"input": "x", "service_tier": "flex"}, "service_tier"),
        ({"input": "x", "safety_identifier": "u1"}, "safety_identifier"),
    ],
)
def test_bad_fields_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request({"model": "ai/smollm2", **body})
    assert caught.value.param == param
    assert caught.value.status == 400


def test_allowed_defaults_pass() -> None:
    request = parse_request({"model": "m", "input": "x", "truncation": "disabled",
                             "background": False, "include": [], "service_tier": "",
                             "reasoning": {"effort": "low"}, "user": "u"})
    assert request.reasoning_effort == "low" and request.store and not request.stream


def answer(message: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                      "prompt_tokens_details": {"cached_tokens": 4}}}


def test_chat_answer_becomes_a_response_the_sdk_parses() -> None:
    request = parse_request({"model": "ai/smollm2", "input": "x", "tools": [WEATHER_TOOL],
                             "metadata": {"k": "v"}, "previous_response_id": "resp_prev"})
    base = response_object(request, new_id("resp"), 1700000000, "in_progress")
    done = from_chat_answer(base, answer({"role": "assistant", "content": "Let me see", "tool_calls": [
        {"id": "call_9", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}, "tool_calls"))
    parsed = types.Response.model_validate(done)
    assert parsed.status == "completed"
    assert parsed.output_text == "Let me see" == done["output_text"]
    assert parsed.output[1].type == "function_call"
    assert (parsed.output[1].call_id, parsed.output[1].arguments) == ("call_9", '{"city":"Paris"}')
    assert re.fullmatch(r"fc_[a-z0-9]{24}", parsed.output[1].id or "")
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (
        7, 3, 10)
    assert parsed.usage.input_tokens_details.cached_tokens == 4
    assert parsed.metadata == {"k": "v"} and parsed.previous_response_id == "resp_prev"
    assert parsed.tools[0].type == "function" and parsed.tool_choice == "auto"


def test_length_is_incomplete_max_output_tokens() -> None:
    request = parse_request({"model": "m", "input": "x", "max_output_tokens": 3})
    base = response_object(request, new_id("resp"), 1, "in_progress")
    done = types.Response.model_validate(
        from_chat_answer(base, answer({"role": "assistant", "content": "a b c"}, "length")))
    assert done.status == "incomplete"
    assert done.incomplete_details is not None
    assert done.incomplete_details.reason == "max_output_tokens"
    assert done.output[0].status == "incomplete"
    assert done.max_output_tokens == 3


def test_broken_answer_finishes_empty() -> None:
    request = parse_request({"model": "m", "input": "x"})
    done = from_chat_answer(response_object(request, "resp_x", 1, "in_progress"), {"x": 1})
    assert done["output"] == [] and done["usage"] is None and done["status"] == "completed"

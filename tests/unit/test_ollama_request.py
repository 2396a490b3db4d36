"""Ollama request translation (orchestrator/api/ollama_request.py): pure, no HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.api.ollama_request import (
    RunnerWish,
    chat_messages,
    chat_payload,
    dimensions_of,
    embed_inputs,
    generate_payload,
    image_url,
    model_name,
    parse_keep_alive,
    response_format,
    runner_wish,
    sampling_params,
    stream_flag,
)
from orchestrator.errors import InvalidRequestError

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def test_model_name_prefers_model_then_name() -> None:
    """model wins; name (Ollama's older field) is read when model is absent or empty."""
    assert model_name({"model": " ai/smollm2 ", "name": "other"}) == "ai/smollm2"
    assert model_name({"name": "ai/smollm2"}) == "ai/smollm2"
    assert model_name({"model": "", "name": "ai/smollm2"}) == "ai/smollm2"
    with pytest.raises(InvalidRequestError) as caught:
        model_name({})
    assert caught.value.param == "model"
    with pytest.raises(InvalidRequestError):
        model_name({"model": 5})


def test_stream_defaults_to_true_and_must_be_boolean() -> None:
    assert stream_flag({}) is True
    assert stream_flag({"stream": False}) is False
    with pytest.raises(InvalidRequestError):
        stream_flag({"stream": "no"})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), (90, 90.0), (0, 0.0), ("0", 0.0), (-5, -1.0),
     ("-1m", -1.0), (None, None), ("", None), (2.5, 2.5)],
)
def test_keep_alive_accepts_durations_and_seconds(value: object, seconds: float | None) -> None:
    """Strings are Go durations, numbers are seconds, negative is "forever" (-1)."""
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", True, [1], {"m": 5}, "5 minutes"])
def test_keep_alive_refuses_other_values(value: object) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_keep_alive(value)
    assert caught.value.param == "keep_alive"


def test_options_map_to_openai_and_llama_server_keys() -> None:
    """Each documented option lands on its body key; unknown ones are left out."""
    params = sampling_params(
        {
            "num_predict": 7,
            "temperature": 0,
            "top_p": 0.9,
            "top_k": 20,
            "min_p": 0.05,
            "seed": 42,
            "stop": ["\n", "User:"],
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "repeat_penalty": 1.1,
            "repeat_last_n": 64,
            "num_keep": 4,
            "num_gpu": 99,
            "num_thread": 8,
        }
    )
    assert params == {
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "seed": 42,
        "stop": ["\n", "User:"],
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "n_keep": 4,
    }


def test_negative_num_predict_means_no_limit() -> None:
    assert "max_tokens" not in sampling_params({"num_predict": -1})
    assert sampling_params({"stop": "END"}) == {"stop": ["END"]}


@pytest.mark.parametrize(
    "options",
    [{"temperature": "hot"}, {"temperature": True}, {"top_k": 1.5}, {"seed": 2**40},
     {"num_predict": 2**31}, {"stop": [1, 2]}, {"temperature": float("nan")},
     {"top_p": float("inf")}],
)
def test_malformed_options_are_refused_naming_the_option(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        sampling_params(options)
    assert caught.value.param == f"options.{next(iter(options))}"


def test_runner_wish_reads_num_ctx_keep_alive_and_think() -> None:
    wish = runner_wish({"keep_alive": "10m", "think": True}, {"num_ctx": 2048})
    assert wish == RunnerWish(context_size=2048, keep_alive=600.0, reasoning_budget=-1)
    assert runner_wish({"think": False}, {}).reasoning_budget == 0
    # DMR reads options.keep_alive when the top-level one is absent; levels of think are ignored.
    assert runner_wish({"think": "high"}, {"keep_alive": "1m"}) == RunnerWish(keep_alive=60.0)
    assert runner_wish({}, {"num_ctx": 0}).empty
    # Under a second is "unload when done": not a setting to keep.
    for short in (0, "0s", 0.5, "500ms"):
        assert runner_wish({"keep_alive": short}, {}) == RunnerWish(unload_after=True)
    assert runner_wish({"keep_alive": -1}, {}) == RunnerWish(keep_alive=-1.0)
    with pytest.raises(InvalidRequestError):
        runner_wish({"think": 3}, {})


@pytest.mark.parametrize(
    ("data", "mime"),
    [("/9j/4AAQSk", "image/jpeg"), (PNG, "image/png"), ("R0lGODlh", "image/gif"),
     ("UklGRh", "image/jpeg")],
)
def test_image_mime_is_sniffed_from_base64(data: str, mime: str) -> None:
    """DMR's rule: JPEG, PNG and GIF by their base64 opening, JPEG otherwise."""
    assert image_url(data) == f"data:{mime};base64,{data}"


def test_image_urls_pass_through() -> None:
    assert image_url(" data:image/webp;base64,AAAA ") == "data:image/webp;base64,AAAA"
    assert image_url("https://example.invalid/a.png") == "https://example.invalid/a.png"


def test_messages_become_openai_messages() -> None:
    """Images become image_url parts after the text; tool calls get string arguments."""
    messages = chat_messages(
        [
            {"role": "user", "content": "What is this?", "images": [PNG]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": "21C", "tool_name": "get_weather"},
        ]
    )
    assert messages[0] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    }
    (call,) = messages[1]["tool_calls"]
    assert call["type"] == "function"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # The tool result is tied to the call by the id Ollama's tool_name points at.
    assert messages[2] == {"role": "tool", "content": "21C", "tool_call_id": call["id"]}


@pytest.mark.parametrize(
    "messages",
    ["hi", [1], [{"content": "no role"}], [{"role": "user", "content": 5}],
     [{"role": "user", "images": "abc"}], [{"role": "assistant", "tool_calls": [{"x": 1}]}]],
)
def test_malformed_messages_are_refused(messages: object) -> None:
    with pytest.raises(InvalidRequestError):
        chat_messages(messages)


def test_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert response_format("json") == {"type": "json_object"}
    assert response_format(schema) == {
        "type": "json_schema",
        "json_schema": {"name": "format", "schema": schema},
    }
    assert response_format("") is None
    with pytest.raises(InvalidRequestError):
        response_format("yaml")


def test_chat_payload_streams_with_usage_and_keeps_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    payload = chat_payload(
        {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "format": "json"},
        "ai/smollm2",
        True,
        {"num_predict": 3},
    )
    assert payload["stream"] is True
    assert payload["stream_options"] == {"include_usage": True}
    assert payload["tools"] == tools
    assert payload["max_tokens"] == 3
    assert payload["response_format"] == {"type": "json_object"}
    assert "stream_options" not in chat_payload({}, "m", False, {})


def test_generate_payload_puts_system_before_the_prompt() -> None:
    payload = generate_payload(
        {"prompt": "Hi", "system": "Be brief.", "images": [PNG]}, "m", False, {}
    )
    assert payload["messages"][0] == {"role": "system", "content": "Be brief."}
    assert payload["messages"][1]["role"] == "user"
    assert payload["messages"][1]["content"][0] == {"type": "text", "text": "Hi"}


def test_embed_inputs_and_dimensions() -> None:
    assert embed_inputs({"input": "a"}) == ["a"]
    assert embed_inputs({"input": ["a", "b"]}) == ["a", "b"]
    assert embed_inputs({}) == []
    assert dimensions_of({"dimensions": 8}) == 8
    for bad in ({"input": [1]}, {"input": {"a": 1}}):
        with pytest.raises(InvalidRequestError):
            embed_inputs(bad)
    for bad_dimensions in (0, -1, 1.5, True):
        with pytest.raises(InvalidRequestError):
            dimensions_of({"dimensions": bad_dimensions})

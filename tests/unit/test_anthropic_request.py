"""Checking Anthropic Messages bodies (orchestrator/api/anthropic_request.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.api.anthropic_request import check_request, engine_body, tool_choice_rewrite
from orchestrator.errors import InvalidRequestError

HELLO = [{"role": "user", "content": "Hi"}]
TOOLS = [{"name": "a", "input_schema": {"type": "object"}}, {"name": "b"}]


def test_a_full_valid_body_passes() -> None:
    body: dict[str, Any] = {
        "model": "m", "max_tokens": 8, "stream": True, "stop_sequences": ["x", "y"],
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "temperature": 0.5, "top_p": 1, "top_k": 40, "tools": TOOLS,
        "tool_choice": {"type": "tool", "name": "b"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image", "source": {"type": "url", "url": "u"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"},
                                              {"type": "tool_use", "id": "1", "name": "a",
                                               "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "1",
                                          "content": [{"type": "text", "text": "ok"}]},
                                         {"type": "future_block_kind"}]},
        ],
    }  # fmt: skip
    request = check_request(body, "m", generating=True)
    assert request.stream is True
    assert request.stop_sequences == ("x", "y")
    assert request.warm_only is False


def test_max_tokens_zero_is_warm_only_and_count_tokens_ignores_max_tokens() -> None:
    assert check_request({"messages": HELLO, "max_tokens": 0}, "m", generating=True).warm_only
    counted = check_request({"messages": HELLO, "max_tokens": "x"}, "m", generating=False)
    assert counted.warm_only is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [[]]}, "messages.0"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
        ({"messages": [{"role": "user", "content": [{"type": "image"}]}]},
         "messages.0.content.0.source"),
        ({"messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "1", "name": "a", "input": []}]}]},
         "messages.0.content.0.input"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "1", "content": [{"type": 1}]}]}]},
         "messages.0.content.0.content.0.type"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "1", "content": 7}]}]},
         "messages.0.content.0.content"),
        ({"messages": HELLO, "system": {"text": "x"}}, "system"),
        ({"messages": HELLO, "system": ["x"]}, "system.0"),
        ({"messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
        ({"messages": HELLO, "top_p": "1"}, "top_p"),
        ({"messages": HELLO, "top_k": 1.5}, "top_k"),
        ({"messages": HELLO, "stream": 1}, "stream"),
        ({"messages": HELLO, "tools": [{"name": "a", "input_schema": "x"}]},
         "tools.0.input_schema"),
        ({"messages": HELLO, "tool_choice": {"type": "required"}}, "tool_choice"),
        ({"messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"messages": HELLO, "stop_sequences": ["ok", 3]}, "stop_sequences"),
    ],
)  # fmt: skip
def test_bad_fields_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_request(body, "m", generating=True)
    assert caught.value.param == param
    assert caught.value.message.startswith(param + ": ")


def test_body_is_forwarded_as_is_without_a_rewrite() -> None:
    payload = {"model": "m", "messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "any"}}
    body = b'{"model":"m",  "weird spacing": true}'
    assert tool_choice_rewrite(payload) is None
    assert engine_body(payload, body) is body


def test_tool_choice_none_drops_the_tools() -> None:
    payload = {"messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "none"}}
    assert json.loads(engine_body(payload, b"{}")) == {"messages": HELLO}
    assert payload["tools"] == TOOLS  # the client's body is not changed in place


def test_tool_choice_tool_keeps_only_that_tool() -> None:
    payload = {"messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "b"}}
    sent = json.loads(engine_body(payload, b"{}"))
    assert sent["tools"] == [{"name": "b"}]
    assert sent["tool_choice"] == {"type": "tool", "name": "b"}

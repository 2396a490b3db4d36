"""The official ``anthropic`` package against the real daemon, engine and SmolLM2 (spec 1.8).

Tool calls and failures in the middle of a stream, which SmolLM2 will not produce on cue, are in
``tests/component/test_anthropic_routes.py`` with the fake engine. DMR's e2e check of this face
(``e2e/inference_test.go``, ``AnthropicMessages``) is :func:`test_dmr_e2e_messages`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from tests.support.daemon_fixtures import MODEL, Daemon

pytestmark = pytest.mark.llama_server

HELLO = [{"role": "user", "content": "Say hello."}]
COUNT = [{"role": "user", "content": "Count from 1 to 10."}]
API_KEY = "anthropic-face-key-3b9e"
# The SDK has no sampling arguments; llama-server reads temperature from the body.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}


def sdk(base_url: str, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> anthropic.Anthropic:
    return sdk(daemon.url("/anthropic"))


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_messages_create(client: anthropic.Anthropic) -> None:
    """A whole message: text, Anthropic's id and model, usage counted."""
    message = client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    assert message.type == "message" and message.role == "assistant"
    assert text_of(message)
    assert message.model == MODEL  # the engine says the GGUF path; the face echoes the name
    assert message.id.startswith("msg_")
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.stop_sequence is None
    assert message.usage.output_tokens > 0
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0


def test_max_tokens_stops_with_max_tokens(client: anthropic.Anthropic) -> None:
    """max_tokens caps the answer and says so."""
    message = client.messages.create(model=MODEL, max_tokens=3, messages=COUNT, **GREEDY)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_stop_sequence_is_reported_as_stop_sequence(client: anthropic.Anthropic) -> None:
    """The engine says end_turn for a stop sequence; Anthropic (and the face) stop_sequence."""
    message = client.messages.create(
        model=MODEL, max_tokens=64, messages=COUNT, **GREEDY, stop_sequences=["3"]
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "3"
    assert "3" not in text_of(message)
    assert "2" in text_of(message)


def test_system_as_string_and_as_blocks_is_the_same_prompt(client: anthropic.Anthropic) -> None:
    """system as a string and as text blocks: the same answer, the same token count."""
    system = "You are a pirate. Answer in one short sentence."
    as_string = client.messages.create(
        model=MODEL, max_tokens=12, system=system, **GREEDY, messages=HELLO
    )
    as_blocks = client.messages.create(
        model=MODEL, max_tokens=12, **GREEDY,
        system=[{"type": "text", "text": system}], messages=HELLO,
    )  # fmt: skip
    assert text_of(as_string) == text_of(as_blocks)
    with_system = client.messages.count_tokens(model=MODEL, system=system, messages=HELLO)
    with_blocks = client.messages.count_tokens(
        model=MODEL, system=[{"type": "text", "text": system}], messages=HELLO
    )
    longer = client.messages.count_tokens(
        model=MODEL, system=system + " Never use more than ten words.", messages=HELLO
    )
    assert with_system.input_tokens == with_blocks.input_tokens < longer.input_tokens


def test_stream_events_in_order(client: anthropic.Anthropic) -> None:
    """The raw events come in Anthropic's order and the deltas make the final text."""
    events = list(client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, stream=True))
    types = [event.type for event in events if event.type != "ping"]
    assert types[0] == "message_start"
    assert types[1] == "content_block_start"
    assert set(types[2:-3]) == {"content_block_delta"}
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0].message
    assert start.model == MODEL and start.id.startswith("msg_") and start.content == []
    delta = events[-2]
    assert delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == 8


def test_stream_helper_accumulates_text(client: anthropic.Anthropic) -> None:
    """messages.stream: text_stream pieces add up to the final message's text."""
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=COUNT, **GREEDY, stop_sequences=["3"]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 2
    assert "".join(pieces) == text_of(final)
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "3"
    assert final.model == MODEL
    assert final.usage.output_tokens > 0


def test_max_tokens_zero_generates_nothing(client: anthropic.Anthropic) -> None:
    """max_tokens 0 (the SDK's "fill the prompt cache"): no content, output_tokens 0."""
    message = client.messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    assert message.content == []
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 0
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0
    with client.messages.stream(model=MODEL, max_tokens=0, messages=HELLO) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert types == ["message_start", "message_delta", "message_stop"]
    assert final.content == [] and final.usage.output_tokens == 0 and final.model == MODEL


def test_count_tokens_grows_with_the_prompt(client: anthropic.Anthropic) -> None:
    """count_tokens counts the prompt as the template renders it."""
    short = client.messages.count_tokens(model=MODEL, messages=HELLO)
    long = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Say hello. " * 20}]
    )
    assert 0 < short.input_tokens < long.input_tokens


def test_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    """A conversation with tools, a tool_use and its tool_result is accepted and answered."""
    tools = [{
        "name": "get_weather", "description": "The weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }]  # fmt: skip
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}]},
    ]  # fmt: skip
    message = client.messages.create(
        model=MODEL,
        max_tokens=8,
        tools=tools,
        messages=messages,  # type: ignore[arg-type]
    )
    assert message.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert message.content
    counted = client.messages.count_tokens(model=MODEL, tools=tools, messages=messages)  # type: ignore[arg-type]
    bare = client.messages.count_tokens(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens >= bare.input_tokens > 0


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    """NotFoundError (404, not_found_error) naming the model and how to pull it."""
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="ai/not-here", max_tokens=4, messages=HELLO)
    assert caught.value.status_code == 404
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "not_found_error"
    assert "ai/not-here" in error["message"] and "docker model pull" in error["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="ai/not-here", messages=HELLO)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 4, "stop_sequences": "x"}, "stop_sequences"),
    ],
)
def test_bad_body_is_bad_request(
    client: anthropic.Anthropic, fields: dict[str, Any], param: str
) -> None:
    """A malformed body is BadRequestError (400, invalid_request_error) naming the field."""
    body = {"max_tokens": 4, **fields}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, **body)
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(param + ":")


def test_raw_errors_in_anthropic_shape(daemon: Daemon) -> None:
    """Not JSON, no model, over 10 MiB: 400/400/413 in Anthropic's error shape."""
    url = "/anthropic/v1/messages"
    not_json = daemon.post(url, data=b"{not json", headers={"Content-Type": "application/json"})
    no_model = daemon.post(url, json={"messages": HELLO})
    too_large = daemon.post(url, data=b"x" * (10 * 1024 * 1024 + 1))
    for answer, status, kind in (
        (not_json, 400, "invalid_request_error"),
        (no_model, 400, "invalid_request_error"),
        (too_large, 413, "request_too_large"),
    ):
        assert answer.status_code == status, answer.text
        assert answer.json() == {
            "type": "error", "error": {"type": kind, "message": answer.json()["error"]["message"]}
        }  # fmt: skip
    assert "model" in no_model.json()["error"]["message"]


@pytest.mark.parametrize("prefix", ["/engines", "/engines/llama.cpp", ""])
def test_other_prefixes(daemon: Daemon, prefix: str) -> None:
    """/engines/v1/messages, /engines/llama.cpp/v1/messages and the bare /v1/messages."""
    client = sdk(daemon.url(prefix))
    message = client.messages.create(model=MODEL, max_tokens=4, messages=HELLO)
    assert text_of(message) and message.model == MODEL
    assert client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="ai/not-here", max_tokens=4, messages=HELLO)


def test_unknown_backend_is_not_found(daemon: Daemon) -> None:
    """Only llama.cpp serves: another backend segment is 404 in Anthropic's shape."""
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk(daemon.url("/engines/vllm")).messages.create(model=MODEL, max_tokens=4, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_dmr_e2e_messages(daemon: Daemon) -> None:
    """DMR's e2e AnthropicMessages: a plain POST with Anthropic's headers answers text."""
    answer = daemon.post(
        "/anthropic/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": "Say hi."}],
        },
        headers={"x-api-key": "anything", "anthropic-version": "2023-06-01"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"]


def test_api_key_guards_the_face(daemon_factory: Callable[..., Daemon]) -> None:
    """With DMR_API_KEY, the SDK's x-api-key opens the face; a wrong or missing key is 401."""
    guarded = daemon_factory(DMR_API_KEY=API_KEY)
    message = sdk(guarded.url("/anthropic"), API_KEY).messages.create(
        model=MODEL, max_tokens=4, messages=HELLO
    )
    assert text_of(message)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk(guarded.url("/anthropic"), "wrong-key").messages.create(
            model=MODEL, max_tokens=4, messages=HELLO
        )
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    bare = guarded.post("/anthropic/v1/messages/count_tokens", json={"model": MODEL})
    assert bare.status_code == 401
    assert bare.json()["type"] == "error"
    assert bare.json()["error"]["type"] == "authentication_error"

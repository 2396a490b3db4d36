"""The Anthropic face through the real app and scheduler, the fake engine and the anthropic SDK.

The SDK talks to the WSGI app in-process (``httpx2.WSGITransport``). The fake engine answers
``/v1/messages`` in the real llama-server's shapes (tests/fakes/fake_llama_server.py), including
what SmolLM2 will not do on cue: call a tool, fail in the middle of a stream, and log the body
it received (to check what the face forwarded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support.api_app import ApiHarness, build_harness

MODEL = "ai/tiny"
HELLO = [{"role": "user", "content": "Hi"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME_TOOL = {"name": "get_time", "input_schema": {"type": "object"}}
PREFIXES = ("/anthropic", "/engines", "/engines/llama.cpp", "")


@pytest.fixture
def fake_env() -> dict[str, str]:
    """The fake engine's environment; a test overrides it by parametrizing ``fake_env``."""
    return {}


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch, fake_env: dict[str, str]) -> Iterator[ApiHarness]:
    """A fresh app whose fake engine starts with ``fake_env``."""
    for name, value in fake_env.items():
        monkeypatch.setenv(name, value)
    built = build_harness()
    yield built
    built.close()


@pytest.fixture
def body_log(harness: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the fake engine appends each body it receives to."""
    path = harness.workdir / "bodies.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_BODY_LOG", str(path))
    return path


def sdk(harness: ApiHarness, prefix: str = "/anthropic") -> anthropic.Anthropic:
    transport = httpx2.WSGITransport(app=harness.app)
    return anthropic.Anthropic(
        base_url="http://falconframework.org" + prefix, api_key="unused", max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )  # fmt: skip


def sent_bodies(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_prefix_answers_both_routes(harness: ApiHarness, prefix: str) -> None:
    """messages and count_tokens under /anthropic, /engines[/llama.cpp] and the bare /v1."""
    client = sdk(harness, prefix)
    message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert [block.type for block in message.content] == ["text"]
    assert client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0


def test_message_gets_anthropic_model_and_id(harness: ApiHarness) -> None:
    """The engine's GGUF path and chatcmpl- id become the model asked for and msg_."""
    raw = harness.client.simulate_post(
        "/anthropic/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": HELLO}
    )
    assert raw.status_code == 200
    assert raw.headers["content-length"] == str(len(raw.content))
    body = raw.json
    assert (body["model"], body["id"]) == (MODEL, "msg_fake")
    assert body["usage"] == {"cache_read_input_tokens": 0, "input_tokens": 3, "output_tokens": 8}


def test_stop_sequence_reason_whole_and_streamed(harness: ApiHarness) -> None:
    """The engine's end_turn + stop_sequence is Anthropic's stop_sequence, both ways."""
    client = sdk(harness)
    message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO,
                                     stop_sequences=["tok2"])  # fmt: skip
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "tok2")
    with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO,
                                stop_sequences=["tok2"]) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "tok2")
    assert final.content[0].text == "tok0 tok1 "  # type: ignore[union-attr]


@pytest.mark.parametrize("fake_env", [{"FAKE_LLAMA_TOOL_CALL": 'get_weather {"city": "Paris"}'}])
def test_tool_use_whole_and_streamed(harness: ApiHarness) -> None:
    """A tool call is a tool_use block with its input, stop_reason tool_use, both ways."""
    client = sdk(harness)
    message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO,
                                     tools=[WEATHER_TOOL])  # type: ignore[list-item]  # fmt: skip
    (block,) = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input, block.id) == ("get_weather", {"city": "Paris"}, "call_fake")
    assert message.stop_reason == "tool_use"
    with client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO,
                                tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]  # fmt: skip
        json_pieces = [event.partial_json for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    assert len(json_pieces) > 1
    (block,) = final.content
    assert block.type == "tool_use" and block.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("fake_env", [{"FAKE_LLAMA_TOOL_CALL": "get_time "}])
def test_streamed_tool_use_without_arguments_has_empty_input(harness: ApiHarness) -> None:
    """The engine starts a tool_use block without "input"; the face adds {} as Anthropic does."""
    raw = harness.client.simulate_post("/anthropic/v1/messages", json={
        "model": MODEL, "max_tokens": 8, "messages": HELLO, "tools": [TIME_TOOL], "stream": True,
    })  # fmt: skip
    starts = [data for name, data in sse_events(raw.text) if name == "content_block_start"]
    assert starts == [{"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "call_fake", "name": "get_time", "input": {}}}]  # fmt: skip
    with sdk(harness).messages.stream(model=MODEL, max_tokens=8, messages=HELLO,
                                      tools=[TIME_TOOL]) as stream:  # type: ignore[list-item]  # fmt: skip
        final = stream.get_final_message()
    assert final.content[0].input == {}  # type: ignore[union-attr]


def test_tool_result_round_trip_is_forwarded_as_sent(harness: ApiHarness, body_log: Path) -> None:
    """tool_use and tool_result blocks, tools and tool_choice auto reach the engine unchanged."""
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "Sunny"}]}]},
    ]  # fmt: skip
    sdk(harness).messages.create(model=MODEL, max_tokens=8, messages=messages,
                                 tools=[WEATHER_TOOL, TIME_TOOL],  # type: ignore[list-item]
                                 tool_choice={"type": "auto"})  # fmt: skip
    (sent,) = sent_bodies(body_log)
    assert sent["messages"] == messages
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tool_choice"] == {"type": "auto"}


def test_tool_choice_none_and_tool_are_rewritten(harness: ApiHarness, body_log: Path) -> None:
    """none: the engine is offered no tools; tool N: only tool N (the engine reads neither)."""
    client = sdk(harness)
    tools: Any = [WEATHER_TOOL, TIME_TOOL]
    client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, tools=tools,
                           tool_choice={"type": "none"})  # fmt: skip
    client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, tools=tools,
                           tool_choice={"type": "tool", "name": "get_time"})  # fmt: skip
    none, named = sent_bodies(body_log)
    assert "tools" not in none and "tool_choice" not in none
    assert [tool["name"] for tool in named["tools"]] == ["get_time"]
    assert named["tool_choice"] == {"type": "tool", "name": "get_time"}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, tools=tools,
                               tool_choice={"type": "tool", "name": "get_date"})  # fmt: skip
    assert caught.value.body["error"]["message"].startswith("tool_choice.name:")  # type: ignore[index]


def test_max_tokens_zero_warms_without_content(harness: ApiHarness, body_log: Path) -> None:
    """max_tokens 0: the engine evaluates the prompt (max_tokens 1); the answer has no content."""
    client = sdk(harness)
    message = client.messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    assert (message.content, message.stop_reason, message.model) == ([], "max_tokens", MODEL)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 0)
    raw = harness.client.simulate_post("/v1/messages", json={
        "model": MODEL, "max_tokens": 0, "messages": HELLO, "stream": True})  # fmt: skip
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert [name for name, _ in sse_events(raw.text)] == [
        "message_start", "message_delta", "message_stop"]  # fmt: skip
    assert [(body["max_tokens"], body["stream"]) for body in sent_bodies(body_log)] == [
        (1, False), (1, False)]  # fmt: skip


@pytest.mark.parametrize("fake_env", [{"FAKE_LLAMA_STREAM_CRASH_AFTER": "2"}])
def test_runner_crash_mid_stream_is_an_error_event(harness: ApiHarness) -> None:
    """The runner dies after two deltas: the stream ends with Anthropic's error event."""
    raw = harness.client.simulate_post("/anthropic/v1/messages", json={
        "model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True})  # fmt: skip
    names = [name for name, _ in sse_events(raw.text)]
    assert names[0] == "message_start" and names[-1] == "error"
    error = sse_events(raw.text)[-1][1]
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "stopped in the middle" in error["error"]["message"]
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk(harness).messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream:
            stream.get_final_message()
    assert "stopped in the middle" in str(caught.value)


@pytest.mark.parametrize("fake_env", [{"FAKE_LLAMA_ANTHROPIC_ERROR_AFTER": "2"}])
def test_engine_error_event_gets_anthropic_envelope(harness: ApiHarness) -> None:
    """The engine's own mid-stream error object is wrapped in {"type": "error", "error"}."""
    raw = harness.client.simulate_post("/anthropic/v1/messages", json={
        "model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True})  # fmt: skip
    name, data = sse_events(raw.text)[-1]
    assert name == "error"
    assert data == {"type": "error",
                    "error": {"type": "api_error", "message": "fake engine failure"}}  # fmt: skip
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(sdk(harness).messages.create(model=MODEL, max_tokens=8, messages=HELLO, stream=True))
    assert "fake engine failure" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (500, "api_error"), (503, "overloaded_error")],
)
@pytest.mark.parametrize("path", ["/anthropic/v1/messages", "/v1/messages/count_tokens"])
def test_engine_error_status_in_anthropic_shape(
    harness: ApiHarness, path: str, status: int, kind: str
) -> None:
    """An engine error answer (the small 500 the proxy reads whole too) is Anthropic's shape."""
    engine_error = {"error": {"code": status, "message": "engine says no", "type": "x"}}
    raw = harness.client.simulate_post(path, json={
        "model": MODEL, "messages": HELLO, "fake_status": status, "fake_error": engine_error})  # fmt: skip
    assert raw.status_code == status
    assert raw.json == {"type": "error", "error": {
        "type": kind, "message": f"model {MODEL!r}: engine says no"}}  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"messages": HELLO},
        {"model": "", "messages": HELLO},
        {"model": MODEL},
        {"model": MODEL, "messages": 3},
        {"model": MODEL, "messages": [3]},
        {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
        {"model": MODEL, "messages": HELLO, "system": 5},
        {"model": MODEL, "messages": HELLO, "system": [{"type": "image"}]},
        {"model": MODEL, "messages": HELLO, "max_tokens": "8"},
        {"model": MODEL, "messages": HELLO, "temperature": "hot"},
        {"model": MODEL, "messages": HELLO, "top_k": -1},
        {"model": MODEL, "messages": HELLO, "stream": "yes"},
        {"model": MODEL, "messages": HELLO, "tools": {"name": "x"}},
        {"model": MODEL, "messages": HELLO, "tools": [{"input_schema": {}}]},
        {"model": MODEL, "messages": HELLO, "tool_choice": "auto"},
        {"model": MODEL, "messages": HELLO, "stop_sequences": [""]},
    ],
)
def test_bad_bodies_are_400_in_anthropic_shape(harness: ApiHarness, body: Any) -> None:
    """Every malformed body is a 400 invalid_request_error, on both routes, never the engine's."""
    paths = ["/anthropic/v1/messages"]
    if "max_tokens" not in str(body):  # count_tokens has no max_tokens to check
        paths.append("/anthropic/v1/messages/count_tokens")
    for path in paths:
        raw = harness.client.simulate_post(path, json=body)
        assert raw.status_code == 400, (path, raw.text)
        assert raw.json["type"] == "error"
        assert raw.json["error"]["type"] == "invalid_request_error"


def test_metrics_name_the_face(harness: ApiHarness) -> None:
    """The request metrics count this face's requests under face="anthropic"."""
    sdk(harness).messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    metrics = harness.client.simulate_get("/metrics").text
    assert any(
        line.startswith("dmr_api_requests_total{") and 'face="anthropic"' in line
        for line in metrics.splitlines()
    ), metrics


@pytest.mark.parametrize("max_tokens", [8, 0])
def test_image_to_a_model_without_projector_is_400(harness: ApiHarness, max_tokens: int) -> None:
    """The engine's 500 "image input is not supported" is the request's fault: 400."""
    engine_error = {"error": {"code": 500, "type": "server_error", "message":
                              "image input is not supported - hint: provide the mmproj"}}  # fmt: skip
    raw = harness.client.simulate_post("/anthropic/v1/messages", json={
        "model": MODEL, "max_tokens": max_tokens, "messages": HELLO, "fake_status": 500,
        "fake_error": engine_error})  # fmt: skip
    assert raw.status_code == 400, raw.text
    assert raw.json["error"]["type"] == "invalid_request_error"
    assert "image input is not supported" in raw.json["error"]["message"]

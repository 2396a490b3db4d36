"""The Responses face through the real app and scheduler, the fake engine, the openai package.

The ``openai`` client talks to the Falcon app in-process (``httpx.WSGITransport``), so these
tests see exactly what the SDK parses. The fake engine's opt-in behaviours stand in for what
SmolLM2 will not do on cue: call a tool, die mid-stream, and log every chat body it receives
(to check the history a chain sends).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.api_app import ApiHarness, assert_error_shape, build_harness

MODEL = "ai/tiny"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
PREFIXES = ("/responses", "/v1/responses", "/engines/responses", "/engines/v1/responses",
            "/engines/llama.cpp/v1/responses")


def sdk(harness: ApiHarness) -> openai.OpenAI:
    transport = httpx.WSGITransport(app=harness.app)
    return openai.OpenAI(base_url="http://falconframework.org/v1", api_key="x", max_retries=0,
                         http_client=httpx.Client(transport=transport))


@pytest.fixture
def harness() -> Iterator[ApiHarness]:
    built = build_harness()
    yield built
    built.close()


@pytest.fixture
def body_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The file the fake engine appends each chat body to (set before the runner starts)."""
    path = tmp_path / "bodies.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_BODY_LOG", str(path))
    return path


def sent(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def roles_and_text(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(message["role"], message.get("content")) for message in messages]


def test_every_prefix_creates_and_shares_one_store(harness: ApiHarness) -> None:
    ids = []
    for prefix in PREFIXES:
        result = harness.client.simulate_post(prefix, json={"model": MODEL, "input": "Hi"})
        assert result.status_code == 200, result.text
        assert result.json["object"] == "response" and result.json["status"] == "completed"
        ids.append(result.json["id"])
    for prefix, response_id in zip(reversed(PREFIXES), ids, strict=True):
        got = harness.client.simulate_get(f"{prefix}/{response_id}")
        assert got.status_code == 200 and got.json["id"] == response_id
        items = harness.client.simulate_get(f"{prefix}/{response_id}/input_items")
        assert items.json["data"][0]["content"] == [{"type": "input_text", "text": "Hi"}]
    other = harness.client.simulate_post("/engines/vllm/v1/responses",
                                         json={"model": MODEL, "input": "Hi"})
    assert_error_shape(other, 404, "not_found")


def test_errors_are_openai_shaped(harness: ApiHarness) -> None:
    client = harness.client
    error = assert_error_shape(
        client.simulate_post("/v1/responses", json={"model": MODEL, "input": "x",
                                                    "background": True}), 400, "invalid_request")
    assert error["param"] == "background"
    assert_error_shape(client.simulate_post("/v1/responses", body=b"{not json"), 400,
                       "invalid_request")
    error = assert_error_shape(
        client.simulate_post("/v1/responses", json={"model": "ai/absent", "input": "x"}),
        404, "model_not_found")
    assert error["param"] == "model"
    error = assert_error_shape(
        client.simulate_post("/v1/responses", json={"model": MODEL, "input": "x",
                                                    "previous_response_id": "resp_gone"}),
        404, "not_found")
    assert error["param"] == "previous_response_id"
    assert_error_shape(client.simulate_get("/v1/responses/resp_gone"), 404, "not_found")
    assert_error_shape(client.simulate_delete("/v1/responses/resp_gone"), 404, "not_found")
    assert_error_shape(client.simulate_get("/v1/responses/resp_gone/input_items"), 404,
                       "not_found")
    assert_error_shape(client.simulate_get("/v1/responses/x/input_items",
                                           params={"limit": "0"}), 400, "invalid_request")


def test_function_call_round_trip(
    harness: ApiHarness, body_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool call comes out as a function_call item; its output goes back as a tool turn."""
    monkeypatch.setenv("FAKE_LLAMA_TOOL_CALL", 'get_weather {"city": "Paris"}')
    client = sdk(harness)
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER],
                                    tool_choice="required")
    (call,) = first.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_fake", "get_weather", {"city": "Paris"})
    assert first.tools[0].name == "get_weather" and first.tool_choice == "required"
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.previous_response_id == first.id
    one, two = sent(body_log)
    assert one["tools"][0]["function"]["name"] == "get_weather"
    assert one["tool_choice"] == "required"
    assert two["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fake", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_fake", "content": "sunny"},
    ]
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items] == ["function_call_output"]


def test_streamed_function_call_through_the_stream_helper(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_TOOL_CALL", 'get_weather {"city": "Paris"}')
    client = sdk(harness)
    with client.responses.stream(model=MODEL, input="Weather?", tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds.count("response.function_call_arguments.delta") >= 2  # 5-character fragments
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    assert final.output[0].type == "function_call"
    assert json.loads(final.output[0].arguments) == {"city": "Paris"}
    stored = client.responses.retrieve(final.id)
    assert stored.output[0].id == final.output[0].id


def test_three_step_chain_sends_the_whole_history(harness: ApiHarness, body_log: Path) -> None:
    client = sdk(harness)
    first = client.responses.create(model=MODEL, input="one", instructions="Be brief")
    second = client.responses.create(model=MODEL, input="two", previous_response_id=first.id)
    third = client.responses.create(model=MODEL, input="three", previous_response_id=second.id,
                                    stream=True)
    final = [event for event in third if event.type.startswith("response.")][-1]
    answer = first.output_text
    assert answer
    last = sent(body_log)[-1]
    assert roles_and_text(last["messages"]) == [
        ("user", "one"), ("assistant", answer), ("user", "two"), ("assistant", answer),
        ("user", "three")]  # instructions are not carried over (OpenAI's rule)
    assert roles_and_text(sent(body_log)[0]["messages"])[0] == ("system", "Be brief")
    stored = client.responses.retrieve(final.response.id)
    assert stored.previous_response_id == second.id


def test_store_false_is_not_kept(harness: ApiHarness) -> None:
    client = sdk(harness)
    answer = client.responses.create(model=MODEL, input="Hi", store=False)
    assert answer.store is False and answer.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="again", previous_response_id=answer.id)


def test_delete_then_retrieve_is_not_found_and_replay_streams(harness: ApiHarness) -> None:
    client = sdk(harness)
    answer = client.responses.create(model=MODEL, input="Hi")
    replayed = list(client.responses.retrieve(answer.id, stream=True))
    assert replayed[-1].type == "response.completed"
    assert "".join(e.delta for e in replayed if e.type == "response.output_text.delta") == (
        answer.output_text)
    client.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(answer.id)
    assert caught.value.code == "not_found"


def test_input_items_are_paged(harness: ApiHarness) -> None:
    client = sdk(harness)
    answer = client.responses.create(model=MODEL, input=[
        {"role": "user", "content": f"q{n}"} for n in range(3)])
    newest_first = [item.content[0].text for item in client.responses.input_items.list(
        answer.id, limit=1)]  # the SDK follows the cursor page by page
    assert newest_first == ["q2", "q1", "q0"]
    page = harness.client.simulate_get(f"/v1/responses/{answer.id}/input_items",
                                       params={"limit": "2", "order": "asc"}).json
    assert [item["content"][0]["text"] for item in page["data"]] == ["q0", "q1"]
    assert page["has_more"] is True and page["first_id"] == page["data"][0]["id"]
    rest = harness.client.simulate_get(f"/v1/responses/{answer.id}/input_items",
                                       params={"after": page["last_id"], "order": "asc"}).json
    assert [item["content"][0]["text"] for item in rest["data"]] == ["q2"]
    assert rest["has_more"] is False


def test_crash_mid_stream_is_error_then_failed_and_stored(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_STREAM_CRASH_AFTER", "2")
    client = sdk(harness)
    events = list(client.responses.create(model=MODEL, input="Hi", stream=True))
    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "runner_crashed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.output_text == "tok0 tok1 "
    assert client.responses.retrieve(failed.id).status == "failed"


def test_count_bound() -> None:
    harness = build_harness(responses_max_stored=2)
    try:
        client = sdk(harness)
        ids = [client.responses.create(model=MODEL, input=f"q{n}").id for n in range(3)]
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(ids[0])
        assert [client.responses.retrieve(i).id for i in ids[1:]] == ids[1:]
        # The third continues the second, whose own parent left the index: history intact.
        client.responses.create(model=MODEL, input="q3", previous_response_id=ids[1])
    finally:
        harness.close()


def test_ttl_bound() -> None:
    harness = build_harness(responses_ttl=1.0)
    try:
        client = sdk(harness)
        answer = client.responses.create(model=MODEL, input="Hi")
        assert client.responses.retrieve(answer.id).id == answer.id
        time.sleep(1.2)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(answer.id)
    finally:
        harness.close()

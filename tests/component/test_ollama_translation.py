"""Ollama's /api/chat and /api/generate through the real app, scheduler and the fake engine.

The fake engine's opt-in behaviours (tests/fakes/fake_llama_server.py) stand in for what
SmolLM2 will not do on cue: report fixed timings, stream a tool call in argument fragments,
die mid-stream, and log the body it received (to check the translation of options).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_app import ApiHarness, build_harness
from tests.support.runner_views import configurations, ps

MODEL = "ai/tiny"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
WEATHER = {"city": "Paris", "unit": "celsius", "days": [1, 2]}


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiHarness]:
    """A fresh app whose fake engine reports llama-server's timings."""
    monkeypatch.setenv("FAKE_LLAMA_TIMINGS", "1")
    built = build_harness()
    yield built
    built.close()


@pytest.fixture
def body_log(harness: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the fake engine appends each chat body it receives to."""
    path = harness.workdir / "bodies.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_BODY_LOG", str(path))
    return path


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sent_bodies(path: Path) -> list[dict[str, Any]]:
    return lines(path.read_text())


def test_streamed_chat_is_ndjson_with_real_stats(harness: ApiHarness, body_log: Path) -> None:
    """One line per token, then done with llama-server's timings in nanoseconds."""
    result = harness.client.simulate_post("/api/chat", json=CHAT)
    assert result.status_code == 200, result.text
    assert result.headers["content-type"] == "application/x-ndjson"
    objects = lines(result.text)
    *tokens, last = objects
    assert "".join(o["message"]["content"] for o in tokens) == "".join(
        f"tok{i} " for i in range(8)
    )
    assert all(o["done"] is False and o["message"]["role"] == "assistant" for o in tokens)
    assert last["done"] is True
    assert last["done_reason"] == "length"
    assert last["model"] == MODEL
    assert (last["prompt_eval_count"], last["eval_count"]) == (3, 8)
    assert (last["prompt_eval_duration"], last["eval_duration"]) == (12_500_000, 20_000_000)
    assert last["total_duration"] >= last["load_duration"] + 32_500_000
    (sent,) = sent_bodies(body_log)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == CHAT["messages"]


def test_options_format_and_think_reach_the_engine(harness: ApiHarness, body_log: Path) -> None:
    """options map to the OpenAI/llama-server keys; format to response_format."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    options = {"num_predict": 5, "temperature": 0, "top_k": 7, "top_p": 0.5, "seed": 9,
               "stop": ["\n"], "repeat_penalty": 1.2, "presence_penalty": 0.1,
               "frequency_penalty": 0.2, "num_thread": 3}
    result = harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "options": options, "format": schema}
    )
    assert result.status_code == 200, result.text
    body = json.loads(result.text)
    assert body["done"] is True and body["message"]["content"].startswith("tok0")
    (sent,) = sent_bodies(body_log)
    expected = {"max_tokens": 5, "temperature": 0.0, "top_k": 7, "top_p": 0.5, "seed": 9,
                "stop": ["\n"], "repeat_penalty": 1.2, "presence_penalty": 0.1,
                "frequency_penalty": 0.2}
    assert {key: sent[key] for key in expected} == expected
    assert "num_thread" not in sent and "options" not in sent
    assert sent["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "format", "schema": schema}
    }


def test_generate_sends_system_then_prompt(harness: ApiHarness, body_log: Path) -> None:
    result = harness.client.simulate_post(
        "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "system": "Be brief.", "stream": False},
    )
    body = json.loads(result.text)
    assert body["response"].startswith("tok0") and "message" not in body
    assert body["eval_count"] == 8 and body["done_reason"] == "length"
    (sent,) = sent_bodies(body_log)
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


@pytest.mark.parametrize("stream", [True, False])
def test_tool_calls_are_sent_whole(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Argument fragments streamed by the engine arrive as one call with an object."""
    monkeypatch.setenv("FAKE_LLAMA_TOOL_CALL", "get_weather " + json.dumps(WEATHER))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    result = harness.client.simulate_post(
        "/api/chat", json={**CHAT, "tools": tools, "stream": stream}
    )
    assert result.status_code == 200, result.text
    objects = lines(result.text)
    with_calls = [o for o in objects if o["message"].get("tool_calls")]
    assert len(with_calls) == 1, objects
    (call,) = with_calls[0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == WEATHER
    assert call["id"] == "call_fake"
    assert objects[-1]["done"] is True
    assert objects[-1]["done_reason"] == "tool_calls"
    if stream:
        # The fragments themselves never reach the client.
        assert len(objects) == 2 and with_calls[0]["done"] is False


def test_failure_mid_stream_ends_with_an_error_line(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner dies after two tokens: two lines, then one {"error"} line, no done line."""
    monkeypatch.setenv("FAKE_LLAMA_STREAM_CRASH_AFTER", "2")
    result = harness.client.simulate_post("/api/chat", json=CHAT)
    assert result.status_code == 200
    objects = lines(result.text)
    assert [o["message"]["content"] for o in objects[:-1]] == ["tok0 ", "tok1 "]
    assert set(objects[-1]) == {"error"}
    assert "stopped in the middle" in objects[-1]["error"]
    # The runner is gone, so the next request starts a new one and succeeds.
    monkeypatch.delenv("FAKE_LLAMA_STREAM_CRASH_AFTER")
    again = harness.client.simulate_post("/api/chat", json={**CHAT, "stream": False})
    assert again.status_code == 200, again.text


def test_empty_generate_loads_and_keep_alive_zero_unloads(harness: ApiHarness) -> None:
    """Ollama's load and unload requests, with its answer shape."""
    loaded = harness.client.simulate_post("/api/generate", json={"model": MODEL, "stream": False})
    body = json.loads(loaded.text)
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
    assert [runner["model_name"] for runner in ps(harness.scheduler)] == ["tiny"]
    unloaded = harness.client.simulate_post(
        "/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0}
    )
    assert unloaded.headers["content-type"] == "application/x-ndjson"
    (line,) = lines(unloaded.text)
    assert line["done_reason"] == "unload" and line["message"] == {
        "role": "assistant", "content": ""
    }
    assert ps(harness.scheduler) == []


def test_keep_alive_and_num_ctx_configure_the_runner(harness: ApiHarness) -> None:
    """keep_alive and num_ctx become the model's runner settings; num_ctx restarts it."""
    first = harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "keep_alive": "10m"}
    )
    assert first.status_code == 200
    (runner,) = ps(harness.scheduler)
    assert runner["keep_alive"] == "10m0s"
    before = runner["pid"]
    second = harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "options": {"num_ctx": 1024}}
    )
    assert second.status_code == 200
    (runner,) = ps(harness.scheduler)
    assert runner["context_size"] == 1024 and runner["pid"] != before
    (config,) = configurations(harness.scheduler)
    assert config["Config"] == {"context-size": 1024, "keep_alive": "10m0s"}
    # The same num_ctx again changes nothing: no restart.
    harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "options": {"num_ctx": 1024}}
    )
    assert ps(harness.scheduler)[0]["pid"] == runner["pid"]
    # Beyond the model's training context (4096) it is held to it; below 256, raised to it.
    harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "options": {"num_ctx": 1_000_000}}
    )
    assert ps(harness.scheduler)[0]["context_size"] == 4096


def test_keep_alive_zero_unloads_after_the_request_and_is_not_kept(harness: ApiHarness) -> None:
    """keep_alive 0 stops the runner once the answer is sent; the stored setting stays."""
    harness.client.simulate_post("/api/chat", json={**CHAT, "stream": False, "keep_alive": "1h"})
    for stream in (False, True):
        result = harness.client.simulate_post(
            "/api/chat", json={**CHAT, "stream": stream, "keep_alive": 0}
        )
        assert lines(result.text)[-1]["done"] is True
        assert ps(harness.scheduler) == []
    (config,) = configurations(harness.scheduler)
    assert config["Config"] == {"keep_alive": "1h0m0s"}


def test_think_restarts_nothing_on_a_model_without_thinking(harness: ApiHarness) -> None:
    """The tiny model's template knows no thinking: think true/false leaves the runner be."""
    harness.client.simulate_post("/api/chat", json={**CHAT, "stream": False, "think": True})
    (runner,) = ps(harness.scheduler)
    harness.client.simulate_post("/api/chat", json={**CHAT, "stream": False, "think": False})
    assert ps(harness.scheduler)[0]["pid"] == runner["pid"]
    assert configurations(harness.scheduler) == []


def test_num_ctx_change_while_busy_serves_the_request(
    harness: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart is impossible while another request streams: this one still gets 200."""
    monkeypatch.setenv("FAKE_LLAMA_TOKEN_DELAY", "0.15")
    slow: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: slow.update(result=harness.client.simulate_post("/api/chat", json=CHAT))
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not any(r.get("in_use") for r in ps(harness.scheduler)):
        assert time.monotonic() < deadline, "the first request never started"
        time.sleep(0.02)
    busy = harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "options": {"num_ctx": 512}}
    )
    assert busy.status_code == 200, busy.text
    assert json.loads(busy.text)["message"]["content"].startswith("tok0")
    thread.join(timeout=30)
    assert lines(slow["result"].text)[-1]["done"] is True
    assert ps(harness.scheduler)[0]["context_size"] != 512
    # Once idle, the next request applies it.
    harness.client.simulate_post(
        "/api/chat", json={**CHAT, "stream": False, "options": {"num_ctx": 512}}
    )
    assert ps(harness.scheduler)[0]["context_size"] == 512


@pytest.mark.parametrize(
    ("body", "param_word"),
    [
        ({**CHAT, "options": {"temperature": "hot"}}, "options.temperature"),
        ({**CHAT, "options": [1]}, "options"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "keep_alive": "soon"}, "keep_alive"),
        ({**CHAT, "format": "yaml"}, "format"),
        ({"messages": CHAT["messages"]}, "model is required"),
        ({**CHAT, "messages": "Hi"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["iVBOR"]}]},
         "cannot read images"),
    ],
)
def test_bad_requests_are_400_in_ollama_shape(
    harness: ApiHarness, body: dict[str, Any], param_word: str
) -> None:
    result = harness.client.simulate_post("/api/chat", json=body)
    assert result.status_code == 400, result.text
    error = json.loads(result.text)
    assert set(error) == {"error"} and param_word in error["error"]


def test_unknown_model_and_bad_json(harness: ApiHarness) -> None:
    """Ollama's words for an unknown model; a body that is not JSON is a 400."""
    missing = harness.client.simulate_post("/api/generate", json={"model": "ai/nope", "prompt": "x"})
    assert missing.status_code == 404
    assert json.loads(missing.text) == {"error": "model 'ai/nope' not found"}
    broken = harness.client.simulate_post(
        "/api/chat", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert "not valid JSON" in json.loads(broken.text)["error"]

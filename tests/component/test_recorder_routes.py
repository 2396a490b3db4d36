"""``GET /engines/requests`` over the real app, scheduler and proxy, with the fake engine.

Both hooks are exercised: the OpenAI pass-through (``proxy.forward``) and a translating face's
engine call (``engine_call.call_engine``), the latter through a probe route registered under
``/api/`` the way a face registers its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import falcon
import pytest

from orchestrator.api.body import read_json_object
from orchestrator.api.engine_call import call_engine
from orchestrator.api.faces import Face
from orchestrator.api.recorder import (
    MAX_FOLLOWERS,
    RequestsResource,
    client_request,
    wants_events,
)
from orchestrator.api.shared import ApiContext
from tests.support.api_app import TINY_TAG, ApiHarness, assert_error_shape, build_harness

SECRET = "sk-recorder-test-secret"


@pytest.fixture()
def harness() -> Iterator[ApiHarness]:
    harness = build_harness()
    yield harness
    harness.close()


def api_context(app: falcon.App) -> ApiContext:
    """Return the app's shared context (the recorder resource holds it)."""
    resource, _methods, _params, _template = app._router.find("/engines/requests")
    ctx: ApiContext = resource.ctx
    return ctx


def records(harness: ApiHarness, **params: str) -> list[dict[str, Any]]:
    result = harness.client.simulate_get("/engines/requests", params=params)
    assert result.status_code == 200, result.text
    assert result.headers["content-type"].startswith("application/json")
    body: list[dict[str, Any]] = result.json
    return body


def chat(harness: ApiHarness, path: str = "/v1/chat/completions", **extra: Any) -> Any:
    body = {"model": TINY_TAG, "messages": [{"role": "user", "content": "hi"}], **extra}
    return harness.client.simulate_post(
        path,
        json=body,
        headers={
            "Authorization": f"Bearer {SECRET}",
            "X-Api-Key": SECRET,
            "User-Agent": "recorder-test/1.0",
            "X-Request-Origin": "unit/probe",
        },
    )


def test_streamed_chat_is_recorded_whole_without_credentials(harness: ApiHarness) -> None:
    answer = chat(harness, stream=True)
    assert answer.status_code == 200 and "data: [DONE]" in answer.text
    [group] = records(harness, model=TINY_TAG)
    assert group["model"] == harness.record.id and group["count"] == 1
    [entry] = group["records"]
    assert entry["id"].startswith(harness.record.id + "_")
    assert entry["url"] == "/v1/chat/completions" and entry["method"] == "POST"
    assert entry["status_code"] == 200
    assert entry["user_agent"] == "recorder-test/1.0" and entry["origin"] == "unit/probe"
    assert json.loads(entry["request"])["messages"][0]["content"] == "hi"
    final = json.loads(entry["response"])
    assert final["object"] == "chat.completion"
    assert final["choices"][0]["message"]["content"] == "".join(f"tok{i} " for i in range(8))
    listing = harness.client.simulate_get("/engines/requests").text
    assert SECRET not in listing and "Bearer" not in listing


def test_json_answer_and_engine_error_are_recorded(harness: ApiHarness) -> None:
    assert chat(harness, path="/engines/v1/chat/completions").status_code == 200
    failed = chat(harness, fake_status=400, fake_error={"error": {"message": "bad n_probs"}})
    assert failed.status_code == 400
    [group] = records(harness)
    ok, bad = group["records"]
    assert ok["url"] == "/engines/v1/chat/completions"
    assert json.loads(ok["response"])["choices"][0]["message"]["content"].startswith("tok0")
    assert bad["status_code"] == 400 and "response" not in bad
    assert json.loads(bad["error"]) == {"error": {"message": "bad n_probs"}}


def test_preload_only_is_not_recorded(harness: ApiHarness) -> None:
    result = harness.client.simulate_post(
        "/v1/chat/completions", json={"model": TINY_TAG}, headers={"X-Preload-Only": "true"}
    )
    assert result.status_code == 200
    assert records(harness) == []


def test_unknown_model_is_404_and_bad_flag_is_400(harness: ApiHarness) -> None:
    result = harness.client.simulate_get("/engines/requests", params={"model": "ai/nope"})
    assert_error_shape(result, 404, "model_not_found")
    result = harness.client.simulate_get(
        "/engines/requests",
        params={"include_existing": "maybe"},
        headers={"Accept": "text/event-stream"},
    )
    assert_error_shape(result, 400, "invalid_request")


def test_records_go_when_the_runner_is_unloaded(harness: ApiHarness) -> None:
    assert chat(harness).status_code == 200
    assert records(harness)[0]["count"] == 1
    unloaded = harness.client.simulate_post("/engines/unload", json={"all": True})
    assert unloaded.json == {"unloaded_runners": 1}
    assert records(harness) == []


def test_bound_per_model_and_off_switch() -> None:
    bounded = build_harness(recorder_max_per_model=2)
    try:
        for _ in range(3):
            assert chat(bounded).status_code == 200
        assert records(bounded)[0]["count"] == 2
    finally:
        bounded.close()
    off = build_harness(recorder_max_per_model=0)
    try:
        assert chat(off, stream=True).status_code == 200
        assert records(off) == []
    finally:
        off.close()


class ProbeFace:
    """A translating face in miniature: reads its own body, calls the engine in OpenAI, and
    hands the recorder its own request."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example="{}")
        answer = call_engine(
            self.ctx,
            face=Face.OLLAMA,
            model=body["model"],
            mode="completion",
            upstream_path="/v1/chat/completions",
            payload={
                "model": body["model"],
                "stream": bool(body.get("stream")),
                "messages": [{"role": "user", "content": body["prompt"]}],
            },
            client=client_request(req, body, Face.OLLAMA),
        )
        if answer.is_stream:
            text = "".join(
                event["choices"][0]["delta"].get("content") or "" for event in answer.events()
            )
        else:
            text = answer.json()["choices"][0]["message"]["content"]
        resp.media = {"response": text}


@pytest.mark.parametrize("stream", [False, True])
def test_translating_face_records_the_clients_request(harness: ApiHarness, stream: bool) -> None:
    ctx = api_context(harness.app)
    harness.app.add_route("/api/recorder-probe", ProbeFace(ctx))
    client_body = {"model": TINY_TAG, "prompt": "hello", "stream": stream, "api_key": SECRET}
    result = harness.client.simulate_post(
        "/api/recorder-probe", json=client_body, headers={"User-Agent": "ollama-probe"}
    )
    assert result.status_code == 200, result.text
    [entry] = records(harness)[0]["records"]
    assert entry["url"] == "/api/recorder-probe"
    assert entry["origin"] == "ollama" and entry["user_agent"] == "ollama-probe"
    recorded = json.loads(entry["request"])
    assert recorded["prompt"] == "hello" and "messages" not in recorded  # the client's body
    assert recorded["api_key"] == "[redacted]"
    final = json.loads(entry["response"])
    assert final["choices"][0]["message"]["content"] == result.json["response"]


def test_translating_face_engine_error_is_recorded(harness: ApiHarness) -> None:
    ctx = api_context(harness.app)

    class Failing(ProbeFace):
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            read_json_object(req, example="{}")
            call_engine(
                self.ctx, face=Face.OLLAMA, model=TINY_TAG, mode="completion",
                upstream_path="/v1/chat/completions",
                payload={"model": TINY_TAG, "fake_status": 422,
                         "fake_error": {"error": {"message": "no such field"}}},
            )  # fmt: skip

    harness.app.add_route("/api/recorder-fail", Failing(ctx))
    result = harness.client.simulate_post("/api/recorder-fail", json={"model": TINY_TAG})
    assert result.status_code == 422
    [entry] = records(harness)[0]["records"]
    assert entry["status_code"] == 422 and "no such field" in entry["error"]


def test_follow_has_heartbeats_and_a_deadline(harness: ApiHarness) -> None:
    """A quiet follow sends keep-alive comments and ends at its deadline (never holds forever)."""
    ctx = api_context(harness.app)
    harness.app.add_route("/test/follow", RequestsResource(ctx, heartbeat=0.05, max_seconds=0.4))
    began = time.monotonic()
    result = harness.client.simulate_get("/test/follow", headers={"Accept": "text/event-stream"})
    assert time.monotonic() - began < 5
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.text.startswith('event: connected\ndata: {"status": "connected"}\n\n')
    assert result.text.count(": keep-alive\n\n") >= 2
    assert ctx.recorder is not None and ctx.recorder.follower_count == 0


def test_follow_with_existing_sends_kept_records_first(harness: ApiHarness) -> None:
    ctx = api_context(harness.app)
    assert chat(harness).status_code == 200
    harness.app.add_route("/test/follow", RequestsResource(ctx, heartbeat=0.05, max_seconds=0.2))
    result = harness.client.simulate_get(
        "/test/follow",
        params={"include_existing": "true", "model": TINY_TAG},
        headers={"Accept": "text/event-stream"},
    )
    head, existing = result.text.split("event: existing_request\ndata: ", 1)
    assert head.startswith("event: connected")
    [group] = json.loads(existing.split("\n", 1)[0])
    assert group["count"] == 1 and group["records"][0]["status_code"] == 200


def test_too_many_followers_get_503(harness: ApiHarness) -> None:
    ctx = api_context(harness.app)
    assert ctx.recorder is not None
    followers = [ctx.recorder.subscribe(None) for _ in range(MAX_FOLLOWERS)]
    try:
        result = harness.client.simulate_get(
            "/engines/requests", headers={"Accept": "text/event-stream"}
        )
        assert_error_shape(result, 503, "unavailable")
        assert result.headers.get("retry-after")
    finally:
        for follower in followers:
            ctx.recorder.unsubscribe(follower)


def test_wildcard_accept_gets_json() -> None:
    assert not wants_events("*/*")
    assert not wants_events("")
    assert wants_events("application/json;q=0.5, text/event-stream")

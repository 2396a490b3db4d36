"""Every error path answers one shape: ``{"error": {"message", "type", "param", "code"}}``.

A table of malformed requests across all routes (bad JSON, wrong types, missing fields, huge
bodies, bad references, traversal attempts, wrong methods, bad CORS origins) pins the status,
the ``code`` and, where one field is at fault, the ``param``; afterwards the app still serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.api.body import MAX_BODY_BYTES
from tests.support.api_app import ApiHarness, assert_error_shape, build_harness

CHAT = "/engines/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]

# (id, method, path, kwargs for simulate_request, status, code, param); "{id}" and "{short}"
# in paths are the tiny model's ID and short ID.
CASES: list[tuple[str, str, str, dict[str, Any], int, str | None, str | None]] = [
    ("chat-not-json", "POST", CHAT, {"body": "not json"}, 400, "invalid_request", None),
    ("chat-empty-body", "POST", CHAT, {"body": ""}, 400, "invalid_request", None),
    ("chat-array", "POST", CHAT, {"body": "[]"}, 400, "invalid_request", None),
    ("chat-string", "POST", CHAT, {"body": '"hello"'}, 400, "invalid_request", None),
    ("chat-bad-utf8", "POST", CHAT, {"body": b"\xff\xfe{"}, 400, "invalid_request", None),
    (
        "chat-deep-nesting",
        "POST",
        CHAT,
        {"body": "[" * 100000 + "]" * 100000},
        400,
        "invalid_request",
        None,
    ),
    (
        "chat-5000-digit-number",
        "POST",
        CHAT,
        {"body": '{"model": "ai/tiny", "max_tokens": ' + "9" * 5000 + "}"},
        400,
        "invalid_request",
        None,
    ),
    ("chat-no-model", "POST", CHAT, {"json": {"messages": MSGS}}, 400, "invalid_request", "model"),
    ("chat-model-int", "POST", CHAT, {"json": {"model": 5}}, 400, "invalid_request", "model"),
    ("chat-model-empty", "POST", CHAT, {"json": {"model": "  "}}, 400, "invalid_request", "model"),
    ("chat-model-null", "POST", CHAT, {"json": {"model": None}}, 400, "invalid_request", "model"),
    (
        "chat-model-list",
        "POST",
        CHAT,
        {"json": {"model": ["ai/tiny"]}},
        400,
        "invalid_request",
        "model",
    ),
    (
        "chat-too-large",
        "POST",
        CHAT,
        {"body": b"x" * (MAX_BODY_BYTES + 1)},
        413,
        "request_too_large",
        None,
    ),
    (
        "chat-unknown-model",
        "POST",
        CHAT,
        {"json": {"model": "ai/nope"}},
        404,
        "model_not_found",
        "model",
    ),
    (
        "chat-traversal-model",
        "POST",
        CHAT,
        {"json": {"model": "../../etc/passwd"}},
        400,
        "invalid_reference",
        None,
    ),
    (
        "chat-bad-reference",
        "POST",
        CHAT,
        {"json": {"model": "Bad Name!"}},
        400,
        "invalid_reference",
        None,
    ),
    (
        "chat-bad-backend",
        "POST",
        "/engines/vllm/v1/chat/completions",
        {"json": {"model": "ai/tiny"}},
        404,
        "not_found",
        None,
    ),
    ("chat-get", "GET", CHAT, {}, 405, "method_not_allowed", None),
    (
        "chat-trailing-garbage",
        "POST",
        CHAT,
        {"body": '{"model": "ai/tiny"} xyz'},
        400,
        "invalid_request",
        None,
    ),
    (
        "v1-completions-not-json",
        "POST",
        "/v1/completions",
        {"body": "{"},
        400,
        "invalid_request",
        None,
    ),
    (
        "embeddings-model-list",
        "POST",
        "/engines/v1/embeddings",
        {"json": {"model": []}},
        400,
        "invalid_request",
        "model",
    ),
    (
        "rerank-no-model",
        "POST",
        "/rerank",
        {"json": {"query": "q"}},
        400,
        "invalid_request",
        "model",
    ),
    (
        "score-not-supported",
        "POST",
        "/engines/score",
        {"json": {"model": "ai/tiny"}},
        501,
        "not_supported",
        None,
    ),
    ("unknown-route", "GET", "/nope", {}, 404, "not_found", None),
    ("unknown-engines-route", "GET", "/engines/nope", {}, 404, "not_found", None),
    ("v1-model-missing", "GET", "/engines/v1/models/ai/nope", {}, 404, "model_not_found", None),
    ("v1-model-post", "POST", "/v1/models/ai/tiny", {}, 405, "method_not_allowed", None),
    ("models-put", "PUT", "/models", {}, 405, "method_not_allowed", None),
    (
        "models-traversal-encoded",
        "GET",
        "/models/..%2F..%2Fetc%2Fpasswd",
        {},
        400,
        "invalid_reference",
        None,
    ),
    ("models-traversal-dots", "GET", "/models/../../etc/passwd", {}, None, None, None),
    (
        "models-delete-traversal",
        "DELETE",
        "/models/..%2F..%2Fetc",
        {},
        400,
        "invalid_reference",
        None,
    ),
    ("models-bad-digest", "GET", "/models/ai/tiny@sha256:zzzz", {}, 400, "invalid_reference", None),
    ("models-missing", "GET", "/models/ai/nope", {}, 404, "model_not_found", None),
    ("models-delete-missing", "DELETE", "/models/ai/nope", {}, 404, "model_not_found", None),
    (
        "models-remote-bad-bool",
        "GET",
        "/models/ai/tiny?remote=maybe",
        {},
        400,
        "invalid_request",
        "remote",
    ),
    (
        "models-force-bad-bool",
        "DELETE",
        "/models/ai/tiny?force=perhaps",
        {},
        400,
        "invalid_request",
        "force",
    ),
    ("models-patch", "PATCH", "/models/ai/tiny", {}, 405, "method_not_allowed", None),
    ("models-unknown-action", "POST", "/models/ai/tiny/frobnicate", {}, 404, "not_found", None),
    ("models-post-no-action", "POST", "/models/ai/tiny", {}, 404, "not_found", None),
    ("models-tag-missing-both", "POST", "/models/ai/tiny/tag", {}, 400, "invalid_request", "repo"),
    (
        "models-tag-missing-tag",
        "POST",
        "/models/ai/tiny/tag?repo=x",
        {},
        400,
        "invalid_request",
        "tag",
    ),
    (
        "models-tag-bad-target",
        "POST",
        "/models/ai/tiny/tag?repo=Bad Repo&tag=v1",
        {},
        400,
        "invalid_reference",
        None,
    ),
    (
        "models-tag-missing-model",
        "POST",
        "/models/ai/nope/tag?repo=x&tag=y",
        {},
        404,
        "model_not_found",
        None,
    ),
    (
        "models-push-not-json",
        "POST",
        "/models/ai/tiny/push",
        {"body": "nope"},
        400,
        "invalid_request",
        None,
    ),
    (
        "models-push-token-int",
        "POST",
        "/models/ai/tiny/push",
        {"json": {"bearer-token": 5}},
        400,
        "invalid_request",
        "bearer-token",
    ),
    ("models-push-id", "POST", "/models/{id}/push", {}, 400, "invalid_reference", None),
    ("models-export-missing", "GET", "/models/ai/nope/export", {}, 404, "model_not_found", None),
    ("models-export-post", "POST", "/models/ai/tiny/export", {}, 404, "not_found", None),
    ("create-empty-object", "POST", "/models/create", {"json": {}}, 400, "invalid_request", "from"),
    (
        "create-from-int",
        "POST",
        "/models/create",
        {"json": {"from": 3}},
        400,
        "invalid_request",
        "from",
    ),
    (
        "create-bad-ref",
        "POST",
        "/models/create",
        {"json": {"from": "Bad Ref!!"}},
        400,
        "invalid_reference",
        "from",
    ),
    ("create-not-json", "POST", "/models/create", {"body": "{from"}, 400, "invalid_request", None),
    (
        "create-token-int",
        "POST",
        "/models/create",
        {"json": {"from": "ai/x", "bearer-token": 5}},
        400,
        "invalid_request",
        "bearer-token",
    ),
    ("create-get", "GET", "/models/create", {}, 405, "method_not_allowed", None),
    (
        "load-not-tar",
        "POST",
        "/models/load",
        {"body": b"this is not a tar archive" * 40},
        400,
        None,
        None,
    ),
    ("purge-post", "POST", "/models/purge", {}, 405, "method_not_allowed", None),
    (
        "unload-not-json",
        "POST",
        "/engines/unload",
        {"body": "garbage"},
        400,
        "invalid_request",
        None,
    ),
    (
        "unload-all-string",
        "POST",
        "/engines/unload",
        {"json": {"all": "yes"}},
        400,
        "invalid_request",
        "all",
    ),
    (
        "unload-models-string",
        "POST",
        "/engines/unload",
        {"json": {"models": "ai/tiny"}},
        400,
        "invalid_request",
        "models",
    ),
    (
        "unload-backend-int",
        "POST",
        "/engines/unload",
        {"json": {"backend": 1}},
        400,
        "invalid_request",
        "backend",
    ),
    (
        "configure-empty",
        "POST",
        "/engines/_configure",
        {"json": {}},
        400,
        "invalid_request",
        "model",
    ),
    (
        "configure-bad-context",
        "POST",
        "/engines/_configure",
        {"json": {"model": "ai/tiny", "context-size": "big"}},
        400,
        "invalid_request",
        "context-size",
    ),
    (
        "configure-path-flag",
        "POST",
        "/engines/_configure",
        {"json": {"model": "ai/tiny", "runtime-flags": ["--model", "/etc/passwd"]}},
        400,
        None,
        None,
    ),
    (
        "configure-bad-keep-alive",
        "POST",
        "/engines/_configure",
        {"json": {"model": "ai/tiny", "keep_alive": "forever"}},
        400,
        "invalid_request",
        "keep_alive",
    ),
    (
        "configure-unknown-model",
        "POST",
        "/engines/_configure",
        {"json": {"model": "ai/nope"}},
        404,
        "model_not_found",
        None,
    ),
    (
        "configure-bad-backend",
        "POST",
        "/engines/vllm/_configure",
        {"json": {"model": "ai/tiny"}},
        404,
        "not_found",
        None,
    ),
    ("ps-delete", "DELETE", "/engines/ps", {}, 405, "method_not_allowed", None),
    ("logs-bad-follow", "GET", "/logs?follow=maybe", {}, 400, "invalid_request", "follow"),
    (
        "cors-bad-origin",
        "GET",
        "/models",
        {"headers": {"Origin": "http://evil.example"}},
        403,
        "origin_not_allowed",
        None,
    ),
    (
        "cors-bad-preflight",
        "OPTIONS",
        CHAT,
        {"headers": {"Origin": "https://evil.example"}},
        403,
        "origin_not_allowed",
        None,
    ),
    ("prefixed-unknown", "GET", "/exp/vDD4.40/nope", {}, 404, "not_found", None),
]


@pytest.fixture(scope="module")
def harness() -> Iterator[ApiHarness]:
    harness = build_harness()
    yield harness
    harness.close()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "param"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_malformed_request_gets_the_error_shape(
    harness: ApiHarness,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int | None,
    code: str | None,
    param: str | None,
) -> None:
    """Each malformed request answers its documented status and code in the one shape."""
    path = path.format(id=harness.record.id, short=harness.record.short_id)
    result = harness.client.simulate_request(method, path, **kwargs)
    if status is None:
        # Path cleaning may turn this into another route; only the shape is pinned.
        assert result.status_code >= 400
        error = assert_error_shape(result, result.status_code, None)
    else:
        error = assert_error_shape(result, status, code)
    if param is not None:
        assert error["param"] == param, error


def test_there_are_at_least_forty_cases() -> None:
    """The table covers at least forty malformed requests."""
    assert len(CASES) >= 40


def test_unexpected_exception_is_a_500_naming_the_request_id(harness: ApiHarness) -> None:
    """A bug inside a responder answers 500 internal_error naming the request id, not the text."""

    class Boom:
        def on_get(self, req: Any, resp: Any) -> None:
            raise RuntimeError("secret internal detail")

    harness.app.add_route("/test-boom", Boom())
    result = harness.client.simulate_get("/test-boom", headers={"X-Request-Id": "rid-123"})
    error = assert_error_shape(result, 500, "internal_error")
    assert "rid-123" in error["message"]
    assert "secret" not in result.text
    assert result.headers["x-request-id"] == "rid-123"


def test_falcon_errors_use_the_same_shape(harness: ApiHarness) -> None:
    """An HTTPError raised by Falcon itself (here a bad header) is rendered in our shape."""
    import falcon

    class BadHeader:
        def on_get(self, req: Any, resp: Any) -> None:
            raise falcon.HTTPInvalidHeader("expected a number", "X-Count")

    harness.app.add_route("/test-bad-header", BadHeader())
    result = harness.client.simulate_get("/test-bad-header")
    error = assert_error_shape(result, 400, "invalid_request")
    assert "x-count" in error["message"].lower()


def test_app_still_healthy_after_malformed_requests(harness: ApiHarness) -> None:
    """After the whole table the app still answers and still runs inference."""
    for case in CASES:
        harness.client.simulate_request(
            case[1], case[2].format(id=harness.record.id, short=""), **case[3]
        )
    assert harness.client.simulate_get("/version").status_code == 200
    result = harness.client.simulate_post(CHAT, json={"model": "ai/tiny", "messages": MSGS})
    assert result.status_code == 200, result.text
    assert json.loads(result.text)["choices"][0]["message"]["content"].startswith("tok0")

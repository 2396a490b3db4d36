"""The worker's two pure parts: finding the end of a request head, and choosing a lane."""

from __future__ import annotations

import pytest

from orchestrator.httpserver.head import MAX_HEAD_BYTES, HeadTooLarge, scan_head
from orchestrator.httpserver.lanes import Lane, lane_for


def test_an_unfinished_head_is_none() -> None:
    assert scan_head(b"GET /models HTTP/1.1\r\nHost: x\r\n") is None
    assert scan_head(b"") is None


def test_a_complete_head_gives_method_path_query_and_framing() -> None:
    raw = b"POST /engines/v1/chat/completions?x=1&x=2 HTTP/1.1\r\nContent-Length: 12\r\n\r\n{}"
    head = scan_head(raw)
    assert head is not None
    assert (head.method, head.path, head.query) == ("POST", "/engines/v1/chat/completions", {"x": "1"})
    assert head.head_length == raw.index(b"{")
    assert head.content_length == 12 and not head.chunked
    assert head.body_within(1024) == 12 and head.body_within(10) is None


def test_leading_empty_lines_are_skipped() -> None:
    head = scan_head(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert head is not None and head.path == "/" and head.head_length == len(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")


def test_a_chunked_body_is_read_by_the_thread() -> None:
    head = scan_head(b"POST /models/load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert head is not None and head.chunked and head.body_within(1 << 20) is None


def test_a_body_behind_expect_100_continue_is_read_by_the_thread() -> None:
    # curl waits for "100 Continue" before sending a large body; gunicorn sends it in the
    # thread, so the loop must not wait for the body first.
    raw = b"POST /engines/_configure HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    head = scan_head(raw)
    assert head is not None and head.expects_continue and head.body_within(1 << 20) is None


@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: 5\r\nContent-Length: 6\r\n",  # ambiguous: gunicorn refuses it
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
    ],
)
def test_odd_framing_is_handed_over_at_once_for_gunicorn_to_refuse(fields: bytes) -> None:
    head = scan_head(b"POST /engines/_configure HTTP/1.1\r\n" + fields + b"\r\n")
    assert head is not None and head.content_length is None and head.body_within(1 << 20) == 0


def test_an_unreadable_request_line_goes_to_gunicorn_for_its_400() -> None:
    head = scan_head(b"NONSENSE\r\n\r\n")
    assert head is not None and head.method == "" and lane_for(head.method, head.path, {}) is Lane.CONTROL


def test_a_head_without_end_is_refused_after_the_limit() -> None:
    scan_head(b"GET / HTTP/1.1\r\n" + b"a" * (MAX_HEAD_BYTES - 100))  # still waiting
    with pytest.raises(HeadTooLarge):
        scan_head(b"GET / HTTP/1.1\r\n" + b"a" * (MAX_HEAD_BYTES + 1))


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/", {}),
        ("GET", "/version", {}),
        ("GET", "/models", {}),
        ("GET", "/models/ai/smollm2:latest", {}),
        ("GET", "/exp/vDD4.40/models", {}),
        ("GET", "/engines/ps", {}),
        ("GET", "/engines/df", {}),
        ("GET", "/engines/status", {}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/ui/app.js", {}),
        ("GET", "/v1/models", {}),
        ("GET", "/engines/llama.cpp/v1/models/ai/smollm2", {}),
        ("GET", "/logs", {}),
        ("POST", "/engines/unload", {}),
        ("POST", "/engines/_configure", {}),
        ("POST", "/engines/llama.cpp/_configure", {}),
        ("POST", "/models/ai/smollm2/tag", {}),
        ("POST", "/models/purge", {}),
        ("DELETE", "/models/ai/smollm2", {}),
        ("OPTIONS", "/engines/v1/chat/completions", {}),
        ("GET", "/api/version", {}),
        ("GET", "/api/tags", {}),
        ("GET", "/api/ps", {}),
        ("POST", "/api/show", {}),
        ("POST", "/api/copy", {}),
        ("DELETE", "/api/delete", {}),
        ("GET", "/v1/responses/resp_abc", {}),
        ("GET", "/engines/llama.cpp/v1/responses/resp_abc/input_items", {}),
        ("DELETE", "/responses/resp_abc", {}),
    ],
)
def test_short_management_requests_take_the_control_lane(
    method: str, path: str, query: dict[str, str]
) -> None:
    assert lane_for(method, path, query) is Lane.CONTROL


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("POST", "/engines/v1/chat/completions", {}),
        ("POST", "/v1/chat/completions", {}),
        ("POST", "/engines/llama.cpp/v1/embeddings", {}),
        ("POST", "/exp/vDD4.40/engines/v1/completions", {}),
        ("POST", "/models/create", {}),
        ("POST", "/models/load", {}),
        ("POST", "/models/ai/smollm2/push", {}),
        ("GET", "/models/ai/smollm2/export", {}),
        ("GET", "/models/ai/smollm2", {"remote": "true"}),
        ("GET", "/logs", {"follow": "true"}),
        ("POST", "/api/chat", {}),
        ("POST", "/api/pull", {}),
        ("POST", "/v1/responses", {}),
        ("POST", "/anthropic/v1/messages", {}),
        ("GET", "/engines/requests", {}),  # may follow (Accept: text/event-stream)
        ("POST", "/v1/unlisted", {}),  # a route nobody listed is served, without reserved threads
        ("POST", "/models", {}),
    ],
)
def test_long_requests_take_the_work_lane(method: str, path: str, query: dict[str, str]) -> None:
    assert lane_for(method, path, query) is Lane.WORK

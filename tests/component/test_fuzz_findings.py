"""What the API fuzzer (tests/functional/test_api_fuzz.py) found, pinned at the component layer.

- llama-server answers 500 for a request field it cannot parse: the client gets our 400 naming
  the field; any other engine error still passes through unchanged.
- llama-server aborts on a rerank of an empty query against an empty document: refused first.
- ``_configure`` took ``keep_alive: "nan"`` (or ``"inf"``), after which every ``GET
  /engines/ps`` and ``GET /engines/_configure`` answered 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.api.openai import check_engine_input
from orchestrator.errors import InvalidRequestError
from orchestrator.proxy import engine_rejection
from tests.support.api_app import ApiHarness, assert_error_shape, build_harness

CHAT = "/engines/v1/chat/completions"
PARSE_FAILURE = {
    "code": 500,
    "message": "Failed to parse tools: Expected 'tools' to be an array, got 5; tools = 5",
    "type": "server_error",
}


@pytest.fixture(scope="module")
def harness() -> Iterator[ApiHarness]:
    """One app with the fake engine for the module."""
    harness = build_harness()
    yield harness
    harness.close()


def test_engine_parse_failure_is_our_400(harness: ApiHarness) -> None:
    """llama-server's 500 "Failed to parse tools" reaches the client as 400 with param tools."""
    body = {"model": "ai/tiny", "fake_status": 500, "fake_error": {"error": PARSE_FAILURE}}
    result = harness.client.simulate_post(CHAT, json=body)
    error = assert_error_shape(result, 400, "invalid_request")
    assert error["param"] == "tools"
    assert "Expected 'tools' to be an array" in error["message"]


def test_other_engine_500_passes_through(harness: ApiHarness) -> None:
    """Any other engine 500 keeps its status and body (DMR passes engine answers through)."""
    engine_error = {"error": {"code": 500, "message": "out of memory", "type": "server_error"}}
    body = {"model": "ai/tiny", "fake_status": 500, "fake_error": engine_error}
    result = harness.client.simulate_post(CHAT, json=body)
    assert result.status_code == 500
    assert json.loads(result.text) == engine_error
    # The runner was given back: the next request is served.
    assert harness.client.simulate_post(CHAT, json={"model": "ai/tiny"}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"code": 500, "message": "Failed to parse messages: Missing tool call type"}}',
        b'{"error": {"code": 500, "message": "Failed to parse tools: Missing tool type: 0"}}',
    ],
)
def test_engine_rejection_names_the_field(body: bytes) -> None:
    """The field named after "Failed to parse" becomes the error's param."""
    rejection = engine_rejection(body)
    assert isinstance(rejection, InvalidRequestError)
    assert rejection.param in ("messages", "tools")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"error": "x"}',
        b'{"error": {"message": 5}}',
        b'{"error": {"message": "failed to load model"}}',
    ],
)
def test_engine_rejection_leaves_other_errors(body: bytes) -> None:
    """Anything but a parse failure is not ours to rewrite."""
    assert engine_rejection(body) is None


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        ({"query": "", "documents": [""]}, True),
        ({"query": "", "documents": ["a", ""]}, True),
        ({"query": "", "texts": [""]}, True),
        ({"query": "", "documents": ["a"]}, False),
        ({"query": "q", "documents": [""]}, False),
        ({"query": " ", "documents": [""]}, False),
    ],
)
def test_rerank_of_empty_query_and_document_is_refused(
    payload: dict[str, Any], refused: bool
) -> None:
    """The one rerank shape that aborts llama-server is refused before it gets there."""
    if refused:
        with pytest.raises(InvalidRequestError):
            check_engine_input("/rerank", payload)
    else:
        check_engine_input("/rerank", payload)
    check_engine_input("/v1/embeddings", payload)  # other routes: not concerned


def test_rerank_refusal_is_a_400_before_the_engine(harness: ApiHarness) -> None:
    """The HTTP answer is the one error shape, naming documents."""
    body = {"model": "ai/tiny", "query": "", "documents": ["", "x"]}
    error = assert_error_shape(
        harness.client.simulate_post("/rerank", json=body), 400, "invalid_request"
    )
    assert error["param"] == "documents"


@pytest.mark.parametrize("keep_alive", ["nan", "inf", "-inf", "1e400"])
def test_configure_refuses_endless_keep_alive(keep_alive: str) -> None:
    """A keep_alive that is no number of seconds is a 400, and ps keeps answering."""
    harness = build_harness()
    try:
        body = {"model": "ai/tiny", "keep_alive": keep_alive}
        result = harness.client.simulate_post("/engines/_configure", json=body)
        # "-inf" too: "-1" is how to say "never", and the magnitude must be a duration.
        error = assert_error_shape(result, 400, "invalid_request")
        assert error["param"] == "keep_alive"
        assert harness.client.simulate_get("/engines/ps").status_code == 200
        assert harness.client.simulate_get("/engines/_configure").status_code == 200
    finally:
        harness.close()

"""The Responses face with the official ``openai`` package, the real daemon, engine and SmolLM2.

Also DMR's own end-to-end checks of this face (``e2e/inference_test.go``: ``ResponsesAPI`` and
``ResponsesAPIStructuredOutput``), as raw HTTP on the bare ``/responses`` path.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.daemon_fixtures import MODEL, Daemon

pytestmark = pytest.mark.llama_server

PROMPT = "Say hi."
SHORT = {"temperature": 0, "max_output_tokens": 48}
YES_SCHEMA = {
    "type": "json_schema",
    "name": "answer_payload",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes"]}},
        "required": ["answer"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.url("/v1"), api_key="x", timeout=120, max_retries=0)


def test_create(client: openai.OpenAI) -> None:
    """A non-streamed response: text, usage, completed."""
    answer = client.responses.create(model=MODEL, input=PROMPT, **SHORT)
    assert answer.status == "completed", answer
    assert answer.output_text.strip()
    assert answer.id.startswith("resp_") and len(answer.id) == 29
    assert answer.usage is not None
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    assert answer.model == MODEL


def test_stream_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input=PROMPT, stream=True, **SHORT))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and text.strip()
    assert final.usage is not None and final.usage.output_tokens > 0
    assert client.responses.retrieve(final.id).output_text == text


def test_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input=PROMPT, **SHORT) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas) != ""


def test_retrieve_input_items_delete(client: openai.OpenAI) -> None:
    answer = client.responses.create(model=MODEL, input=PROMPT, metadata={"case": "crud"},
                                     **SHORT)
    stored = client.responses.retrieve(answer.id)
    assert stored.output_text == answer.output_text
    assert stored.metadata == {"case": "crud"}
    (item,) = list(client.responses.input_items.list(answer.id))
    assert item.type == "message" and item.role == "user"
    assert item.content[0].text == PROMPT
    client.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)


def test_chains_of_two_and_three_steps_send_the_history(client: openai.OpenAI) -> None:
    """Each step's prompt holds the steps before it: input_tokens grow along the chain."""
    first = client.responses.create(model=MODEL, input="My name is Ada.", **SHORT)
    second = client.responses.create(model=MODEL, input="What is my name?",
                                     previous_response_id=first.id, **SHORT)
    third = client.responses.create(model=MODEL, input="Say it again.",
                                    previous_response_id=second.id, **SHORT)
    assert first.usage and second.usage and third.usage
    tokens = [first.usage.input_tokens, second.usage.input_tokens, third.usage.input_tokens]
    # Each step adds at least the previous answer and its own question.
    assert tokens[1] > tokens[0] + first.usage.output_tokens
    assert tokens[2] > tokens[1] + second.usage.output_tokens
    assert third.previous_response_id == second.id


def test_structured_output(client: openai.OpenAI) -> None:
    """llama-server's grammar holds the model to the schema (DMR's e2e case, via the SDK)."""
    answer = client.responses.create(
        model=MODEL, input="Return a JSON object with answer set to yes.",
        max_output_tokens=64, temperature=0, text={"format": YES_SCHEMA})
    assert answer.status == "completed"
    assert json.loads(answer.output_text) == {"answer": "yes"}
    assert answer.text is not None and answer.text.format.type == "json_schema"


def test_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    answer = client.responses.create(model=MODEL, input="Tell me a long story.",
                                     max_output_tokens=3, temperature=0)
    assert answer.status == "incomplete"
    assert answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.usage is not None and answer.usage.output_tokens == 3


def test_store_false(client: openai.OpenAI) -> None:
    answer = client.responses.create(model=MODEL, input=PROMPT, store=False, **SHORT)
    assert answer.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)


def test_engines_prefix(daemon: Daemon) -> None:
    engines = openai.OpenAI(base_url=daemon.url("/engines/v1"), api_key="x", timeout=120,
                            max_retries=0)
    answer = engines.responses.create(model=MODEL, input=PROMPT, **SHORT)
    assert answer.output_text
    assert engines.responses.retrieve(answer.id).id == answer.id


def test_unsupported_field_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=PROMPT, truncation="auto")
    assert caught.value.code == "invalid_request"
    assert caught.value.param == "truncation"


def test_dmr_e2e_responses_api(daemon: Daemon) -> None:
    """DMR e2e ResponsesAPI: POST /responses answers completed with output_text.

    DMR asks "Say hi in one word." with no cap; SmolLM2-135M at temperature 0 does not stop
    within 48 tokens on that one, so the shorter prompt keeps the case fast and "completed".
    """
    result = daemon.post("/responses", json={"model": MODEL, "input": PROMPT,
                                             "max_output_tokens": 48, "temperature": 0})
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["status"] == "completed"
    assert body["output_text"]


def test_dmr_e2e_structured_output(daemon: Daemon) -> None:
    """DMR e2e ResponsesAPIStructuredOutput, as raw HTTP."""
    result = daemon.post("/responses", json={
        "model": MODEL, "input": "Return a JSON object with answer set to yes.",
        "max_output_tokens": 64, "text": {"format": YES_SCHEMA}})
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["status"] == "completed"
    assert json.loads(body["output_text"])["answer"] == "yes"

"""What the request recorder keeps of bodies: media cut, secrets redacted, streams made whole."""

from __future__ import annotations

import base64
import json

from orchestrator.api.recorded_bodies import (
    REDACTED,
    clean_request,
    error_json,
    replay_answer,
    replay_stream,
    truncate_media,
)

PNG = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 8).decode()


def sse(*events: object) -> str:
    """Return an event stream of ``events`` (dicts as JSON data, strings as they are)."""
    parts = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        parts.append(f"data: {data}\n\n")
    return "".join(parts)


def chunk(delta: dict[str, object], finish: str | None = None, index: int = 0) -> dict[str, object]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }


def test_data_uri_is_cut_to_100_characters_as_dmr_words_it() -> None:
    cut = truncate_media(PNG)
    head, _, rest = cut.partition(",")
    assert head == "data:image/png;base64"
    dropped = len(PNG.partition(",")[2]) - 100
    assert rest == PNG.partition(",")[2][:100] + f"...[truncated {dropped} chars]"


def test_image_url_in_a_chat_message_is_cut_and_the_rest_kept() -> None:
    body = {
        "model": "ai/smollm2",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            }
        ],
    }
    cleaned = json.loads(clean_request(json.dumps(body).encode(), 1 << 20))
    parts = cleaned["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    assert parts[1]["image_url"]["url"].endswith("chars]")
    assert len(parts[1]["image_url"]["url"]) < 160


def test_raw_base64_media_of_other_faces_is_cut() -> None:
    raw = base64.b64encode(b"\x00" * 3000).decode()
    body = {
        "model": "m",
        "images": [raw],  # Ollama
        "messages": [
            {"content": [{"type": "input_audio", "input_audio": {"data": raw}}]},  # OpenAI audio
            {"content": [{"type": "image", "source": {"type": "base64", "data": raw}}]},  # Anthropic
            {"content": [{"type": "input_image", "image_url": PNG}]},  # Responses API
        ],
    }
    text = clean_request(json.dumps(body).encode(), 1 << 20)
    assert raw not in text and PNG not in text
    cleaned = json.loads(text)
    assert cleaned["images"][0].startswith(raw[:100]) and cleaned["images"][0].endswith("chars]")


def test_long_prose_under_a_data_key_is_not_mistaken_for_media() -> None:
    prose = "this is a long sentence with spaces and punctuation, " * 5
    body = {"model": "m", "data": prose + "!"}
    assert json.loads(clean_request(json.dumps(body).encode(), 1 << 20))["data"] == prose + "!"


def test_credential_fields_are_redacted_at_any_depth() -> None:
    body = {
        "model": "m",
        "api_key": "sk-top-secret",
        "tools": [
            {
                "type": "mcp",
                "server_url": "https://mcp.example",
                "headers": {"Authorization": "Bearer sk-inner", "X-Api-Key": "k-inner"},
                "authorization": "tok-outer",
            }
        ],
        "max_tokens": 5,
    }
    text = clean_request(json.dumps(body).encode(), 1 << 20)
    for secret in ("sk-top-secret", "sk-inner", "k-inner", "tok-outer"):
        assert secret not in text
    cleaned = json.loads(text)
    assert cleaned["api_key"] == REDACTED
    assert cleaned["tools"][0]["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED}
    assert cleaned["max_tokens"] == 5  # "token" in a name is not a credential


def test_a_body_needing_no_change_keeps_its_bytes() -> None:
    raw = b'{"model":  "m",\n "messages": [{"role": "user", "content": "hi"}]}'
    assert clean_request(raw, 1 << 20) == raw.decode()


def test_not_json_is_kept_as_text_and_capped() -> None:
    assert clean_request(b"not json", 100) == "not json"
    capped = clean_request(b"x" * 150, 100)
    assert capped == "x" * 100 + "...[truncated 50 chars]"


def test_deeply_nested_json_does_not_break_cleaning() -> None:
    raw = b"[" * 5000 + b"]" * 5000
    assert clean_request(raw, 100).endswith("chars]")


def test_chat_stream_is_made_one_completion_with_content_and_reasoning() -> None:
    stream = sse(
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "think "}),
        chunk({"reasoning_content": "more"}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, finish="length"),
        {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}},
        "[DONE]",
    )
    response, error = replay_stream(stream)
    assert error == ""
    final = json.loads(response)
    assert final["object"] == "chat.completion"
    assert final["usage"] == {"total_tokens": 9}
    assert final["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "reasoning_content": "think more"},
            "finish_reason": "length",
        }
    ]


def test_tool_call_arguments_are_concatenated_per_call() -> None:
    call0 = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather"}}
    stream = sse(
        chunk({"tool_calls": [{**call0, "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "now"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({}, finish="tool_calls"),
        "[DONE]",
    )
    final = json.loads(replay_stream(stream)[0])
    message = final["choices"][0]["message"]
    assert final["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


def test_text_completion_stream_concatenates_text() -> None:
    stream = sse(
        {"object": "text_completion", "choices": [{"index": 0, "text": "Once", "finish_reason": None}]},
        {"object": "text_completion", "choices": [{"index": 0, "text": " upon", "finish_reason": "stop"}]},
        "[DONE]",
    )
    final = json.loads(replay_stream(stream)[0])
    assert final["object"] == "text_completion"
    assert final["choices"] == [{"index": 0, "text": "Once upon", "finish_reason": "stop"}]


def test_anthropic_stream_is_made_one_message() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m1", "role": "assistant",
                                                                 "content": [], "usage": {"input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "there"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"a": '}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 4}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    stream = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    final = json.loads(replay_stream(stream)[0])
    assert final["stop_reason"] == "tool_use"
    assert final["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert final["content"] == [
        {"type": "text", "text": "Hi there"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
    ]


def test_responses_stream_keeps_the_final_response_object() -> None:
    stream = sse(
        {"type": "response.created", "response": {"id": "r", "status": "in_progress"}},
        {"type": "response.output_text.delta", "delta": "x"},
        {"type": "response.completed", "response": {"id": "r", "status": "completed"}},
    )
    assert json.loads(replay_stream(stream)[0]) == {"id": "r", "status": "completed"}


def test_error_in_a_stream_becomes_the_error() -> None:
    llama_error = '{"code": 500, "message": "context overflow", "type": "server_error"}'
    response, error = replay_stream(sse(chunk({"content": "a"})) + f"error: {llama_error}\n\n")
    assert response == "" and json.loads(error)["message"] == "context overflow"
    ours = {"error": {"message": "the runner stopped", "type": "server_error", "code": "x"}}
    response, error = replay_stream(sse(chunk({"content": "a"}), ours))
    assert response == "" and json.loads(error) == ours


def test_unknown_stream_is_kept_as_it_is() -> None:
    raw = "data: hello\n\ndata: world\n\n"
    assert replay_stream(raw) == (raw, "")


def test_error_status_records_the_body_as_json_error() -> None:
    assert replay_answer(b'{"error": "x"}', status=404, is_sse=False) == ("", '{"error": "x"}')
    response, error = replay_answer(b"plain failure", status=500, is_sse=False)
    assert response == "" and json.loads(error) == {"error": "plain failure"}
    assert json.loads(error_json("")) == {"error": "unknown error"}


def test_json_answer_is_kept_as_text() -> None:
    assert replay_answer(b'{"a": 1}', status=200, is_sse=False) == ('{"a": 1}', "")

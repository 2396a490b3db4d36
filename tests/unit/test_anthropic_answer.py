"""Fixing llama-server's Anthropic answers (orchestrator/api/anthropic_answer.py), on the bytes
the engine of this build writes (captured from its /v1/messages)."""

from __future__ import annotations

import json

from orchestrator.api.anthropic_answer import fix_chunk, fix_message, fix_message_bytes
from orchestrator.api.anthropic_request import MessagesRequest

REQUEST = MessagesRequest(model="ai/smollm2", stream=True, stop_sequences=("3",))
PATH = "/root/.cache/model-runner/models/SmolLM2-135M-Instruct.Q4_1.gguf"
START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"chatcmpl-Maxnh3",'
    b'"type":"message","role":"assistant","content":[],"model":"' + PATH.encode() + b'",'
    b'"stop_reason":null,"stop_sequence":null,"usage":{"cache_read_input_tokens":24,'
    b'"input_tokens":18,"output_tokens":0}}}\n\n'
)
DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"1"}}\n\n'
)
STOP_DELTA = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":"3"},"usage":{"output_tokens":11}}\n\n'
)


def data_of(chunk: bytes) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in chunk.splitlines() if line.startswith(b"data: ")]


def test_text_delta_passes_untouched() -> None:
    """The hot path: a delta chunk is returned as the very same object."""
    assert fix_chunk(DELTA, REQUEST) is DELTA


def test_message_start_names_the_model_and_msg_id() -> None:
    (data,) = data_of(fix_chunk(START, REQUEST))
    message = data["message"]
    assert isinstance(message, dict)
    assert message["model"] == "ai/smollm2"
    assert message["id"] == "msg_Maxnh3"
    assert message["usage"] == {"cache_read_input_tokens": 24, "input_tokens": 18,
                                "output_tokens": 0}  # fmt: skip


def test_stop_sequence_of_the_request_is_stop_sequence() -> None:
    (data,) = data_of(fix_chunk(STOP_DELTA, REQUEST))
    assert data["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "3"}


def test_stop_word_not_asked_for_is_end_turn_without_sequence() -> None:
    """A chat template's stop word is not the client's: end_turn, stop_sequence null."""
    other = MessagesRequest(model="m", stream=True, stop_sequences=())
    (data,) = data_of(fix_chunk(STOP_DELTA, other))
    assert data["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_several_events_in_one_chunk_and_crlf() -> None:
    chunk = (START + DELTA + STOP_DELTA).replace(b"\n", b"\r\n")
    fixed = fix_chunk(chunk, REQUEST)
    assert fixed.count(b"\n\n") == 3 and fixed.endswith(b"\n\n")
    start, delta, stop = data_of(fixed)
    assert start["message"]["model"] == "ai/smollm2"  # type: ignore[index]
    assert delta["delta"] == {"type": "text_delta", "text": "1"}
    assert stop["delta"]["stop_reason"] == "stop_sequence"  # type: ignore[index]


def test_tool_use_start_gets_empty_input() -> None:
    chunk = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"tool_use","id":"c1","name":"get_time"}}\n\n'
    )
    (data,) = data_of(fix_chunk(chunk, REQUEST))
    assert data["content_block"] == {"type": "tool_use", "id": "c1", "name": "get_time",
                                     "input": {}}  # fmt: skip


def test_engine_error_event_gets_anthropic_envelope() -> None:
    chunk = b'event: error\ndata: {"code":400,"message":"context full","type":"x"}\n\n'
    (data,) = data_of(fix_chunk(chunk, REQUEST))
    assert data == {"type": "error",
                    "error": {"type": "invalid_request_error", "message": "context full"}}  # fmt: skip


def test_our_own_error_event_is_left_alone() -> None:
    chunk = b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"m"}}\n\n'
    assert data_of(fix_chunk(chunk, REQUEST)) == data_of(chunk)


def test_whole_message_is_fixed() -> None:
    engine = {
        "id": "chatcmpl-x", "type": "message", "role": "assistant", "model": PATH,
        "content": [{"type": "text", "text": "1, 2, "}], "stop_reason": "end_turn",
        "stop_sequence": "3", "usage": {"input_tokens": 5, "output_tokens": 6},
    }  # fmt: skip
    fixed = fix_message_bytes(json.dumps(engine).encode(), REQUEST)
    assert fixed is not None
    message = json.loads(fixed)
    assert (message["id"], message["model"]) == ("msg_x", "ai/smollm2")
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "3")
    assert message["content"] == engine["content"] and message["usage"] == engine["usage"]


def test_max_tokens_and_tool_use_reasons_are_kept() -> None:
    message = fix_message({"stop_reason": "max_tokens", "stop_sequence": None}, REQUEST)
    assert message["stop_reason"] == "max_tokens"
    message = fix_message({"stop_reason": "tool_use", "stop_sequence": "3"}, REQUEST)
    assert (message["stop_reason"], message["stop_sequence"]) == ("tool_use", "3")


def test_not_a_message_is_none() -> None:
    """A cut answer (not JSON) or another object: the caller reports the runner's failure."""
    assert fix_message_bytes(b'{"id": "chatcmpl-x", "type": "mess', REQUEST) is None
    assert fix_message_bytes(b'{"input_tokens": 3}', REQUEST) is None

"""The official ``openai`` package against the real daemon, engine and SmolLM2 model."""

from __future__ import annotations

import openai
import pytest

from tests.support.daemon_fixtures import MODEL, Daemon

pytestmark = pytest.mark.llama_server

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=daemon.url("/engines/v1"), api_key="unused", timeout=120, max_retries=0
    )


def test_chat_completion(client: openai.OpenAI) -> None:
    """A non-streamed chat answer comes back with content and usage."""
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert answer.choices[0].message.content
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8


def test_streaming_chat_completion(client: openai.OpenAI) -> None:
    """A streamed chat answer arrives as several chunks and finishes."""
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True)
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(chunks) >= 3
    assert text
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_completion(client: openai.OpenAI) -> None:
    """The legacy completions endpoint answers text."""
    answer = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert answer.choices[0].text


def test_embeddings(client: openai.OpenAI) -> None:
    """Embeddings come from an embedding-mode runner: one vector per input."""
    answer = client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert len(answer.data) == 2
    assert len(answer.data[0].embedding) == 576  # SmolLM2-135M's hidden size
    assert answer.data[0].embedding != answer.data[1].embedding


def test_models_list(client: openai.OpenAI) -> None:
    """models.list shows the seeded model with DMR's dmr block."""
    (model,) = client.models.list().data
    assert model.id == "docker.io/ai/smollm2:135M-Q4_1"
    assert model.owned_by == "docker"
    assert model.model_extra["dmr"]["architecture"] == "llama"
    assert client.models.retrieve("ai/smollm2:latest").id == model.id


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    """An unknown model raises NotFoundError with code model_not_found."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="ai/not-here", messages=MESSAGES, max_tokens=2)
    assert caught.value.code == "model_not_found"
    assert "pull" in caught.value.message

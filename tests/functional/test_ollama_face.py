"""The official ``ollama`` client against the real daemon, llama-server and SmolLM2.

Also the checks DMR's own e2e suite makes of this face (``e2e/inference_test.go``
OllamaChat/OllamaGenerate/OllamaTags, ``e2e/api_test.go`` OllamaShow): a non-streamed chat
and generate answer text with ``done``, the tag list is not empty, show has ``details.format``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import ollama
import pytest

from tests.support.daemon_fixtures import MODEL, Daemon
from tests.support.registry_fixtures import RegistryServer

pytestmark = pytest.mark.llama_server

MESSAGES = [{"role": "user", "content": "Say hi."}]
OPTIONS = {"num_predict": 8, "temperature": 0}
EMBEDDING_SIZE = 576  # SmolLM2-135M's hidden size


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.base_url, timeout=120) as made:
        yield made


def assert_real_stats(final: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    """Counts and durations come from llama-server's timings: nonzero, consistent."""
    assert final.done is True
    assert final.done_reason in ("stop", "length")
    assert final.eval_count is not None and 0 < final.eval_count <= OPTIONS["num_predict"]
    if final.done_reason == "length":
        assert final.eval_count == OPTIONS["num_predict"]
    assert final.prompt_eval_count and final.prompt_eval_count > 0
    assert final.eval_duration and final.eval_duration > 0
    assert final.prompt_eval_duration and final.prompt_eval_duration > 0
    assert final.total_duration is not None and final.load_duration is not None
    assert final.total_duration >= final.eval_duration + final.prompt_eval_duration
    # load_duration is the time spent acquiring the runner (queue, cold start), as Ollama's
    # time to load; the three parts fit within the total (which also holds transport).
    assert final.load_duration >= 0
    assert final.total_duration >= (
        final.load_duration + final.eval_duration + final.prompt_eval_duration
    )


def test_list(client: ollama.Client) -> None:
    """One entry per tag, with the model's real size (DMR e2e: OllamaTags)."""
    models = client.list().models
    names = sorted(model.model or "" for model in models)
    assert names == ["ai/smollm2:135M-Q4_1", "ai/smollm2:latest"]
    assert all(model.size and model.size > 50_000_000 for model in models)
    assert models[0].details is not None and models[0].details.family == "llama"


def test_chat(client: ollama.Client) -> None:
    """A whole answer with Ollama's counters (DMR e2e: OllamaChat)."""
    answer = client.chat(model=MODEL, messages=MESSAGES, options=OPTIONS)
    assert answer.message.role == "assistant" and answer.message.content
    assert_real_stats(answer)


def test_chat_streamed(client: ollama.Client) -> None:
    """Several chunks, the text in them, the counters on the last; one chunk per token."""
    chunks = list(client.chat(model=MODEL, messages=MESSAGES, options=OPTIONS, stream=True))
    text = "".join(chunk.message.content or "" for chunk in chunks)
    assert len(chunks) >= 3 and text
    assert all(chunk.done is False for chunk in chunks[:-1])
    final = chunks[-1]
    assert_real_stats(final)
    assert final.eval_count is not None and len(chunks) - 1 <= final.eval_count


def test_generate(client: ollama.Client) -> None:
    """Text under ``response`` (DMR e2e: OllamaGenerate), streamed and not."""
    answer = client.generate(model=MODEL, prompt="Say hi.", options=OPTIONS)
    assert answer.response and answer.done
    assert_real_stats(answer)
    chunks = list(client.generate(model=MODEL, prompt="Say hi.", options=OPTIONS, stream=True))
    assert "".join(chunk.response for chunk in chunks)
    assert_real_stats(chunks[-1])


def test_json_format(client: ollama.Client) -> None:
    """``format`` constrains the answer (llama-server's grammar from the schema)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    answer = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a number as JSON."}],
        format=schema,
        options={"num_predict": 24, "temperature": 0},
    )
    assert (answer.message.content or "").lstrip().startswith("{")


def test_embed(client: ollama.Client) -> None:
    """One vector of the model's embedding size per input."""
    answer = client.embed(model=MODEL, input=["hello", "world"])
    assert len(answer.embeddings) == 2
    assert all(len(vector) == EMBEDDING_SIZE for vector in answer.embeddings)
    assert answer.embeddings[0] != answer.embeddings[1]
    cut = client.embed(model=MODEL, input="hello", dimensions=64)
    assert len(cut.embeddings[0]) == 64


def test_legacy_embeddings(client: ollama.Client) -> None:
    answer = client.embeddings(model=MODEL, prompt="hello")
    assert len(answer.embedding) == EMBEDDING_SIZE


def test_show(client: ollama.Client) -> None:
    """Details (DMR e2e: OllamaShow), GGUF metadata, template and capabilities."""
    shown = client.show(MODEL)
    assert shown.details is not None and shown.details.format == "gguf"
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["llama.embedding_length"] == EMBEDDING_SIZE
    assert shown.capabilities == ["completion"]
    assert shown.template and "im_start" in shown.template


def test_ps_after_a_chat(client: ollama.Client) -> None:
    client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 2})
    running = [model for model in client.ps().models if model.name == "ai/smollm2:135M-Q4_1"]
    assert running, client.ps()
    (model, *_) = running
    assert model.size and model.size > 0
    assert model.expires_at is not None and model.expires_at > datetime.now(UTC)
    assert model.context_length and model.context_length > 0


def test_unload_with_keep_alive_zero(client: ollama.Client) -> None:
    """An empty prompt with keep_alive 0 unloads (Ollama's way); an empty prompt loads."""
    client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    unloaded = client.generate(model=MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert not [m for m in client.ps().models if m.name == "ai/smollm2:135M-Q4_1"]
    loaded = client.generate(model=MODEL, prompt="")
    assert loaded.done_reason == "load"
    assert [m for m in client.ps().models if m.name == "ai/smollm2:135M-Q4_1"]


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="ai/not-here", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'ai/not-here' not found"
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("ai/not-here")
    assert caught.value.status_code == 404


def test_bad_requests_are_400(client: ollama.Client, daemon: Daemon) -> None:
    """A body that is not JSON, and a schema the engine refuses: 400 with Ollama's shape."""
    answer = daemon.post("/api/chat", data=b"{nope", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=MODEL, messages=MESSAGES, format={"type": 5}, stream=False)
    assert caught.value.status_code == 400


def test_copy_and_delete(client: ollama.Client) -> None:
    assert client.copy(MODEL, "ai/smollm2:copy").status == "success"
    assert "ai/smollm2:copy" in {model.model for model in client.list().models}
    assert client.chat(model="ai/smollm2:copy", messages=MESSAGES, options={"num_predict": 2})
    assert client.delete("ai/smollm2:copy").status == "success"
    assert "ai/smollm2:copy" not in {model.model for model in client.list().models}
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("ai/smollm2:copy")
    assert caught.value.status_code == 404


@pytest.mark.registry
def test_pull_from_a_loopback_registry(
    daemon: Daemon,
    daemon_factory: Callable[..., Daemon],
    registry: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Push the model to a real registry, then ollama's pull brings it to an empty store."""
    target = f"{registry.host}/test/smollm2:v1"
    tagged = daemon.post(
        "/models/ai/smollm2:latest/tag", params={"repo": f"{registry.host}/test/smollm2", "tag": "v1"}
    )
    assert tagged.status_code == 201, tagged.text
    pushed = daemon.post(f"/models/{target}/push", timeout=120)
    assert pushed.status_code == 200, pushed.text

    other = daemon_factory(models_path=tmp_path_factory.mktemp("empty") / "models")
    with ollama.Client(host=other.base_url, timeout=120) as fresh:
        progress = list(fresh.pull(target, stream=True))
        assert progress[0].status == "pulling manifest"
        layers = [p for p in progress if (p.status or "").startswith("pulling ") and p.digest]
        assert layers and all(p.total and p.completed is not None for p in layers)
        assert layers[-1].completed == layers[-1].total
        assert progress[-1].status == "success"
        assert target in {model.model for model in fresh.list().models}
        # Pulling again (not streamed: the client's default) finds it cached.
        assert fresh.pull(target).status == "success"
        answer = fresh.chat(model=target, messages=MESSAGES, options={"num_predict": 2})
        assert answer.message.content
        with pytest.raises(ollama.ResponseError) as caught:
            fresh.pull(f"{registry.host}/test/missing:v1")
        assert caught.value.status_code == 404

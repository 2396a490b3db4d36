"""Ollama's model descriptions (orchestrator/api/ollama_models.py) from store records."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.api.ollama_models import (
    capabilities,
    context_length,
    model_info,
    ollama_name,
    show_body,
    tag_entries,
)
from orchestrator.store import mediatypes
from orchestrator.store.records import ModelRecord

GGUF = {
    "general.architecture": "llama",
    "general.license": "apache-2.0",
    "llama.context_length": "8192",
    "llama.embedding_length": "576",
    "llama.rope.freq_base": "100000.000000",
    "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    "tokenizer.ggml.model": "gpt2",
}


def record(
    gguf: dict[str, str] | None = None,
    tags: tuple[str, ...] = ("docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:135M"),
    layers: list[dict[str, Any]] | None = None,
    arch: str = "llama",
) -> ModelRecord:
    config = {
        "config": {"format": "gguf", "quantization": "Q4_1", "parameters": "134.52M",
                   "architecture": arch, "gguf": GGUF if gguf is None else gguf},
        "descriptor": {"created": "2025-01-01T00:00:00Z"},
    }
    manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": mediatypes.CONFIG_V01, "digest": "sha256:" + "c" * 64, "size": 1},
        "layers": layers
        if layers is not None
        else [{"mediaType": mediatypes.GGUF, "digest": "sha256:" + "a" * 64, "size": 1000}],
    }
    return ModelRecord(
        id="sha256:" + "b" * 64,
        tags=tags,
        files=(),
        manifest=manifest,
        config=config,
        manifest_bytes=json.dumps(manifest).encode(),
    )


def test_names_drop_the_default_registry_only() -> None:
    assert ollama_name("docker.io/ai/smollm2:latest") == "ai/smollm2:latest"
    assert ollama_name("127.0.0.1:5000/test/m:v1") == "127.0.0.1:5000/test/m:v1"
    assert ollama_name("hf.co/org/repo:Q4") == "hf.co/org/repo:Q4"


def test_tags_list_one_entry_per_tag_with_real_sizes() -> None:
    entries = tag_entries(record())
    assert [entry["name"] for entry in entries] == ["ai/smollm2:latest", "ai/smollm2:135M"]
    first = entries[0]
    assert first["size"] == 1000  # the layers' bytes, not DMR's 0
    assert first["digest"] == "sha256:" + "b" * 64
    assert first["modified_at"] == "2025-01-01T00:00:00Z"
    assert first["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
    }
    untagged = tag_entries(record(tags=()))
    assert [entry["name"] for entry in untagged] == ["sha256:" + "b" * 64]


def test_model_info_has_numbers_and_no_tokenizer() -> None:
    info = model_info(record())
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 8192
    assert info["llama.rope.freq_base"] == 100000.0
    assert not any(key.startswith("tokenizer.") for key in info)
    assert context_length(record()) == 8192
    assert context_length(record(gguf={})) is None


def test_capabilities() -> None:
    """Completion models; embedding-only architectures; tools from the template; vision."""
    assert capabilities(record()) == ["completion"]
    tools = {**GGUF, "tokenizer.chat_template": "{% if tools %}...{% endif %}"}
    assert capabilities(record(gguf=tools)) == ["completion", "tools"]
    qwen3 = {**GGUF, "tokenizer.chat_template": "{% if enable_thinking %}<think>{% endif %}"}
    assert capabilities(record(gguf=qwen3)) == ["completion", "thinking"]
    bert = {"general.architecture": "bert", "bert.pooling_type": "1"}
    assert capabilities(record(gguf=bert, arch="bert")) == ["embedding"]
    pooled = {"general.architecture": "qwen3", "qwen3.pooling_type": "3"}
    assert capabilities(record(gguf=pooled, arch="qwen3")) == ["embedding"]
    layers = [
        {"mediaType": mediatypes.GGUF, "digest": "sha256:" + "a" * 64, "size": 1000},
        {"mediaType": mediatypes.MMPROJ, "digest": "sha256:" + "d" * 64, "size": 10},
    ]
    assert "vision" in capabilities(record(layers=layers))


def test_show_body() -> None:
    body = show_body(record(), 4096)
    assert body["template"] == GGUF["tokenizer.chat_template"]
    assert body["license"] == "apache-2.0"
    assert body["parameters"] == "num_ctx 4096"
    assert "FROM ai/smollm2:latest" in body["modelfile"]
    assert body["capabilities"] == ["completion"]
    assert body["model_info"]["llama.embedding_length"] == 576
    assert show_body(record(), None)["parameters"] == ""

"""The model descriptions of Ollama's ``/api/tags``, ``/api/ps`` and ``/api/show``.

Built from what the store already knows, with no file read: the manifest's layer sizes (the
``size`` DMR leaves at 0) and the config blob, whose ``gguf`` map holds the GGUF header's
metadata as text (architecture, training context, embedding length, chat template, license).

Names: a stored tag is ``docker.io/ai/smollm2:latest``; Ollama clients show and send back the
``name`` we list, so it is the tag without the default registry (``ai/smollm2:latest``),
which the store resolves to the same model. An untagged model goes by its ID.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from orchestrator import logfiles
from orchestrator.store import mediatypes

if TYPE_CHECKING:
    from orchestrator.runners.management import RunnerStatus
    from orchestrator.store.records import ModelRecord

_DEFAULT_REGISTRY_PREFIXES = ("docker.io/", "index.docker.io/")
# Architectures whose GGUF models only embed (llama.cpp's encoder-only ones).
_EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                      "neo-bert", "modern-bert", "t5encoder"})
# Words of a chat template that handles reasoning (Qwen3's <think>, its enable_thinking switch,
# DeepSeek's and gpt-oss's reasoning_content).
_THINKING_WORDS = ("<think>", "enable_thinking", "reasoning_content")
# A runner kept loaded forever still needs an expiry for Ollama's clients: far in the future,
# as Ollama itself shows for keep_alive -1.
_FOREVER_SECONDS = 100 * 365 * 24 * 3600


def ollama_name(tag: str) -> str:
    """Return the name Ollama clients see for a stored tag (no default registry)."""
    for prefix in _DEFAULT_REGISTRY_PREFIXES:
        if tag.startswith(prefix):
            return tag[len(prefix) :]
    return tag


def primary_name(record: ModelRecord) -> str:
    """Return the model's first name (its ID when untagged)."""
    return ollama_name(record.tags[0]) if record.tags else record.id


def gguf_metadata(record: ModelRecord) -> dict[str, str]:
    """Return the GGUF header metadata the config blob carries (text values), or ``{}``."""
    inner = record.config.get("config")
    metadata = inner.get("gguf") if isinstance(inner, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(key): str(value) for key, value in metadata.items()}


def architecture(record: ModelRecord) -> str:
    """Return the model's architecture (``llama``), ``""`` when unknown."""
    config = record.model_config
    return str(config.get("architecture") or gguf_metadata(record).get("general.architecture", ""))


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def context_length(record: ModelRecord) -> int | None:
    """Return the model's training context (``<arch>.context_length``), ``None`` if unknown."""
    value = _number(gguf_metadata(record).get(f"{architecture(record)}.context_length", ""))
    return value if isinstance(value, int) and value > 0 else None


def details(record: ModelRecord) -> dict[str, Any]:
    """Return Ollama's ``details`` object."""
    config = record.model_config
    arch = architecture(record)
    return {
        "parent_model": "",
        "format": str(config.get("format") or "gguf"),
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": str(config.get("parameters") or ""),
        "quantization_level": str(config.get("quantization") or ""),
    }


def tag_entries(record: ModelRecord) -> list[dict[str, Any]]:
    """Return the ``/api/tags`` entries of one model: one per tag, as Ollama lists them."""
    names = [ollama_name(tag) for tag in record.tags] or [record.id]
    modified = logfiles.format_rfc3339(record.created)
    return [
        {
            "name": name,
            "model": name,
            "modified_at": modified,
            "size": record.size_bytes,
            "digest": record.id,
            "details": details(record),
        }
        for name in names
    ]


def capabilities(record: ModelRecord) -> list[str]:
    """Return what the model can do: ``completion`` or ``embedding``, then ``tools``,
    ``thinking`` (from its chat template) and ``vision`` (a multimodal projector)."""
    metadata = gguf_metadata(record)
    arch = architecture(record)
    if arch in _EMBEDDING_ARCHITECTURES or f"{arch}.pooling_type" in metadata:
        return ["embedding"]
    found = ["completion"]
    template = metadata.get("tokenizer.chat_template", "")
    if "tools" in template:
        found.append("tools")
    if any(word in template for word in _THINKING_WORDS):
        found.append("thinking")
    if any(layer.get("mediaType") == mediatypes.MMPROJ for layer in record.layers):
        found.append("vision")
    return found


def model_info(record: ModelRecord) -> dict[str, Any]:
    """Return ``model_info``: the GGUF metadata but the tokenizer's, numbers as numbers."""
    info: dict[str, Any] = {
        key: _number(value)
        for key, value in sorted(gguf_metadata(record).items())
        if not key.startswith("tokenizer.")
    }
    arch = architecture(record)
    if arch:
        info["general.architecture"] = arch
    return info


def show_body(record: ModelRecord, context_size: int | None) -> dict[str, Any]:
    """Return the ``/api/show`` answer.

    Args:
        record: The model.
        context_size: The context its runner is configured with, if any (``parameters``).
    """
    metadata = gguf_metadata(record)
    name = primary_name(record)
    parameters = f"num_ctx {context_size}" if context_size and context_size > 0 else ""
    return {
        "license": metadata.get("general.license", ""),
        "modelfile": f"# Served by Docker Model Runner\nFROM {name}\n"
        + (f"PARAMETER {parameters}\n" if parameters else ""),
        "parameters": parameters,
        "template": metadata.get("tokenizer.chat_template", ""),
        "details": details(record),
        "model_info": model_info(record),
        "capabilities": capabilities(record),
        "modified_at": logfiles.format_rfc3339(record.created),
    }


def expires_at(status: RunnerStatus, now: float | None = None) -> str:
    """Return when an idle runner stops (RFC 3339); a busy one, now plus its keep-alive."""
    now = time.time() if now is None else now
    keep_alive = status.keep_alive
    if keep_alive < 0:
        return logfiles.format_rfc3339(now + _FOREVER_SECONDS)
    since = status.last_used if status.last_used is not None else now
    return logfiles.format_rfc3339(since + keep_alive)


def ps_entry(status: RunnerStatus, record: ModelRecord | None) -> dict[str, Any]:
    """Return one ``/api/ps`` entry (``size``: measured memory, else what admission counted)."""
    info = status.info
    view = status.memory
    if view.measured is not None:
        ram, vram = view.measured.rss_bytes, view.measured.vram_bytes
    else:
        ram, vram = view.plan.need.ram_bytes, view.plan.need.vram_bytes
    name = primary_name(record) if record is not None else info.model_name
    context = info.context_size or (context_length(record) if record is not None else None)
    entry: dict[str, Any] = {
        "name": name,
        "model": name,
        "size": ram + vram,
        "digest": info.model_id,
        "details": details(record) if record is not None else None,
        "expires_at": expires_at(status),
        "size_vram": vram,
    }
    if context:
        entry["context_length"] = context
    return entry

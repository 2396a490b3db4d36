"""Validate the manifests and config blobs a registry sends (DMR spec sections 3.1-3.3).

Everything a registry returns is untrusted: the manifest must be a single OCI (or Docker v2)
image manifest whose descriptors carry ``sha256`` digests and sizes, and whose config media type is
one of :data:`~orchestrator.store.mediatypes.SUPPORTED_CONFIGS`. Reads of small documents are
bounded so a hostile server cannot fill memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import requests

from orchestrator.errors import RegistryError, UnsupportedModelError
from orchestrator.store import mediatypes
from orchestrator.store.records import ModelRecord

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_INDEX_TYPES = (mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST)


@dataclass(frozen=True)
class Descriptor:
    """One content descriptor of a manifest (config or layer)."""

    media_type: str
    digest: str
    size: int


def error_codes(response: requests.Response) -> list[str]:
    """Return the registry's ``errors[].code`` list (empty for non-JSON answers)."""
    try:
        body = response.json()
        return [str(item.get("code")) for item in body.get("errors", []) if isinstance(item, dict)]
    except (ValueError, AttributeError, TypeError):
        return []


def read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    """Read a streamed response body of at most ``limit`` bytes.

    Raises:
        RegistryError: The body is larger than ``limit`` or the connection broke.
    """
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise RegistryError(
                    f"{what} is larger than {limit} bytes; refusing to read it",
                    details={"url": response.url},
                )
            parts.append(chunk)
    except requests.RequestException as ex:
        raise RegistryError(
            f"reading {what} failed (the connection broke); try again later",
            details={"error": str(ex)},
        ) from ex
    return b"".join(parts)


def _descriptor(value: object, where: str, name: str) -> Descriptor:
    if not isinstance(value, dict):
        raise RegistryError(f"the manifest of '{name}' has no valid {where}; it is malformed")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise UnsupportedModelError(
            f"the {where} of '{name}' has digest {digest!r}; only 'sha256:' digests are supported"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"the {where} of '{name}' has an invalid size {size!r}")
    return Descriptor(str(media_type or ""), digest, size)


def config_descriptor(manifest: dict[str, Any], name: str = "the model") -> Descriptor:
    """Return the config descriptor of a parsed manifest."""
    return _descriptor(manifest.get("config"), "config descriptor", name)


def layer_descriptors(manifest: dict[str, Any], name: str = "the model") -> list[Descriptor]:
    """Return the layer descriptors of a parsed manifest, in order."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"the manifest of '{name}' has no layer list; it is malformed")
    return [_descriptor(layer, f"layer {i}", name) for i, layer in enumerate(layers)]


def parse_manifest(data: bytes, content_type: str, name: str) -> dict[str, Any]:
    """Parse and check a manifest of a model artifact.

    Args:
        data: Raw manifest bytes.
        content_type: The response's media type (used when the body names none).
        name: Reference for messages.

    Raises:
        UnsupportedModelError: An index, another schema, or an unsupported config type.
        RegistryError: The bytes are not a well-formed manifest.
    """
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as ex:
        raise RegistryError(f"the manifest of '{name}' is not valid JSON; it is corrupt") from ex
    if not isinstance(manifest, dict):
        raise RegistryError(f"the manifest of '{name}' is not a JSON object; it is corrupt")
    media_type = manifest.get("mediaType") or content_type
    if media_type in _INDEX_TYPES or "manifests" in manifest:
        raise UnsupportedModelError(
            f"'{name}' is an image index, not a model artifact; pull a model, not an image"
        )
    if manifest.get("schemaVersion") != 2:
        raise UnsupportedModelError(
            f"'{name}' has manifest schema version {manifest.get('schemaVersion')!r}; only "
            f"version 2 is supported"
        )
    config = config_descriptor(manifest, name)
    if config.media_type not in mediatypes.SUPPORTED_CONFIGS:
        raise UnsupportedModelError(
            f"config type {config.media_type!r} is not supported (supported: "
            f"{', '.join(mediatypes.SUPPORTED_CONFIGS)}); try upgrading",
            details={"media_type": config.media_type},
        )
    layer_descriptors(manifest, name)
    return manifest


def model_json(model_id: str, manifest: dict[str, Any], config_bytes: bytes) -> dict[str, Any]:
    """Return the DMR Model JSON of a remote artifact (no tags).

    Raises:
        RegistryError: The config blob is not a JSON object.
    """
    try:
        config = json.loads(config_bytes)
    except (ValueError, UnicodeDecodeError) as ex:
        raise RegistryError(f"the config blob of '{model_id}' is not valid JSON") from ex
    if not isinstance(config, dict):
        raise RegistryError(f"the config blob of '{model_id}' is not a JSON object")
    files = tuple(
        [layer.digest for layer in layer_descriptors(manifest)]
        + [config_descriptor(manifest).digest]
    )
    record = ModelRecord(id=model_id, tags=(), files=files, manifest=manifest, config=config)
    return record.to_api()

"""Manifests and config blobs as a registry transfer sees them (DMR spec sections 3.1-3.3).

Everything a registry returns is untrusted: the manifest is checked by the store's
:func:`~orchestrator.store.records.parse_manifest` (one OCI or Docker v2 image manifest with
well-formed descriptors), then by :func:`check_transferable` (``sha256`` digests, a config
media type of :data:`~orchestrator.store.mediatypes.SUPPORTED_CONFIGS`). Reads of small documents
are bounded so a hostile server cannot fill memory: every body the registry code reads whole
goes through :func:`read_limited` (manifests 4 MiB, configs 64 MiB, tokens 1 MiB, Hub listings
16 MiB per page) or :func:`read_error_prefix` (error answers: the first 64 KiB, then the
connection is dropped rather than drained).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from orchestrator.errors import (
    InvalidRequestError,
    RegistryError,
    UnsupportedModelError,
)
from orchestrator.store import mediatypes
from orchestrator.store.records import ModelRecord, parse_manifest


@dataclass(frozen=True)
class Descriptor:
    """One content descriptor of a manifest (config or layer)."""

    media_type: str
    digest: str
    size: int


MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_TOKEN_BYTES = 1024 * 1024
_READ_BYTES = 64 * 1024
# What a read of a streamed body raises when the connection breaks: requests wraps most of
# urllib3's errors, the rest (and plain socket errors) are caught too so none becomes a 500.
READ_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def read_error_prefix(response: requests.Response, limit: int = MAX_ERROR_BODY_BYTES) -> bytes:
    """Return at most the first ``limit`` bytes of an error answer's body; never raise.

    The body only feeds a message, and a hostile server may send gigabytes: reading stops at
    ``limit`` (closing the response then drops the connection instead of draining it), and a
    body that breaks off (a chunk cut short, a reset) yields what arrived.
    """
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_content(min(limit, _READ_BYTES)):
            parts.append(chunk[: limit - total])
            total += len(parts[-1])
            if total >= limit:
                break
    except READ_ERRORS:
        pass
    return b"".join(parts)


def discard_body(response: requests.Response) -> None:
    """Read and drop a small answer's body (a 201's, a HEAD's), at most 64 KiB.

    A body read to its end hands the connection back to the pool for the next request; one
    left unread makes closing the response close the connection too.
    """
    read_error_prefix(response)


def error_codes(response: requests.Response) -> list[str]:
    """Return the registry's ``errors[].code`` list (empty for non-JSON or oversized answers)."""
    try:
        body = json.loads(read_error_prefix(response))
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
        for chunk in response.iter_content(min(limit + 1, _READ_BYTES)):
            total += len(chunk)
            if total > limit:
                raise RegistryError(
                    f"{what} is larger than {limit} bytes; refusing to read it",
                    details={"url": response.url},
                )
            parts.append(chunk)
    except READ_ERRORS as ex:
        raise RegistryError(
            f"reading {what} failed (the connection broke); try again later",
            details={"error": str(ex)},
        ) from ex
    return b"".join(parts)


def _descriptor(value: dict[str, Any]) -> Descriptor:
    return Descriptor(str(value["mediaType"]), str(value["digest"]), int(value["size"]))


def config_descriptor(manifest: dict[str, Any]) -> Descriptor:
    """Return the config descriptor of a manifest accepted by :func:`parse_manifest`."""
    return _descriptor(manifest["config"])


def layer_descriptors(manifest: dict[str, Any]) -> list[Descriptor]:
    """Return the layer descriptors, in order, of a manifest accepted by :func:`parse_manifest`."""
    return [_descriptor(layer) for layer in manifest["layers"]]


def check_transferable(manifest: dict[str, Any], name: str) -> None:
    """Refuse a manifest accepted by :func:`parse_manifest` that this client must not move.

    DMR pulls only the model config media types it knows (spec section 3.2), and this client
    verifies every blob it sends or receives with sha256; the store itself also takes sha512.

    Raises:
        UnsupportedModelError: A config media type other than those of
            :data:`~orchestrator.store.mediatypes.SUPPORTED_CONFIGS`, or a digest that is not
            ``sha256``.
    """
    config = config_descriptor(manifest)
    described = [("config descriptor", config)] + [
        (f"layer {position}", layer) for position, layer in enumerate(layer_descriptors(manifest))
    ]
    for where, descriptor in described:
        if not descriptor.digest.startswith("sha256:"):
            raise UnsupportedModelError(
                f"the {where} of '{name}' has digest {descriptor.digest!r}; only 'sha256:' "
                f"digests are supported"
            )
    if config.media_type not in mediatypes.SUPPORTED_CONFIGS:
        raise UnsupportedModelError(
            f"config type {config.media_type!r} is not supported (supported: "
            f"{', '.join(mediatypes.SUPPORTED_CONFIGS)}); try upgrading",
            details={"media_type": config.media_type},
        )


def parse_for_transfer(data: bytes, name: str, content_type: str = "") -> dict[str, Any]:
    """Return a manifest to pull or push: :func:`parse_manifest`, then :func:`check_transferable`.

    Args:
        data: Raw manifest bytes.
        name: Reference for messages.
        content_type: The registry's media type for it (used when the body names none).

    Raises:
        RegistryError: The manifest is malformed (502: a registry serving it is a broken
            upstream, not a bad request of our client).
        UnsupportedModelError: An image index, another schema version, a config media type DMR
            does not pull, or a digest that is not ``sha256``.
    """
    try:
        manifest = parse_manifest(data, name=name, content_type=content_type)
    except InvalidRequestError as ex:
        raise RegistryError(ex.message, details=ex.details) from ex
    check_transferable(manifest, name)
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

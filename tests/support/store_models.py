"""Hand-built model artifacts for store tests: small fake blobs, DMR-shaped manifests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.store import mediatypes
from orchestrator.store.records import ModelRecord
from orchestrator.store.store import Store

CREATED = "2025-03-24T12:00:00.123456789Z"
CREATED_UNIX = 1742817600


def digest_of(data: bytes) -> str:
    """Return ``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compact(value: Any) -> bytes:
    """Serialise compactly, as Go does for manifests and configs."""
    return json.dumps(value, separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class FakeArtifact:
    """A model artifact that exists only in memory until written to a store."""

    manifest_bytes: bytes
    config_bytes: bytes
    layers: tuple[tuple[str, bytes, dict[str, str]], ...]

    @property
    def model_id(self) -> str:
        """Return the model ID (sha256 of the manifest)."""
        return digest_of(self.manifest_bytes)

    @property
    def config_digest(self) -> str:
        """Return the config blob digest."""
        return digest_of(self.config_bytes)

    @property
    def layer_digests(self) -> list[str]:
        """Return the layer digests in manifest order."""
        return [digest_of(data) for _media_type, data, _annotations in self.layers]

    @property
    def blobs(self) -> dict[str, bytes]:
        """Return every blob (layers and config) by digest."""
        result = {digest_of(data): data for _media_type, data, _annotations in self.layers}
        result[self.config_digest] = self.config_bytes
        return result


def make_artifact(
    name: str = "model",
    *,
    layers: Sequence[tuple[str, bytes]] | None = None,
    annotations: Sequence[dict[str, str]] | None = None,
    config: dict[str, Any] | None = None,
    config_media_type: str = mediatypes.CONFIG_V01,
    artifact_type: str | None = None,
    created: str | None = CREATED,
) -> FakeArtifact:
    """Build a small artifact; by default one GGUF layer whose bytes depend on ``name``."""
    if layers is None:
        layers = [(mediatypes.GGUF, b"GGUF fake weights of " + name.encode())]
    notes = list(annotations) if annotations is not None else [{} for _ in layers]
    if config is None:
        config = {
            "config": {
                "format": "gguf",
                "quantization": "Q4_0",
                "parameters": "135M",
                "architecture": "llama",
                "size": "1KiB",
                "gguf": {"general.name": name, "general.architecture": "llama"},
                "context_size": 2048,
            },
            "descriptor": {"created": created} if created else {},
            "rootfs": {"type": "rootfs", "diff_ids": [digest_of(data) for _mt, data in layers]},
        }
    config_bytes = compact(config)
    descriptors = []
    for (media_type, data), note in zip(layers, notes, strict=True):
        descriptor: dict[str, Any] = {
            "mediaType": media_type,
            "size": len(data),
            "digest": digest_of(data),
        }
        if note:
            descriptor["annotations"] = note
        descriptors.append(descriptor)
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = {
        "mediaType": config_media_type,
        "size": len(config_bytes),
        "digest": digest_of(config_bytes),
    }
    manifest["layers"] = descriptors
    return FakeArtifact(
        manifest_bytes=compact(manifest),
        config_bytes=config_bytes,
        layers=tuple((mt, data, note) for (mt, data), note in zip(layers, notes, strict=True)),
    )


def write_blobs(store: Store, artifact: FakeArtifact) -> None:
    """Write every blob of ``artifact`` into ``store``."""
    for data in artifact.blobs.values():
        store.write_blob(data)


def add_artifact(
    store: Store, artifact: FakeArtifact, tags: Iterable[str] = ()
) -> ModelRecord:
    """Write the blobs of ``artifact`` and register it with ``tags``."""
    write_blobs(store, artifact)
    return store.add_model(artifact.manifest_bytes, tags)


def add_model(store: Store, name: str = "model", tags: Iterable[str] = ()) -> ModelRecord:
    """Add a one-layer GGUF model named by ``name`` (distinct names give distinct IDs)."""
    return add_artifact(store, make_artifact(name), tags)

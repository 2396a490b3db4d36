"""The one manifest parser, and what a registry transfer checks on top of it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.errors import (
    InvalidRequestError,
    RegistryError,
    UnsupportedModelError,
)
from orchestrator.registry.manifest import (
    Descriptor,
    config_descriptor,
    layer_descriptors,
    parse_for_transfer,
)
from orchestrator.store import mediatypes
from orchestrator.store.records import parse_manifest

SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "b" * 128


def manifest(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.CONFIG_V01, "size": 10, "digest": SHA256},
        "layers": [{"mediaType": mediatypes.GGUF, "size": 20, "digest": SHA256}],
    }
    document.update(changes)
    return document


def raw(document: object) -> bytes:
    return json.dumps(document).encode()


def test_a_model_manifest_is_accepted_everywhere() -> None:
    data = raw(manifest())
    assert parse_manifest(data) == manifest()
    parsed = parse_for_transfer(data, "ai/x")
    assert config_descriptor(parsed) == Descriptor(mediatypes.CONFIG_V01, SHA256, 10)
    assert layer_descriptors(parsed) == [Descriptor(mediatypes.GGUF, SHA256, 20)]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        raw([1, 2]),
        raw(manifest(config=None)),
        raw(manifest(layers={})),
        raw(manifest(layers=[{"size": 1, "digest": SHA256}])),
        raw(manifest(layers=[{"mediaType": "x", "size": True, "digest": SHA256}])),
        raw(manifest(layers=[{"mediaType": "x", "size": 1, "digest": "sha256:../../etc"}])),
        raw(manifest(layers=[{"mediaType": "x", "size": 1, "digest": SHA256, "annotations": []}])),
        b"[" * 200_000 + b"]" * 200_000,  # deeper than the JSON parser recurses (not a 500)
    ],
)
def test_malformed_manifests_are_one_error_per_context(data: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="invalid model manifest: "):
        parse_manifest(data)
    # From a registry the same manifest is the registry's fault (502), named by reference.
    with pytest.raises(RegistryError, match="invalid model manifest of 'ai/x': "):
        parse_for_transfer(data, "ai/x")


@pytest.mark.parametrize(
    ("document", "content_type", "reason"),
    [
        (manifest(mediaType=mediatypes.OCI_INDEX, manifests=[]), "", "image index"),
        ({"schemaVersion": 2, "manifests": []}, "", "image index"),
        ({"schemaVersion": 2}, mediatypes.DOCKER_MANIFEST_LIST, "image index"),
        (manifest(schemaVersion=1), "", "schema version 1"),
    ],
)
def test_what_is_not_a_model_artifact_is_unsupported(
    document: dict[str, Any], content_type: str, reason: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=reason):
        parse_manifest(raw(document), content_type=content_type)
    with pytest.raises(UnsupportedModelError, match=reason):
        parse_for_transfer(raw(document), "ai/x", content_type)


def test_the_store_takes_what_a_transfer_refuses() -> None:
    """DMR refuses unknown config types on pull only; the store names blobs by sha512 too."""
    foreign_config = manifest(config={"mediaType": "application/x", "size": 1, "digest": SHA256})
    sha512_layer = manifest(layers=[{"mediaType": mediatypes.GGUF, "size": 1, "digest": SHA512}])
    for document in (foreign_config, sha512_layer):
        assert parse_manifest(raw(document)) == document
    with pytest.raises(UnsupportedModelError, match="'application/x' is not supported"):
        parse_for_transfer(raw(foreign_config), "ai/x")
    with pytest.raises(UnsupportedModelError, match="only 'sha256:' digests"):
        parse_for_transfer(raw(sha512_layer), "ai/x")

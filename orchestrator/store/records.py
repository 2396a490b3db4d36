"""What the store hands out: ``ModelRecord`` (a model in the index) and ``Bundle`` (its files).

Also the pure parsing of manifests and config blobs (DMR spec sections 3.1 and 3.3), shared by
the store, the tar loader and the registry client.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from orchestrator.errors import InvalidRequestError, UnsupportedModelError
from orchestrator.store import mediatypes
from orchestrator.store.layout import parse_digest

# Field order of DMR's types.Config; the API and bundle config.json follow it.
_CONFIG_STRING_KEYS = ("format", "quantization", "parameters", "architecture", "size")
_CONFIG_MAP_KEYS = ("gguf", "safetensors", "diffusers")
_INDEX_TYPES = (mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def _bad_manifest(name: str | None, why: str) -> InvalidRequestError:
    subject = f"invalid model manifest of '{name}'" if name else "invalid model manifest"
    return InvalidRequestError(
        f"{subject}: {why}; rebuild the artifact with 'docker model package'"
    )


def _check_descriptor(value: object, where: str, name: str | None) -> None:
    if not isinstance(value, dict):
        raise _bad_manifest(name, f"{where} is not a descriptor object")
    if not isinstance(value.get("mediaType"), str):
        raise _bad_manifest(name, f"{where} has no 'mediaType'")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad_manifest(name, f"{where} has no valid 'size'")
    try:
        parse_digest(value.get("digest"))  # type: ignore[arg-type]
    except InvalidRequestError:
        raise _bad_manifest(
            name, f"{where} has an invalid 'digest' {value.get('digest')!r}"
        ) from None
    annotations = value.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise _bad_manifest(name, f"{where} has 'annotations' that are not an object")


def parse_manifest(
    raw: bytes, *, name: str | None = None, content_type: str = ""
) -> dict[str, Any]:
    """Parse and check the OCI image manifest of a model artifact (DMR spec section 3.1).

    The one check of every manifest the daemon meets: pulled, pushed, loaded from a tar,
    registered by ``package`` or read back from the store. Digests may be ``sha256`` or
    ``sha512`` (the store's blob names); what a registry transfer additionally needs is
    checked by :func:`orchestrator.registry.manifest.check_transferable`.

    Args:
        raw: The manifest bytes.
        name: The model reference, for messages (``None``: the manifest is not named).
        content_type: The media type a registry served it with, used when the body names
            none (to recognise an image index).

    Raises:
        UnsupportedModelError: An image index (a container image, not a model), or a
            ``schemaVersion`` other than 2.
        InvalidRequestError: Not a JSON object, or a config or layer descriptor without a
            media type, a size of 0 or more, a ``sha256``/``sha512`` digest or object
            annotations.
    """
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise _bad_manifest(name, f"it is not JSON ({ex})") from ex
    except RecursionError as ex:  # a hostile file nests arrays deeper than the parser goes
        raise _bad_manifest(name, "it nests JSON too deeply") from ex
    if not isinstance(manifest, dict):
        raise _bad_manifest(name, "it is not a JSON object")
    subject = f"'{name}'" if name else "the manifest"
    if (manifest.get("mediaType") or content_type) in _INDEX_TYPES or "manifests" in manifest:
        raise UnsupportedModelError(
            f"{subject} is an image index, not a model artifact; pull or load a model, not a "
            f"container image"
        )
    if manifest.get("schemaVersion") != 2:
        raise UnsupportedModelError(
            f"{subject} has manifest schema version {manifest.get('schemaVersion')!r}; only "
            f"version 2 is supported"
        )
    _check_descriptor(manifest.get("config"), "config", name)
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise _bad_manifest(name, "'layers' is not a list")
    for position, layer in enumerate(layers):
        _check_descriptor(layer, f"layer {position}", name)
    return manifest


def is_modelpack_config(config: dict[str, Any]) -> bool:
    """Return whether a config blob is CNCF ModelPack shaped (DMR's ``IsModelPackConfig``)."""
    inner = config.get("config")
    descriptor = config.get("descriptor")
    return (
        (isinstance(inner, dict) and "paramSize" in inner)
        or (isinstance(descriptor, dict) and "createdAt" in descriptor)
        or "modelfs" in config
    )


def normalize_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return the Docker-shaped ``config`` object of a config blob, as DMR's API shows it.

    Keys follow DMR's struct order, empty values are omitted (``omitempty``), maps are sorted
    and a CNCF ModelPack config is converted (format, parameters, quantization,
    architecture, size = paramSize).
    """
    inner = config.get("config")
    if not isinstance(inner, dict):
        return {}
    if is_modelpack_config(config):
        param_size = inner.get("paramSize") or ""
        source: dict[str, Any] = {
            "format": str(inner.get("format") or "").lower(),
            "quantization": inner.get("quantization") or "",
            "parameters": param_size,
            "architecture": inner.get("architecture") or "",
            "size": param_size,
        }
    else:
        source = inner
    result: dict[str, Any] = {}
    for key in _CONFIG_STRING_KEYS:
        value = source.get(key)
        if value:
            result[key] = value
    for key in _CONFIG_MAP_KEYS:
        value = source.get(key)
        if isinstance(value, dict) and value:
            result[key] = {name: value[name] for name in sorted(value)}
    context_size = source.get("context_size")
    if context_size is not None:
        result["context_size"] = context_size
    return result


def parse_created(text: object) -> int:
    """Return Unix seconds of an RFC 3339 timestamp (``0`` when absent or unparsable)."""
    if not isinstance(text, str):
        return 0
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return 0
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (OverflowError, ValueError):
        return 0
    if match.group(8):
        offset = int(match.group(9)) * 3600 + int(match.group(10)) * 60
        seconds -= offset if match.group(8) == "+" else -offset
    return seconds


def is_mmproj_name(path: str) -> bool:
    """Return whether a file name looks like a multimodal projector (contains ``mmproj``)."""
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """A model in the local store: index entry, manifest and config blob.

    Attributes:
        id: ``sha256:<hex>`` of the raw manifest bytes.
        tags: Tag identities as stored, e.g. ``docker.io/ai/smollm2:latest``.
        files: Layer digests then the config digest (as in ``models.json``).
        manifest: The parsed manifest.
        config: The parsed config blob (``{"config", "descriptor", "rootfs"}``).
        manifest_bytes: The raw manifest (export and push need the exact bytes).
    """

    id: str
    tags: tuple[str, ...]
    files: tuple[str, ...]
    manifest: dict[str, Any] = dataclasses.field(compare=False, repr=False)
    config: dict[str, Any] = dataclasses.field(compare=False, repr=False)
    manifest_bytes: bytes = dataclasses.field(default=b"", compare=False, repr=False)

    @property
    def short_id(self) -> str:
        """Return the 12-hex short ID (``id[7:19]``)."""
        return self.id[7:19]

    @property
    def created(self) -> int:
        """Return Unix seconds from the config's ``descriptor.created`` (0 if absent)."""
        descriptor = self.config.get("descriptor")
        if not isinstance(descriptor, dict):
            return 0
        return parse_created(descriptor.get("created") or descriptor.get("createdAt"))

    @property
    def model_config(self) -> dict[str, Any]:
        """Return the normalised ``config`` object (format, quantization, ..., context_size)."""
        return normalize_model_config(self.config)

    @property
    def config_digest(self) -> str:
        """Return the digest of the config blob."""
        return str(self.manifest["config"]["digest"])

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Return the manifest's layer descriptors, in order."""
        return list(self.manifest.get("layers", []))

    @property
    def size_bytes(self) -> int:
        """Return the total size of the layers."""
        return sum(int(layer.get("size", 0)) for layer in self.layers)

    @property
    def is_layer_per_file(self) -> bool:
        """Return whether layers carry their own file paths (config v0.2 or CNCF ModelPack)."""
        return (
            self.manifest["config"].get("mediaType") == mediatypes.CONFIG_V02
            or self.manifest.get("artifactType") == mediatypes.CNCF_MANIFEST_ARTIFACT
        )

    @property
    def gguf_layers(self) -> list[dict[str, Any]]:
        """Return the layer descriptors holding GGUF weights, in order (shards in order)."""
        is_gguf_format = self.model_config.get("format") == "gguf"
        result = []
        for layer in self.layers:
            media_type = layer.get("mediaType")
            path = str((layer.get("annotations") or {}).get(mediatypes.ANNOTATION_FILEPATH, ""))
            is_raw_gguf = (
                media_type == mediatypes.CNCF_WEIGHT_RAW
                and not is_mmproj_name(path)
                and (is_gguf_format or path.lower().endswith(".gguf"))
            )
            if media_type in mediatypes.GGUF_LAYERS or is_raw_gguf:
                result.append(layer)
        return result

    def to_api(self) -> dict[str, Any]:
        """Return DMR's Model JSON: ``id``, ``tags`` (omitted if empty), ``created``, ``config``."""
        result: dict[str, Any] = {"id": self.id}
        if self.tags:
            result["tags"] = list(self.tags)
        result["created"] = self.created
        result["config"] = self.model_config
        return result


@dataclasses.dataclass(frozen=True)
class Bundle:
    """Runtime view of a model: the files ``llama-server`` is started with.

    Attributes:
        root: ``bundles/sha256/<model id hex>/``.
        gguf_path: ``model/model.gguf`` (or the first shard).
        mmproj_path: ``model/model.mmproj`` when the model has a projector.
        chat_template_path: ``model/template.jinja`` when the model has a template.
        config: The normalised model config (also written to ``config.json``).
    """

    root: Path
    gguf_path: Path
    mmproj_path: Path | None
    chat_template_path: Path | None
    config: dict[str, Any] = dataclasses.field(compare=False)

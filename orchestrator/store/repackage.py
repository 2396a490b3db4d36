"""Derive a model variant from a stored model without copying its weights (DMR spec 3.4).

A variant is a new config blob and a new manifest whose layer descriptors are the source's
own, byte for byte: the weight blobs are shared in the store (and the bundle hard-links them),
and a push finds them already in the registry. What may change is what DMR's ``package
--from`` changes: ``config.context_size``, the chat template (a small new layer) and licenses
(small new layers). The source model is never touched; a variant with no change is the source
under one more tag (same bytes, same ID).

Two choices differ from DMR's builder, on purpose:

* A new chat template *replaces* the source's template layer. DMR appends a second one, and a
  model with two template layers has no usable template here (the bundle takes a template
  only when there is exactly one).
* ``descriptor.created`` and every other config key are kept as they are: the variant is the
  same model with different settings, and a repackage with the same settings gives the same ID.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InvalidRequestError, OrchestratorError
from orchestrator.store import mediatypes
from orchestrator.store.builder import MAX_CONTEXT_SIZE, format_rfc3339_nano
from orchestrator.store.layout import go_json
from orchestrator.store.records import is_modelpack_config

if TYPE_CHECKING:
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.store import Store

TEMPLATE_FILE_NAME = "template.jinja"
"""The file name a template given as text is annotated with."""
MAX_TEXT_FILE_BYTES = 1 << 20
"""Largest chat template or license accepted as text (a template is a few KiB)."""
TEXT_FILE_MODE = 0o644


@dataclasses.dataclass(frozen=True)
class TextFile:
    """A small text file added as a layer (license or chat template).

    Attributes:
        name: Base name written to the layer's ``org.cncf.model.filepath`` annotation.
        text: The content; stored as UTF-8.
    """

    name: str
    text: str


@dataclasses.dataclass(frozen=True)
class Changes:
    """What a variant changes relative to its source.

    Attributes:
        context_size: New ``config.context_size`` (``None``: keep the source's).
        chat_template: New chat template, replacing the source's (``None``: keep it).
        licenses: License files appended after the source's layers.
    """

    context_size: int | None = None
    chat_template: TextFile | None = None
    licenses: tuple[TextFile, ...] = ()


def check_context_size(value: object, param: str = "context_size") -> int:
    """Return ``value`` as a context size in tokens: an integer from 1 to int32's maximum.

    DMR stores ``context_size`` as an int32; larger values could not be read back by it.

    Raises:
        InvalidRequestError: Not an integer, or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{param} must be a whole number of tokens such as 8192, got {value!r}", param=param
        )
    if not 0 < value <= MAX_CONTEXT_SIZE:
        raise InvalidRequestError(
            f"{param} {value} is out of range; give a number of tokens from 1 to "
            f"{MAX_CONTEXT_SIZE}, such as 8192",
            param=param,
        )
    return value


def check_text(name: str, text: object, *, param: str) -> TextFile:
    """Return a :class:`TextFile` after checking that ``text`` is usable text.

    Raises:
        InvalidRequestError: Not a string, empty, holding NUL bytes, too large, or a name
            that is not a plain file name.
    """
    if not isinstance(text, str):
        raise InvalidRequestError(
            f"{param} must be text (a JSON string), got {type(text).__name__}", param=param
        )
    if not text.strip():
        raise InvalidRequestError(f"{param} is empty; give the file's text", param=param)
    if "\x00" in text:
        raise InvalidRequestError(
            f"{param} holds NUL bytes, so it is not a text file; give a Jinja or text file",
            param=param,
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as ex:  # lone surrogates from a JSON "\ud800" escape
        raise InvalidRequestError(f"{param} is not valid Unicode text", param=param) from ex
    if size > MAX_TEXT_FILE_BYTES:
        raise InvalidRequestError(
            f"{param} is {size} bytes; at most {MAX_TEXT_FILE_BYTES} are accepted as text",
            param=param,
        )
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise InvalidRequestError(
            f"file name {name!r} of {param} must be a plain file name such as 'LICENSE'",
            param=param,
        )
    return TextFile(name=name, text=text)


def _text_layer(file: TextFile, media_type: str, mtime: str) -> tuple[dict[str, Any], bytes]:
    """Return the descriptor and bytes of a text layer, annotated as DMR annotates files."""
    data = file.text.encode("utf-8")
    metadata = {
        "name": file.name,
        "mode": TEXT_FILE_MODE,
        "uid": 0,
        "gid": 0,
        "size": len(data),
        "mtime": mtime,
        "typeflag": 0,
    }
    descriptor: dict[str, Any] = {
        "mediaType": media_type,
        "size": len(data),
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "annotations": dict(
            sorted(
                {
                    mediatypes.ANNOTATION_FILEPATH: file.name,
                    mediatypes.ANNOTATION_FILE_METADATA: go_json(metadata).decode("utf-8"),
                    mediatypes.ANNOTATION_MEDIATYPE_UNTESTED: "false",
                }.items()
            )
        ),
    }
    return descriptor, data


def _diff_ids(config: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the source's diffIDs by layer digest (uncompressed layers: diffID == digest)."""
    rootfs = config.get("rootfs")
    listed = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if isinstance(listed, list) and len(listed) == len(layers):
        return [str(item) for item in listed]
    return [str(layer["digest"]) for layer in layers]


def derive(
    manifest: Mapping[str, Any],
    config: Mapping[str, Any],
    changes: Changes,
    *,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes, dict[str, bytes]]:
    """Return the variant's manifest bytes, config bytes and new small blobs (pure).

    Args:
        manifest: The source's parsed manifest.
        config: The source's parsed config blob.
        changes: What to change.
        now: Modification time written to new layers' file metadata (default: now).

    Returns:
        ``(manifest_bytes, config_bytes, {digest: bytes of each new layer})``.

    Raises:
        InvalidRequestError: The source is a CNCF ModelPack artifact and something changes
            (its config has no context size, and its layer types differ).
    """
    if is_modelpack_config(dict(config)) and changes != Changes():
        raise InvalidRequestError(
            "the model is a CNCF ModelPack artifact: its config has no context size and its "
            "layers are not Docker model layers; package the GGUF file again with --gguf",
            param="context_size" if changes.context_size is not None else None,
        )
    mtime = format_rfc3339_nano(now or datetime.datetime.now(datetime.UTC))
    source_layers = [dict(layer) for layer in manifest.get("layers", [])]
    diff_ids = _diff_ids(config, source_layers)
    kept = [
        (layer, diff_id)
        for layer, diff_id in zip(source_layers, diff_ids, strict=True)
        if changes.chat_template is None or layer.get("mediaType") != mediatypes.CHAT_TEMPLATE
    ]
    added: list[tuple[dict[str, Any], bytes]] = [
        _text_layer(license_file, mediatypes.LICENSE, mtime) for license_file in changes.licenses
    ]
    if changes.chat_template is not None:
        added.append(_text_layer(changes.chat_template, mediatypes.CHAT_TEMPLATE, mtime))
    layers = [layer for layer, _ in kept] + [descriptor for descriptor, _ in added]
    new_config = copy.deepcopy(dict(config))
    if changes.context_size is not None:
        inner = new_config.get("config")
        if not isinstance(inner, dict):
            inner = new_config["config"] = {}
        inner["context_size"] = changes.context_size
    if added or len(kept) != len(source_layers):
        rootfs = new_config.setdefault("rootfs", {"type": "rootfs"})
        rootfs["diff_ids"] = [diff_id for _, diff_id in kept] + [d["digest"] for d, _ in added]
    config_bytes = go_json(new_config)
    new_manifest = dict(manifest)
    new_manifest["config"] = {
        **dict(manifest["config"]),
        "size": len(config_bytes),
        "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
    }
    new_manifest["layers"] = layers
    blobs = {str(descriptor["digest"]): data for descriptor, data in added}
    return go_json(new_manifest), config_bytes, blobs


def repackage(
    store: Store,
    source: ModelRecord,
    target: str,
    changes: Changes,
    *,
    now: datetime.datetime | None = None,
) -> ModelRecord:
    """Store a variant of ``source`` tagged ``target`` and return it.

    Only the config, the manifest and new text layers are written; the weights stay the
    source's blobs. A failure removes the small blobs it wrote that no model uses.

    Raises:
        InvalidRequestError: The change does not apply to this model.
        InvalidReferenceError: ``target`` is not a valid name.
        StoreError: The store cannot be written, or the source was deleted meanwhile.
    """
    manifest_bytes, config_bytes, blobs = derive(source.manifest, source.config, changes, now=now)
    written: list[str] = []
    try:
        for data in (*blobs.values(), config_bytes):
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if not store.has_blob(digest):
                written.append(digest)
            store.write_blob(data)
        return store.add_model(manifest_bytes, [target])
    except (OrchestratorError, OSError):
        store.remove_unused_blobs(written)
        raise

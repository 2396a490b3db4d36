"""Build DMR model artifacts from local files (``docker model package --gguf``, spec 3.1-3.4).

An artifact is an OCI image manifest whose layers are the raw files (GGUF shards, then
licenses, chat template and multimodal projector) and whose config blob describes the model.
Manifest and config are serialised the way Go's ``encoding/json`` does (compact, struct field
order, sorted map keys, ``<>&`` escaped), so the same inputs and the same ``created`` time give
byte-identical manifests, hence the same model ID, run after run.

Layer order follows DMR's CLI (``cmd/cli/commands/package.go``): GGUF shards, licenses, chat
template, multimodal projector. The ``org.cncf.model.filepath`` annotation is the file's own
base name, as DMR's ``partial.NewLayer`` writes it (``SmolLM2-135M-Instruct.Q4_1.gguf``, not
``model.gguf``); the bundle layout decides the names used on disk.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import gguf
from orchestrator.errors import InvalidModelFileError, InvalidRequestError, StoreError
from orchestrator.store import mediatypes
from orchestrator.store.layout import go_json

if TYPE_CHECKING:
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.store import Store

HASH_CHUNK_BYTES = 1 << 20
MAX_CONTEXT_SIZE = 2**31 - 1  # DMR stores context_size as int32


@dataclasses.dataclass(frozen=True)
class LayerFile:
    """One file of an artifact, already hashed.

    Attributes:
        path: The local file.
        media_type: Layer media type, e.g. ``application/vnd.docker.ai.gguf.v3``.
        digest: ``sha256:<hex>`` of the file (layers are uncompressed: digest == diffID).
        size: Size in bytes.
        annotations: OCI annotations of the layer descriptor.
    """

    path: Path
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]

    @property
    def descriptor(self) -> dict[str, Any]:
        """Return the manifest descriptor in Go's field order."""
        descriptor: dict[str, Any] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if self.annotations:
            descriptor["annotations"] = dict(sorted(self.annotations.items()))
        return descriptor


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A built model artifact: raw manifest and config bytes plus the layer files.

    Attributes:
        manifest_bytes: The manifest exactly as stored and pushed.
        config_bytes: The config blob exactly as stored and pushed.
        layers: The layer files, in manifest order.
    """

    manifest_bytes: bytes
    config_bytes: bytes
    layers: tuple[LayerFile, ...]

    @property
    def config_digest(self) -> str:
        """Return ``sha256:<hex>`` of the config blob."""
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()

    @property
    def model_id(self) -> str:
        """Return the model ID: ``sha256:`` + sha256 of the raw manifest."""
        return "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def manifest(self) -> dict[str, Any]:
        """Return the parsed manifest."""
        return dict(json.loads(self.manifest_bytes))

    @property
    def config(self) -> dict[str, Any]:
        """Return the parsed config blob."""
        return dict(json.loads(self.config_bytes))


def format_rfc3339_nano(moment: datetime.datetime) -> str:
    """Format a time as Go's ``time.RFC3339Nano`` in UTC (trailing zeros trimmed).

    A naive datetime is taken to be UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    utc = moment.astimezone(datetime.UTC)
    return _format_utc(utc, utc.microsecond * 1000)


def _format_utc(utc: datetime.datetime, nanoseconds: int) -> str:
    date = f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
    base = f"{date}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    fraction = f"{nanoseconds:09d}".rstrip("0")
    return base + ("." + fraction if fraction else "") + "Z"


def _format_mtime_ns(mtime_ns: int) -> str:
    seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
    return _format_utc(datetime.datetime.fromtimestamp(seconds, datetime.UTC), nanoseconds)


def hash_file(path: Path) -> tuple[str, int]:
    """Return ``("sha256:<hex>", size)`` of a file, reading 1 MiB at a time.

    Raises:
        InvalidModelFileError: The file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as fileobj:
            while count := fileobj.readinto(buffer):
                digest.update(view[:count])
                size += count
    except OSError as ex:
        raise InvalidModelFileError(f"file '{path}' cannot be read: {ex.strerror}") from ex
    return "sha256:" + digest.hexdigest(), size


def _regular_file(path: Path | str, role: str) -> Path:
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidModelFileError(
            f"{role} file '{path}' does not exist; check the path"
        ) from None
    except OSError as ex:
        raise InvalidModelFileError(f"{role} file '{path}' cannot be read: {ex.strerror}") from ex
    if not stat.S_ISREG(mode):
        raise InvalidModelFileError(f"{role} file '{path}' is not a regular file; give a file path")
    return path


def _layer(path: Path, media_type: str, mtime: str | None) -> LayerFile:
    """Hash one file and describe it with DMR's file annotations."""
    digest, size = hash_file(path)
    info = os.stat(path)
    metadata = {
        "name": path.name,
        "mode": stat.S_IMODE(info.st_mode) & 0o777,
        "uid": 0,  # DMR writes 0: the owner is meaningless on another machine
        "gid": 0,
        "size": size,
        "mtime": mtime if mtime is not None else _format_mtime_ns(info.st_mtime_ns),
        "typeflag": 0,  # tar.TypeReg
    }
    annotations = {
        mediatypes.ANNOTATION_FILEPATH: path.name,
        mediatypes.ANNOTATION_FILE_METADATA: go_json(metadata).decode("utf-8"),
        mediatypes.ANNOTATION_MEDIATYPE_UNTESTED: "false",
    }
    return LayerFile(
        path=path, media_type=media_type, digest=digest, size=size, annotations=annotations
    )


def _check_context_size(context_size: int | None) -> None:
    if context_size is None:
        return
    if isinstance(context_size, bool) or not isinstance(context_size, int):
        raise InvalidRequestError(
            f"context size '{context_size}' is not an integer; give a number of tokens",
            param="context_size",
        )
    if not 0 < context_size <= MAX_CONTEXT_SIZE:
        raise InvalidRequestError(
            f"context size '{context_size}' is out of range; give a number of tokens "
            f"from 1 to {MAX_CONTEXT_SIZE}",
            param="context_size",
        )


def build_gguf_artifact(
    gguf_path: Path,
    *,
    licenses: Sequence[Path] = (),
    chat_template: Path | None = None,
    mmproj: Path | None = None,
    context_size: int | None = None,
    created: datetime.datetime | None = None,
) -> Artifact:
    """Build a Docker-format (config v0.1) artifact from a GGUF model.

    Args:
        gguf_path: The GGUF file, or the first shard (``*-00001-of-0000N.gguf``) of a sharded
            model; the other shards are found in the same directory.
        licenses: License files, one layer each.
        chat_template: A Jinja chat template file (takes precedence over the GGUF's own).
        mmproj: A multimodal projector GGUF file.
        context_size: Overrides ``config.context_size`` (by default the GGUF's
            ``<arch>.context_length``).
        created: Creation time; the default is now. Also used as every layer's file ``mtime``
            when given, so equal inputs give byte-identical manifests.

    Returns:
        The artifact; nothing is written anywhere.

    Raises:
        InvalidRequestError: ``context_size`` is not a positive int32.
        InvalidModelFileError: A file is missing, unreadable, or (model, mmproj) not valid GGUF.
    """
    _check_context_size(context_size)
    fixed_mtime = format_rfc3339_nano(created) if created is not None else None
    if created is None:
        created = datetime.datetime.now(datetime.UTC)
    shards = gguf.find_shards(_regular_file(gguf_path, "model"))
    config = gguf.gguf_model_config(shards)
    if context_size is not None:
        config["context_size"] = context_size
    extras = [(_regular_file(p, "license"), mediatypes.LICENSE) for p in licenses]
    if chat_template is not None:
        extras.append((_regular_file(chat_template, "chat template"), mediatypes.CHAT_TEMPLATE))
    if mmproj is not None:
        gguf.read_gguf(_regular_file(mmproj, "multimodal projector"))  # must be GGUF too
        extras.append((Path(mmproj), mediatypes.MMPROJ))
    layers = [_layer(p, mediatypes.GGUF, fixed_mtime) for p in shards]
    layers += [_layer(p, media_type, fixed_mtime) for p, media_type in extras]
    config_bytes = go_json(
        {
            "config": config,
            "descriptor": {"created": format_rfc3339_nano(created)},
            "rootfs": {"type": "rootfs", "diff_ids": [layer.digest for layer in layers]},
        }
    )
    manifest_bytes = go_json(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": {
                "mediaType": mediatypes.CONFIG_V01,
                "size": len(config_bytes),
                "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
            },
            "layers": [layer.descriptor for layer in layers],
        }
    )
    return Artifact(manifest_bytes=manifest_bytes, config_bytes=config_bytes, layers=tuple(layers))


def store_artifact(store: Store, artifact: Artifact, tags: Iterable[str] = ()) -> ModelRecord:
    """Copy an artifact's blobs into the store and record the model under ``tags``.

    Layers already in the store are not copied again. Each copied layer is re-hashed by the
    store against the digest computed at build time, so a file changed in between is refused.

    Raises:
        DigestMismatchError: A layer file changed since the artifact was built.
        StoreError: The store cannot be written.
    """
    for layer in artifact.layers:
        store.import_blob_file(layer.path, layer.digest)  # a no-op for blobs already stored
    written = store.write_blob(artifact.config_bytes)
    if written != artifact.config_digest:
        raise StoreError(
            f"config blob was stored as '{written}' instead of '{artifact.config_digest}'; "
            "this is a bug, please report it"
        )
    return store.add_model(artifact.manifest_bytes, tags)

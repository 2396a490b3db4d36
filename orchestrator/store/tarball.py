"""Tar transport of a model (``/models/load``, ``/models/{m}/export``; DMR spec section 3.6).

The archive holds, in order: the directory ``blobs``, for each layer the directory
``blobs/<alg>`` (once) and the file ``blobs/<alg>/<hex>`` (raw bytes, mode 0666), the config
blob as ``blobs/<alg>/<hex>``, and last ``manifest.json`` (the raw manifest).

Loading streams the archive (``tarfile`` mode ``r|``): each blob goes to its ``.incomplete``
file, is hashed on the way, checked against its name and renamed into place, so a blob is
never held in memory. The model is then registered without tags, as DMR does.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast

from orchestrator.errors import InvalidRequestError, OrchestratorError, StoreError
from orchestrator.store.layout import (
    copy_hashing,
    new_hasher,
    open_incomplete,
    parse_digest,
    publish,
)
from orchestrator.store.records import ModelRecord, parse_manifest

if TYPE_CHECKING:
    from orchestrator.store.store import Store

ProgressCallback = Callable[[dict[str, object]], None]


class Readable(Protocol):
    """Anything with ``read(size)`` returning bytes (a request body, a pipe, a file)."""

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes; ``b""`` at the end."""
        ...


class Writable(Protocol):
    """Anything with ``write(bytes)`` (a response stream, a pipe, a file)."""

    def write(self, data: bytes, /) -> int | None:
        """Write ``data``."""
        ...

PROGRESS_STEP_BYTES = 8 << 20
MAX_MANIFEST_BYTES = 4 << 20
MANIFEST_NAME = "manifest.json"
_BLOB_DIR = re.compile(r"blobs/(sha256|sha512)")
_BLOB_FILE = re.compile(r"blobs/(sha256|sha512)/([a-f0-9]+)")


def _directory_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def _file_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o666
    info.size = size
    return info


def export_tar(store: Store, record: ModelRecord, fileobj: Writable) -> None:
    """Write ``record`` to ``fileobj`` as a DMR model archive (streamed, never buffered).

    Raises:
        StoreError: A blob is missing (checked before anything is written) or writing fails.
    """
    manifest_bytes = record.manifest_bytes or store.read_manifest(record.id)
    layer_digests = [str(layer["digest"]) for layer in record.layers]
    for digest in [*layer_digests, record.config_digest]:
        if not store.has_blob(digest):
            raise StoreError(
                f"blob '{digest}' of model '{record.id}' is missing from the store; pull the "
                f"model again"
            )
    try:
        stream = cast(IO[bytes], fileobj)  # tarfile's stream mode calls write() only
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_directory_info("blobs"))
            written_dirs = {"blobs"}
            for digest in layer_digests:
                algorithm, hex_digest = parse_digest(digest)
                directory = f"blobs/{algorithm}"
                if directory not in written_dirs:
                    tar.addfile(_directory_info(directory))
                    written_dirs.add(directory)
                _add_blob(tar, f"{directory}/{hex_digest}", store.blob_path(digest))
            # NOTE(store): DMR writes no directory entry for the config blob.
            algorithm, hex_digest = parse_digest(record.config_digest)
            _add_blob(tar, f"blobs/{algorithm}/{hex_digest}", store.blob_path(record.config_digest))
            manifest_info = _file_info(MANIFEST_NAME, len(manifest_bytes))
            tar.addfile(manifest_info, _BytesReader(manifest_bytes))
    except OSError as ex:
        raise StoreError(f"exporting model '{record.id}' failed: {ex.strerror or ex}") from ex


def _add_blob(tar: tarfile.TarFile, name: str, path: Path) -> None:
    with open(path, "rb") as handle:
        tar.addfile(_file_info(name, os.fstat(handle.fileno()).st_size), handle)


class _BytesReader:
    """Minimal file object over bytes for ``TarFile.addfile``."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._offset + size
        chunk = self._data[self._offset : end]
        self._offset += len(chunk)
        return chunk


def _member_name(raw: str) -> str:
    """Return the normalised entry name, refusing absolute paths and ``..``."""
    if raw.startswith("/") or "\\" in raw or "\x00" in raw:
        raise _bad_entry(raw, "absolute or malformed path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _bad_entry(raw, "path with '..'")
    return "/".join(parts)


def _bad_entry(name: str, why: str) -> InvalidRequestError:
    shown = name if len(name) <= 120 else name[:117] + "..."
    return InvalidRequestError(
        f"tar entry {shown!r} is not allowed ({why}); a model archive holds only "
        f"'blobs/sha256/<hex>' files and 'manifest.json'"
    )


def _progress_line(digest: str, size: int, current: int) -> dict[str, object]:
    return {
        "type": "progress",
        "message": f"Transferred: {current / 1024 / 1024:.2f} MB",
        "total": size,
        "layer": {"id": digest, "size": size, "current": current},
        "mode": "load",
    }


def _load_blob(
    store: Store,
    source: IO[bytes],
    name: str,
    digest: str,
    size: int,
    progress: ProgressCallback | None,
) -> None:
    """Stream one blob entry into the store via its ``.incomplete`` file."""
    algorithm, hex_digest = parse_digest(digest)
    if store.has_blob(digest):
        # Already stored: tarfile skips the unread data when moving to the next entry.
        if progress is not None:
            progress(_progress_line(digest, size, size))
        return
    incomplete = store.incomplete_path(digest)
    handle, path = open_incomplete(incomplete)
    hasher = new_hasher(algorithm)
    reported = 0

    def on_chunk(done: int) -> None:
        nonlocal reported
        if progress is not None and done - reported >= PROGRESS_STEP_BYTES:
            reported = done
            progress(_progress_line(digest, size, done))

    try:
        with handle:
            copy_hashing(source, handle, hasher, on_chunk)
            handle.flush()
            os.fsync(handle.fileno())
            if hasher.hexdigest() != hex_digest:
                raise InvalidRequestError(
                    f"tar entry '{name}' does not hash to its name (got "
                    f"'{algorithm}:{hasher.hexdigest()}'); the archive is corrupt, export it again"
                )
            # Renamed while the flock is held, so a waiting writer sees the file has moved.
            publish(path, store.blob_path(digest))
    except (tarfile.TarError, EOFError, OSError):
        # A truncated upload leaves a valid prefix in the shared .incomplete file, which a
        # later pull may resume; a private file is of no use to anyone.
        if path != incomplete:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if progress is not None:
        progress(_progress_line(digest, size, size))


def _read_entries(
    store: Store, fileobj: Readable, progress: ProgressCallback | None
) -> bytes | None:
    manifest_bytes: bytes | None = None
    stream = cast(IO[bytes], fileobj)  # tarfile's stream mode calls read() only
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = _member_name(member.name)
            if member.isdir():
                if name in ("", "blobs") or _BLOB_DIR.fullmatch(name):
                    continue
                raise _bad_entry(member.name, "unexpected directory")
            if not member.isreg():
                raise _bad_entry(member.name, "not a regular file")
            extracted = tar.extractfile(member)
            if extracted is None:  # pragma: no cover - isreg() entries always extract
                raise _bad_entry(member.name, "unreadable entry")
            if name == MANIFEST_NAME:
                if member.size > MAX_MANIFEST_BYTES:
                    raise _bad_entry(member.name, f"larger than {MAX_MANIFEST_BYTES} bytes")
                manifest_bytes = extracted.read()
                continue
            match = _BLOB_FILE.fullmatch(name)
            if match is None:
                raise _bad_entry(member.name, "unexpected name")
            digest = f"{match.group(1)}:{match.group(2)}"
            try:
                parse_digest(digest)
            except InvalidRequestError:
                raise _bad_entry(member.name, "the name is not a valid digest") from None
            _load_blob(store, extracted, member.name, digest, member.size, progress)
    return manifest_bytes


def load_tar(
    store: Store, fileobj: Readable, progress: ProgressCallback | None = None
) -> ModelRecord:
    """Load a model archive from a stream into the store (no tags), as ``/models/load`` does.

    Args:
        store: Target store.
        fileobj: The archive (read sequentially; need not be seekable).
        progress: Called with DMR progress dicts (mode ``load``) about every 8 MiB per blob.

    Raises:
        InvalidRequestError: Not a tar archive, truncated, an unexpected or unsafe entry, a blob
            that does not hash to its name, no ``manifest.json``, a malformed manifest, or a
            blob it names missing.
        UnsupportedModelError: The manifest is an image index or not schema version 2.
        StoreError: The store cannot be written.
    """
    try:
        manifest_bytes = _read_entries(store, fileobj, progress)
    except OrchestratorError:
        raise
    except (tarfile.TarError, EOFError) as ex:
        raise InvalidRequestError(
            f"the upload is not a complete tar archive ({ex}); send the whole model archive"
        ) from ex
    except OSError as ex:
        raise StoreError(f"reading the model archive failed: {ex.strerror or ex}") from ex
    if manifest_bytes is None:
        raise InvalidRequestError(
            "the tar archive has no 'manifest.json'; export the model again "
            "(GET /models/{name}/export)"
        )
    manifest = parse_manifest(manifest_bytes)
    digests = [str(layer["digest"]) for layer in manifest["layers"]]
    digests.append(str(manifest["config"]["digest"]))
    for digest in digests:
        if not store.has_blob(digest):
            raise InvalidRequestError(
                f"the tar archive lacks blob '{digest}' named by its manifest.json; export the "
                f"model again"
            )
    return store.add_model(manifest_bytes)

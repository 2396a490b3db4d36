"""Tar transport of a model (``/models/load``, ``/models/{m}/export``; DMR spec section 3.6).

The archive holds, in order: the directory ``blobs``, for each layer the directory
``blobs/<alg>`` (once) and the file ``blobs/<alg>/<hex>`` (raw bytes, mode 0666), the config
blob as ``blobs/<alg>/<hex>``, and last ``manifest.json`` (the raw manifest).

Loading streams the archive (``tarfile`` mode ``r|``): each blob the store lacks goes to a
private temporary file beside its final name, hashed on the way and checked against its name,
so a blob is never held in memory. Nothing reaches the store until the whole archive has been
read and its manifest names only blobs that are there (staged or stored): then, under the store
lock, the staged blobs are renamed into place and the model is registered without tags, as DMR
does. A rejected archive (bad entry, digest mismatch, truncated, no or bad manifest, too large,
disk full) therefore leaves the blob directory as it found it: its temporary files are deleted
and no stored blob is touched. Blobs the store already had are never written, nor deleted; a
blob another import stored meanwhile wins over our copy. Only when registering fails after the
renames (a config blob that is not JSON, an I/O error) are the blobs this import renamed into
place deleted again, under the same lock hold and only if no model in the index uses them.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, cast

from orchestrator.atomicfile import TEMP_MARK
from orchestrator.errors import (
    ClientTimeoutError,
    InvalidRequestError,
    OrchestratorError,
    RequestTooLargeError,
    StoreError,
)
from orchestrator.memory.sizes import format_bytes
from orchestrator.store.layout import (
    copy_hashing,
    ensure_dir,
    new_hasher,
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


class CappedReader:
    """A body that refuses to give more than ``limit`` bytes (``/models/load``'s size cap).

    Checked as the bytes are read, so a chunked upload (no Content-Length) is cut off as soon
    as it passes the limit, with at most ``limit`` bytes written to the store's temporary files.
    """

    def __init__(self, source: Readable, limit: int) -> None:
        self._source = source
        self._limit = limit
        self._count = 0

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes.

        Raises:
            RequestTooLargeError: The body has passed the limit.
        """
        allowed = self._limit - self._count + 1  # one more byte tells "over" from "exactly"
        data = self._source.read(allowed if size < 0 else min(size, allowed))
        self._count += len(data)
        if self._count > self._limit:
            raise too_large_error(self._limit)
        return data


def too_large_error(limit: int, length: int | None = None) -> RequestTooLargeError:
    """Return the 413 for an archive over ``limit`` bytes (``length``: its Content-Length)."""
    size = f"{format_bytes(length)} " if length is not None else ""
    return RequestTooLargeError(
        f"the model archive {size}is larger than the {format_bytes(limit)} this daemon accepts "
        f"(max_load_size, DMR_MAX_LOAD_SIZE); raise that setting or pull the model from a "
        f"registry instead"
    )


def _stage_blob(
    store: Store,
    source: IO[bytes],
    name: str,
    digest: str,
    size: int,
    progress: ProgressCallback | None,
) -> Path:
    """Copy one blob entry to a private temporary file and check it hashes to its name.

    Returns:
        The temporary file (``blobs/<alg>/load.tmp-*``), for the caller to publish or delete.
    """
    algorithm, hex_digest = parse_digest(digest)
    directory = store.blob_path(digest).parent
    ensure_dir(directory)
    # TEMP_MARK in the name: the store's start-up sweep removes one a crash left behind.
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix="load" + TEMP_MARK)
    except OSError as ex:
        raise StoreError(
            f"cannot create a temporary file in '{directory}': {ex.strerror or ex}; check the "
            f"free space and permissions of the model store"
        ) from ex
    path = Path(temp_name)
    hasher = new_hasher(algorithm)
    reported = 0

    def on_chunk(done: int) -> None:
        nonlocal reported
        if progress is not None and done - reported >= PROGRESS_STEP_BYTES:
            reported = done
            progress(_progress_line(digest, size, done))

    try:
        with open(fd, "wb") as handle:
            copy_hashing(source, handle, hasher, on_chunk)
            handle.flush()
            os.fsync(handle.fileno())
        if hasher.hexdigest() != hex_digest:
            raise InvalidRequestError(
                f"tar entry '{name}' does not hash to its name (got "
                f"'{algorithm}:{hasher.hexdigest()}'); the archive is corrupt, export it again"
            )
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if progress is not None:
        progress(_progress_line(digest, size, size))
    return path


def _read_entries(
    store: Store,
    fileobj: Readable,
    progress: ProgressCallback | None,
    staged: dict[str, Path],
) -> bytes | None:
    """Read the archive; stage each blob the store lacks into ``staged``; return the manifest."""
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
            if digest in staged or store.has_blob(digest):
                # Already here: tarfile skips the unread data when moving to the next entry.
                if progress is not None:
                    progress(_progress_line(digest, member.size, member.size))
                continue
            staged[digest] = _stage_blob(
                store, extracted, member.name, digest, member.size, progress
            )
    return manifest_bytes


def load_tar(
    store: Store, fileobj: Readable, progress: ProgressCallback | None = None
) -> ModelRecord:
    """Load a model archive from a stream into the store (no tags), as ``/models/load`` does.

    All or nothing (see the module doc): a rejected archive leaves no blob behind.

    Args:
        store: Target store.
        fileobj: The archive (read sequentially; need not be seekable). Wrap it in a
            :class:`CappedReader` to bound its size.
        progress: Called with DMR progress dicts (mode ``load``) about every 8 MiB per blob.

    Raises:
        InvalidRequestError: Not a tar archive, truncated, an unexpected or unsafe entry, a blob
            that does not hash to its name, no ``manifest.json``, a malformed manifest, or a
            blob it names missing.
        RequestTooLargeError: The archive passed the :class:`CappedReader`'s limit.
        UnsupportedModelError: The manifest is an image index or not schema version 2.
        StoreError: The store cannot be written.
    """
    staged: dict[str, Path] = {}
    try:
        manifest_bytes = _read_archive(store, fileobj, progress, staged)
        manifest = parse_manifest(manifest_bytes)
        digests = [str(layer["digest"]) for layer in manifest["layers"]]
        digests.append(str(manifest["config"]["digest"]))
        for digest in digests:
            if digest not in staged and not store.has_blob(digest):
                raise InvalidRequestError(
                    f"the tar archive lacks blob '{digest}' named by its manifest.json; export "
                    f"the model again"
                )
        return _commit(store, manifest_bytes, staged)
    finally:
        # Whatever was not renamed into place: every staged file on failure, and on success
        # the copies of blobs another import stored first (published ones are gone already).
        for path in staged.values():
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def _read_archive(
    store: Store,
    fileobj: Readable,
    progress: ProgressCallback | None,
    staged: dict[str, Path],
) -> bytes:
    """Return the archive's manifest bytes after staging its blobs (errors made ours)."""
    try:
        manifest_bytes = _read_entries(store, fileobj, progress, staged)
    except OrchestratorError:
        raise
    except (tarfile.TarError, EOFError) as ex:
        raise InvalidRequestError(
            f"the upload is not a complete tar archive ({ex}); send the whole model archive"
        ) from ex
    except (TimeoutError, BlockingIOError) as ex:
        # Only a client socket times out here (BlockingIOError: its kernel SO_RCVTIMEO).
        raise ClientTimeoutError(
            "the client sent no part of the model archive for the server's client timeout "
            "(DMR_CLIENT_TIMEOUT); send the archive without pausing"
        ) from ex
    except OSError as ex:
        raise StoreError(f"reading the model archive failed: {ex.strerror or ex}") from ex
    if manifest_bytes is None:
        raise InvalidRequestError(
            "the tar archive has no 'manifest.json'; export the model again "
            "(GET /models/{name}/export)"
        )
    return manifest_bytes


def _commit(store: Store, manifest_bytes: bytes, staged: dict[str, Path]) -> ModelRecord:
    """Rename the staged blobs into place and register the model, as one store-lock hold."""
    published: list[str] = []
    with store.lock():
        try:
            for digest, path in staged.items():
                # Stored meanwhile (another import, a pull): that copy stays, ours is dropped.
                if not store.has_blob(digest):
                    publish(path, store.blob_path(digest))
                    published.append(digest)
            return store.add_model(manifest_bytes)
        except BaseException:
            # Only what this import stored, and only if no model uses it: nothing else can
            # have registered one meanwhile (add_model and delete take this lock).
            store.remove_unused_blobs(published)
            raise

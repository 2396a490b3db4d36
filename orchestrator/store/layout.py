"""On-disk layout of the model store and its atomic file helpers (DMR spec section 2.2).

The layout is byte-compatible with Docker Model Runner's store::

    <root>/layout.json                    {"version": "1.0.0"}
    <root>/models.json                    the index (see ``index.py``)
    <root>/blobs/<alg>/<hex>              layers and config blobs
    <root>/blobs/<alg>/<hex>.incomplete   partial downloads
    <root>/manifests/sha256/<hex>         raw manifest bytes; <hex> is the model ID
    <root>/bundles/sha256/<hex>/          runtime bundle (hard links to blobs)
    <root>/.lock                          inter-process lock for index updates

Every file reaches its final name by ``rename`` from a temporary file in the same directory,
after ``fsync``; the directory is synced afterwards. A reader therefore sees either the old or
the new content, never a half-written file. Every ``OSError`` is wrapped in ``StoreError`` here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator.atomicfile import TEMP_MARK, sync_directory, write_atomic
from orchestrator.errors import InvalidRequestError, StoreError

if TYPE_CHECKING:
    from hashlib import _Hash

log = logging.getLogger(__name__)

LAYOUT_VERSION = "1.0.0"
FILE_MODE = 0o644
DIR_MODE = 0o755
CHUNK_BYTES = 1 << 20
INCOMPLETE_SUFFIX = ".incomplete"
STALE_INCOMPLETE_SECONDS = 7 * 24 * 3600.0
STALE_TEMP_SECONDS = 24 * 3600.0
LOCK_TIMEOUT_SECONDS = 120.0

# Hash algorithms DMR accepts for blob names, with their hex lengths. Anything else could
# name a path outside the blob directory, so it is refused before a path is built.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(sha256|sha512):([a-f0-9]+)")
# Errors for which a hard link cannot work but a copy can.
_LINK_FALLBACK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP}
if hasattr(errno, "EOPNOTSUPP"):
    _LINK_FALLBACK_ERRNOS.add(errno.EOPNOTSUPP)
# Go's encoding/json escapes these inside strings; DMR's files carry the escaped forms.
_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def parse_digest(digest: str) -> tuple[str, str]:
    """Split ``sha256:<hex>`` into algorithm and hex, refusing anything unsafe for a path.

    Raises:
        InvalidRequestError: The digest is not ``sha256:`` + 64 or ``sha512:`` + 128
            lowercase hex digits.
    """
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None or len(match.group(2)) != _HEX_LENGTHS[match.group(1)]:
        shown = digest if not isinstance(digest, str) or len(digest) <= 80 else digest[:77] + "..."
        raise InvalidRequestError(
            f"invalid digest {shown!r}; use 'sha256:' followed by 64 lowercase hex digits"
        )
    return match.group(1), match.group(2)


def new_hasher(algorithm: str) -> _Hash:
    """Return a fresh hash object for ``sha256`` or ``sha512``."""
    return hashlib.sha512() if algorithm == "sha512" else hashlib.sha256()


def go_json(value: Any, *, indent: bool = False) -> bytes:
    """Serialise ``value`` as Go's ``encoding/json`` does (compact, or 2-space MarshalIndent)."""
    if indent:
        text = json.dumps(value, ensure_ascii=False, indent=2, separators=(",", ": "))
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in _GO_ESCAPES:
        text = text.replace(char, escaped)
    return text.encode("utf-8")


class StoreLayout:
    """Paths of one store root; every digest is validated before a path is built.

    Attributes:
        root: The store directory (``MODELS_PATH``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def layout_file(self) -> Path:
        """Return ``<root>/layout.json``."""
        return self.root / "layout.json"

    @property
    def index_file(self) -> Path:
        """Return ``<root>/models.json``."""
        return self.root / "models.json"

    @property
    def lock_file(self) -> Path:
        """Return ``<root>/.lock``."""
        return self.root / ".lock"

    @property
    def blobs_dir(self) -> Path:
        """Return ``<root>/blobs``."""
        return self.root / "blobs"

    @property
    def manifests_dir(self) -> Path:
        """Return ``<root>/manifests``."""
        return self.root / "manifests"

    @property
    def bundles_dir(self) -> Path:
        """Return ``<root>/bundles``."""
        return self.root / "bundles"

    def blob_path(self, digest: str) -> Path:
        """Return ``blobs/<alg>/<hex>`` for ``digest``."""
        algorithm, hex_digest = parse_digest(digest)
        return self.blobs_dir / algorithm / hex_digest

    def incomplete_path(self, digest: str) -> Path:
        """Return ``blobs/<alg>/<hex>.incomplete`` for ``digest``."""
        blob = self.blob_path(digest)
        return blob.with_name(blob.name + INCOMPLETE_SUFFIX)

    def manifest_path(self, model_id: str) -> Path:
        """Return ``manifests/<alg>/<hex>`` for a model ID."""
        algorithm, hex_digest = parse_digest(model_id)
        return self.manifests_dir / algorithm / hex_digest

    def bundle_dir(self, model_id: str) -> Path:
        """Return ``bundles/<alg>/<hex>`` for a model ID."""
        algorithm, hex_digest = parse_digest(model_id)
        return self.bundles_dir / algorithm / hex_digest


def _store_error(action: str, path: Path, ex: OSError) -> StoreError:
    reason = ex.strerror or str(ex)
    return StoreError(
        f"cannot {action} '{path}': {reason}; check the free space and permissions of the "
        f"model store",
        details={"errno": ex.errno},
    )


def ensure_dir(path: Path) -> None:
    """Create ``path`` and its parents (mode 0755) if missing."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as ex:
        raise _store_error("create directory", path, ex) from ex


def fsync_dir(path: Path) -> None:
    """Flush a directory entry change (a rename) to disk (see :func:`sync_directory`)."""
    try:
        sync_directory(path)
    except OSError as ex:
        raise _store_error("sync directory", path, ex) from ex


def publish(temp: Path, final: Path) -> None:
    """Give ``temp`` mode 0644 and rename it to ``final``, then sync the directory."""
    try:
        os.chmod(temp, FILE_MODE)
        os.replace(temp, final)
    except OSError as ex:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise _store_error("rename into", final, ex) from ex
    fsync_dir(final.parent)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0644) with :func:`~orchestrator.atomicfile.write_atomic`.

    Raises:
        StoreError: The directory cannot be created or the file cannot be written.
    """
    ensure_dir(path.parent)
    try:
        write_atomic(path, data, mode=FILE_MODE)
    except OSError as ex:
        raise _store_error("write", path, ex) from ex


def copy_hashing(
    source: IO[bytes],
    target: IO[bytes],
    hasher: _Hash,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Copy ``source`` to ``target`` in 1 MiB chunks, hashing; return the byte count."""
    copied = 0
    while True:
        chunk = source.read(CHUNK_BYTES)
        if not chunk:
            return copied
        hasher.update(chunk)
        target.write(chunk)
        copied += len(chunk)
        if on_chunk is not None:
            on_chunk(copied)


def copy_into_temp(source: Path, directory: Path, algorithm: str) -> tuple[Path, str]:
    """Copy ``source`` to a new synced temp file in ``directory``, hashing it on the way.

    Returns:
        The temp file (the caller publishes or deletes it) and the hex digest.
    """
    ensure_dir(directory)
    hasher = new_hasher(algorithm)
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix="import" + TEMP_MARK)
    except OSError as ex:
        raise _store_error("create a temporary file in", directory, ex) from ex
    temp = Path(temp_name)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            copy_hashing(src, dst, hasher)
            dst.flush()
            os.fsync(dst.fileno())
    except OSError as ex:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise StoreError(
            f"cannot import '{source}' into the store: {ex.strerror or ex}; check that the file "
            f"is readable and the store has free space"
        ) from ex
    return temp, hasher.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a file's content to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as ex:
        raise _store_error("sync", path, ex) from ex


def hash_file(path: Path, algorithm: str = "sha256") -> str:
    """Return the hex digest of the file at ``path``."""
    hasher = new_hasher(algorithm)
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                hasher.update(chunk)
    except OSError as ex:
        raise _store_error("read", path, ex) from ex
    return hasher.hexdigest()


def open_incomplete(path: Path) -> tuple[IO[bytes], Path]:
    """Open ``path`` (an ``.incomplete`` file) for exclusive writing from byte 0.

    The file is locked with ``flock`` so two writers of the same blob cannot interleave; when
    another writer holds it, a private sibling ``<hex>.<random>.incomplete`` is used instead
    (both end in the same content-addressed name, so either rename wins).

    Returns:
        The open file (truncated, mode 0644) and the path it has.
    """
    ensure_dir(path.parent)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as ex:
            raise _store_error("create", path, ex) from ex
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            break
        try:
            # The previous holder may have renamed the file away while we waited to open it:
            # only the inode still named ``path`` may be truncated.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.fchmod(fd, FILE_MODE)
        except FileNotFoundError:
            os.close(fd)
            continue
        except OSError as ex:
            os.close(fd)
            raise _store_error("prepare", path, ex) from ex
        return os.fdopen(fd, "wb"), path
    stem = path.name[: -len(INCOMPLETE_SUFFIX)]
    try:
        fd, private = tempfile.mkstemp(dir=path.parent, prefix=stem + ".", suffix=INCOMPLETE_SUFFIX)
        os.fchmod(fd, FILE_MODE)
    except OSError as ex:
        raise _store_error("create a temporary file in", path.parent, ex) from ex
    return os.fdopen(fd, "wb"), Path(private)


def link_or_copy(
    source: Path, target: Path, *, link: Callable[[Path, Path], None] = os.link
) -> None:
    """Hard-link ``source`` to ``target``; copy it when linking cannot work (EXDEV, EPERM...).

    Args:
        source: Existing blob.
        target: New bundle file (must not exist).
        link: The link function (a seam for tests).
    """
    try:
        link(source, target)
        return
    except OSError as ex:
        if ex.errno not in _LINK_FALLBACK_ERRNOS:
            raise _store_error("link", target, ex) from ex
        log.info("hard link failed, copying blob=%s errno=%s", source.name, ex.errno)
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(target, FILE_MODE)
    except OSError as ex:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise _store_error("copy a blob to", target, ex) from ex


def remove_stale_files(directory: Path, *, now: float | None = None) -> int:
    """Delete ``*.incomplete`` files older than 7 days and temp files older than a day.

    Returns:
        How many files were removed.
    """
    # File age is wall-clock by nature (mtime); this is not a deadline.
    current = time.time() if now is None else now
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            if name.endswith(INCOMPLETE_SUFFIX):
                max_age = STALE_INCOMPLETE_SECONDS
            elif TEMP_MARK in name:
                max_age = STALE_TEMP_SECONDS
            else:
                continue
            path = Path(dirpath) / name
            try:
                if current - path.stat().st_mtime > max_age:
                    path.unlink()
                    removed += 1
            except OSError as ex:
                log.warning("cannot remove stale file path=%s error=%s", path, ex)
    return removed


class StoreLock:
    """Exclusive ``flock`` on ``<root>/.lock``; re-entrant within one thread.

    ``flock`` locks belong to an open file description, so two threads of one process
    exclude each other as two processes do; the in-process ``RLock`` lets a thread that
    already holds the lock take it again without deadlocking on itself.
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
        purpose: str = "the store",
    ) -> None:
        """Prepare the lock (nothing is opened until :meth:`hold`).

        Args:
            path: The lock file (created if missing; a symbolic link is refused).
            timeout_seconds: The longest wait for another holder.
            purpose: What the lock guards, for the timeout's message (the CLI's contexts file
                uses it too).
        """
        self._path = path
        self._timeout_seconds = timeout_seconds
        self._purpose = purpose
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the duration of the ``with`` block."""
        deadline = time.monotonic() + self._timeout_seconds
        if not self._thread_lock.acquire(timeout=self._timeout_seconds):
            raise self._timeout_error()
        try:
            if self._depth == 0:
                self._fd = self._lock_file(deadline)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
        finally:
            self._thread_lock.release()

    def _lock_file(self, deadline: float) -> int:
        try:
            fd = os.open(
                self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE
            )
        except OSError as ex:
            raise _store_error("open the lock file", self._path, ex) from ex
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.close(fd)
                    raise self._timeout_error() from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.1)
            except OSError as ex:
                os.close(fd)
                raise _store_error("lock", self._path, ex) from ex

    def _timeout_error(self) -> StoreError:
        return StoreError(
            f"timed out after {self._timeout_seconds:.0f}s waiting for the lock '{self._path}' "
            f"of {self._purpose}; another process is updating it, retry later"
        )

"""Replace a file's content atomically: a reader, or a crash, sees the old file or the new one.

The new content goes to a temporary file in the same directory (a rename is only atomic within
one file system), is synced, gets its mode and is renamed over the target; the directory is
then synced so the rename itself survives a power cut. Temporary names are hidden
(``.<name>.tmp-<random>``) and contain :data:`TEMP_MARK`, which the model store's clean-up of
leftovers recognises.

Nothing is written through a symlink: the temporary file is created with ``O_CREAT | O_EXCL |
O_NOFOLLOW``, and the rename replaces a symlink at the target itself, not the file it points to.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

TEMP_MARK = ".tmp-"
# A new file's permission bits before the umask, as open() creates files.
_UMASKED_MODE = 0o666
# Some file systems (and some FUSE mounts) cannot sync a directory; the rename is done anyway.
_DIRECTORY_SYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF})
_NAME_ATTEMPTS = 100


def sync_directory(path: Path) -> None:
    """Flush a change of ``path``'s entries (a rename, a new file) to disk.

    A file system that cannot sync directories is not an error.

    Raises:
        OSError: The directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as ex:
        if ex.errno not in _DIRECTORY_SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    # O_EXCL: a name someone planted (a symlink to a file of ours, even a dangling one) is
    # an error, never opened; O_NOFOLLOW says so again for file systems that bend O_EXCL.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(_NAME_ATTEMPTS):
        temp = path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(6)}")
        try:
            return os.open(temp, flags, mode), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path.parent))


def write_atomic(path: Path, data: bytes, *, mode: int | None = 0o644) -> None:
    """Replace the content of ``path`` with ``data`` atomically and durably.

    The directory of ``path`` must exist (callers create it with the mode they need).

    Args:
        path: The file to create or replace.
        data: Its complete new content.
        mode: Permission bits the file gets whatever the umask (``0o644``: readable by
            everyone, as the daemon's files are meant to be). ``None`` gives what ``open()``
            would: ``0o666`` less the process umask.

    Raises:
        OSError: The file cannot be written, synced or renamed; the temporary file is removed
            and ``path`` is unchanged.
    """
    fd, temp = _create_temp(path, _UMASKED_MODE if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)

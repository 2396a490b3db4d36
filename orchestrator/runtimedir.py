"""Make sure the runtime directory is the daemon's own before anything goes into it.

Runner sockets and pid files live there. Whoever can write in that directory can swap a
runner's socket (and read or forge prompts), plant a pid file for the start-up sweep to act on,
or plant symlinks where we write. Without ``XDG_RUNTIME_DIR`` (``sudo make run``) the default is
``/tmp/model-runner-<euid>``, a name any local user can create first. So the daemon checks the
directory once, at start-up, and refuses to run in one it cannot trust (house style 3.13:
"never trust a directory you did not create or do not own").

Rules, by where the path comes from:

- Default (``$XDG_RUNTIME_DIR/model-runner`` or ``/tmp/model-runner-<euid>``): created with
  mode 0700; an existing one must be a real directory (not a symlink) owned by our effective
  uid that no other user can write in, and is then narrowed to 0700 (earlier versions created
  it 0755: only we could write in it, so its content is ours; others just lose the right to
  list it).
- Explicit (``DMR_RUNTIME_DIR``, ``runtime_dir``): the same, except that an existing directory
  keeps its mode as long as group and others cannot write in it: systemd's
  ``RuntimeDirectory=`` with ``RuntimeDirectoryMode=0750`` is chosen by the operator (the group
  may read) and must keep working.
- Either way the parent must not let another user swap the directory out: it must belong to
  us or root (so must a symlink standing for it, such as ``/var/run``) and, if others can write
  in it, carry the sticky bit (``/tmp`` does). This catches ``sudo -E`` with the invoking
  user's ``XDG_RUNTIME_DIR``. Components further up are not checked.

Inside a directory that passes, only we can create, rename or delete entries, so later writes
by path are safe; the pid-file writer and the sweep still refuse symlinks and foreign files.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.settings import Config

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o700
# Group and others may not write: they could add, rename or delete entries.
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_OTHERS_ANY = stat.S_IRWXG | stat.S_IRWXO
_WHAT_TO_DO = (
    "remove it (if nothing of yours is in it) or set DMR_RUNTIME_DIR (or XDG_RUNTIME_DIR) to a "
    "directory of your own that others cannot write in"
)


def prepare_runtime_dir(config: Config) -> Path:
    """Create or check ``config.runtime_path`` for the daemon (see the module doc for the rules).

    Runs once at start-up, in the daemon's first process, before anything is written there.

    Returns:
        The runtime directory, ready for use.

    Raises:
        ConfigError: The directory (or its parent) could be controlled by another user, is a
            symlink or not a directory, or cannot be created.
    """
    return ensure_private_dir(config.runtime_path, explicit=bool(config.runtime_dir))


def ensure_private_dir(path: Path, *, explicit: bool) -> Path:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private.

    Args:
        path: The runtime directory.
        explicit: The user named it (``DMR_RUNTIME_DIR``): an existing directory may keep
            group/other read and search bits (systemd's ``RuntimeDirectoryMode=0750``). For the
            default location every group/other bit is removed.

    Returns:
        ``path``.

    Raises:
        ConfigError: ``path`` is a symlink, not a directory, owned by another user, writable
            by group or others, or its parent lets another user replace it; or it cannot be
            created. The message names the path, its owner and mode, and what to do.
    """
    path = Path(path)
    euid = os.geteuid()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_parent(path.parent, euid)
        try:
            # The mode is applied after the umask; _check_own_dir fixes it to exactly 0700.
            os.mkdir(path, PRIVATE_MODE)
            created = True
        except FileExistsError:
            created = False
        _check_own_dir(path, euid, created=created, explicit=explicit)
    except ConfigError:
        raise
    except OSError as ex:
        raise ConfigError(
            f"cannot prepare the runtime directory {str(path)!r}: {ex.strerror or ex}; "
            f"set DMR_RUNTIME_DIR to a directory this user can create",
            param="runtime_dir",
        ) from ex
    return path


def _check_parent(parent: Path, euid: int) -> None:
    # A link as the parent is fine when we or root made it (/var/run -> /run); one another
    # user made could be re-pointed at a directory of theirs.
    link = os.lstat(parent)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (euid, 0):
        raise _refusal(
            parent, link, euid,
            f"the parent of the runtime directory {str(parent)!r} is a symbolic link made by "
            f"{_describe_user(link.st_uid)}, who could re-point it",
        )
    # Then the directory it leads to: who may add, rename or delete entries in it.
    info = os.stat(parent)
    if info.st_uid not in (euid, 0):
        raise _refusal(
            parent, info, euid,
            f"the parent of the runtime directory {str(parent)!r} is owned by "
            f"{_describe_user(info.st_uid)}, who could replace the runtime directory in it",
        )
    if info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX:
        raise _refusal(
            parent, info, euid,
            f"the parent of the runtime directory {str(parent)!r} has mode "
            f"{_mode(info)}: other users may write in it and it has no sticky bit, so they "
            f"could replace the runtime directory",
        )


def _check_own_dir(path: Path, euid: int, *, created: bool, explicit: bool) -> None:
    # lstat first, for a message that says what is there instead of a bare ELOOP.
    found = os.lstat(path)
    if stat.S_ISLNK(found.st_mode):
        raise _refusal(
            path, found, euid,
            f"runtime directory {str(path)!r} is a symbolic link (to "
            f"{os.readlink(path)!r}, made by {_describe_user(found.st_uid)}); whoever can "
            f"re-point it controls where runner sockets go",
        )
    if not stat.S_ISDIR(found.st_mode):
        raise _refusal(path, found, euid, f"runtime directory {str(path)!r} is not a directory")
    # Decide on what is open, not on the name: O_NOFOLLOW refuses a symlink swapped in since.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as ex:
        if ex.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refusal(
                path, found, euid, f"runtime directory {str(path)!r} changed while checked"
            ) from ex
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid != euid:
            raise _refusal(
                path, info, euid,
                f"runtime directory {str(path)!r} is owned by {_describe_user(info.st_uid)} "
                f"with mode {_mode(info)}, not by this daemon's user "
                f"{_describe_user(euid)}; another user may have created it to intercept "
                f"runner sockets",
            )
        if created:
            os.fchmod(fd, PRIVATE_MODE)  # whatever the umask took away or left
        elif info.st_mode & _OTHERS_WRITE:
            raise _refusal(
                path, info, euid,
                f"runtime directory {str(path)!r} has mode {_mode(info)}: other users may "
                f"write in it, so they could swap runner sockets or plant pid files",
            )
        elif not explicit and info.st_mode & _OTHERS_ANY:
            os.fchmod(fd, PRIVATE_MODE)
            log.info("runtime directory made private path=%s was=%s", path, _mode(info))
    finally:
        os.close(fd)


def _refusal(path: Path, info: os.stat_result, euid: int, why: str) -> ConfigError:
    return ConfigError(
        f"{why}; {_WHAT_TO_DO}",
        param="runtime_dir",
        details={
            "path": str(path),
            "owner": _describe_user(info.st_uid),
            "mode": _mode(info),
            "daemon_user": _describe_user(euid),
        },
    )


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"


def _describe_user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"

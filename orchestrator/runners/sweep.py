"""Start-up sweep: kill runners a previous daemon left behind.

Gunicorn's ``_cleanup_orphaned_dirty_arbiter`` idea. Each runner writes
``<runtime>/runners/<id>.pid`` with its pid, create time and argv. If the daemon died without
stopping it (and the parent-death signal did not fire, e.g. the daemon was not SIGKILLed but
hung and was restarted), the next daemon finds the file and stops the process (SIGTERM to its
group, grace, SIGKILL).

A pid file is evidence, not an order: the sweep runs as the daemon's user (root under
``sudo``), so a planted file must not make it kill anything. It acts on a file only when it is
a regular file (never followed through a symlink) owned by our effective uid, and on the
process it names only when that process

- still has the recorded create time (a pid reused by another program never matches),
- runs as our effective uid, real and effective (a runner inherits both from the daemon),
- has the recorded argv as its command line, or at its end (an interpreter in front, for a
  script engine, or our ``pdeathsig.py`` wrapper before its ``exec``), and
- was a runner of this directory: that argv passes ``--host <this dir>/<id>.sock`` where
  ``<id>`` is the pid file's own name, as every runner we start does (``launch.py``).

Anything else is logged and left alone; a pid file of ours that names no runner is deleted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from orchestrator.runners.process import KILL_WAIT_SECONDS

log = logging.getLogger(__name__)

# Our pid files hold one short JSON object; anything larger is not one of them.
MAX_PID_FILE_BYTES = 1024 * 1024
# create_time() is rounded differently by the kernel's clock ticks and float formatting.
CREATE_TIME_TOLERANCE_SECONDS = 0.01


def _read_own_pid_file(pid_file: Path, euid: int) -> dict[str, Any] | None:
    """Return the record of a regular pid file that ``euid`` owns, else ``None`` (logged).

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``: a symlink is refused by
    the kernel, a FIFO cannot block the start-up, and the owner is that of what was opened.
    """
    try:
        fd = os.open(pid_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as ex:
        if ex.errno == errno.ELOOP:
            log.warning("ignoring pid file that is a symbolic link pid_file=%s", pid_file)
        elif ex.errno != errno.ENOENT:
            log.warning("cannot read pid file pid_file=%s error=%s", pid_file, ex)
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != euid:
            log.warning(
                "ignoring pid file not written by this user pid_file=%s owner_uid=%d "
                "regular_file=%s",
                pid_file, info.st_uid, stat.S_ISREG(info.st_mode),
            )
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_PID_FILE_BYTES + 1)
    except OSError as ex:
        log.warning("cannot read pid file pid_file=%s error=%s", pid_file, ex)
        return None
    finally:
        os.close(fd)
    try:
        record = json.loads(raw) if len(raw) <= MAX_PID_FILE_BYTES else None
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {}


def _is_our_runner_argv(argv: Sequence[str], socket_path: Path) -> bool:
    # Every runner is started with "--host <runners dir>/<id>.sock" (llamacpp.build_argv).
    return any(
        flag == "--host" and value == str(socket_path)
        for flag, value in zip(argv, argv[1:], strict=False)
    )


def _leftover_process(
    record: dict[str, Any], pid_file: Path, euid: int
) -> psutil.Process | None:
    """Return the runner ``record`` describes if it is still alive and ours, else ``None``."""
    try:
        pid = int(record["pid"])
        create_time = float(record["create_time"])
        argv = [str(part) for part in record["argv"]]
    except (KeyError, TypeError, ValueError):
        log.info("removing unreadable pid file pid_file=%s", pid_file)
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - create_time) > CREATE_TIME_TOLERANCE_SECONDS:
            log.info("runner of pid file already gone pid_file=%s pid=%d", pid_file, pid)
            return None
        uids = process.uids()
        cmdline = process.cmdline()
    except psutil.NoSuchProcess:
        log.info("runner of pid file already gone pid_file=%s pid=%d", pid_file, pid)
        return None
    except psutil.Error as ex:
        log.warning("ignoring pid file pid_file=%s pid=%d error=%s", pid_file, pid, ex)
        return None
    socket_path = pid_file.with_suffix(".sock")
    reasons = []
    if (uids.real, uids.effective) != (euid, euid):
        reasons.append(f"it runs as uid {uids.effective}, not {euid}")
    if not argv or cmdline[-len(argv):] != argv:
        reasons.append("its command line is not the recorded one")
    if not _is_our_runner_argv(argv, socket_path):
        reasons.append(f"the recorded command line does not serve on {str(socket_path)!r}")
    if reasons:
        # A live process with the recorded create time, yet not our runner: planted or forged.
        log.warning(
            "ignoring pid file naming a process that is not a runner of ours pid_file=%s "
            "pid=%d cmdline=%r why=%s",
            pid_file, pid, cmdline, "; ".join(reasons),
        )
        return None
    return process


def sweep_leftovers(runtime_dir: Path, grace_seconds: float) -> int:
    """Kill runners a previous daemon left behind; return how many were killed.

    For each ``<runtime_dir>/*.pid`` this user wrote whose process is still a runner of ours
    (see the module doc), stop its group (SIGTERM, ``grace_seconds``, SIGKILL). Our pid files
    are deleted afterwards, as are our stale sockets; files of other users and symlinks are
    logged and left in place.
    """
    runtime_dir = Path(runtime_dir)
    euid = os.geteuid()
    victims: list[psutil.Process] = []
    for pid_file in sorted(runtime_dir.glob("*.pid")):
        record = _read_own_pid_file(pid_file, euid)
        if record is None:
            continue
        process = _leftover_process(record, pid_file, euid)
        if process is not None:
            log.warning("killing leftover runner pid=%d pid_file=%s", process.pid, pid_file)
            _signal_leftover(process, signal.SIGTERM)
            victims.append(process)
        pid_file.unlink(missing_ok=True)
    if victims:
        _gone, alive = psutil.wait_procs(victims, timeout=grace_seconds)
        for process in alive:
            _signal_leftover(process, signal.SIGKILL)
        _gone, alive = psutil.wait_procs(alive, timeout=KILL_WAIT_SECONDS)
        for process in alive:
            log.critical("leftover runner survived SIGKILL pid=%d", process.pid)
    for stale in runtime_dir.glob("*.sock"):
        _remove_own_socket(stale, euid)
    return len(victims)


def _remove_own_socket(path: Path, euid: int) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != euid:
        log.warning(
            "leaving a .sock entry that is not a socket of ours path=%s owner_uid=%d",
            path, info.st_uid,
        )
        return
    path.unlink(missing_ok=True)


def _signal_leftover(process: psutil.Process, signum: signal.Signals) -> None:
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    except (PermissionError, psutil.AccessDenied) as ex:
        log.error("cannot signal leftover runner pid=%d error=%s", process.pid, ex)

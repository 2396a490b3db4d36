"""Logging: the daemon log, per-runner engine logs, and reading them back.

Every line the daemon writes starts with ``[<UTC RFC3339 with 9 fraction digits>] `` as DMR's
do (``dmr-spec.md`` section 5.2), then ``level=<level> logger=<name>`` and the message, which by
house style is a lowercase event followed by ``key=value`` pairs. Lines go to stderr (journald,
``docker logs``) and to ``<log dir>/inference.log``.

Each runner's llama-server writes straight into ``<log dir>/engine-<model short id>-<mode>.log``
(a file, not a pipe: a full pipe blocks the child). Its own lines carry no bracket timestamp; the
daemon writes a timestamped line into that file when it starts and when it reaps the runner.
:func:`read_entries` gives every line a timestamp, un-prefixed lines inheriting the one before,
so ``/logs`` can merge all files chronologically.

We always print nine fraction digits (Go trims trailing zeros) so that timestamps sort as text.

Size caps (``log_max_size``, ``log_backups``): every file here is rotated in-process when it
reaches the cap, to ``<name>.log.1`` (the newest) ... ``<name>.log.<backups>``, so a busy or
long-running daemon cannot fill the disk without logrotate. The two kinds need two methods:

* the daemon log is ours: :class:`CappedFileHandler` renames it away and reopens. gunicorn's
  master and worker both write it, each through its own handler; a rotation happens under an
  ``flock`` on the file and only if the path still names the full file, and every handler
  reopens the path when it no longer names the file it holds (as ``WatchedFileHandler`` does),
  so two processes never rotate twice or keep writing into ``.1``;
* an engine log is written by llama-server through a descriptor it inherited, which nothing can
  reopen for it: :func:`rotate_in_place` copies the file to ``.1`` and truncates it in place
  ("copytruncate"). The descriptor is ``O_APPEND`` (opened ``"ab"``), so the engine's next write
  lands at the new end of file, not at its old offset; a line written between the copy and the
  truncation is lost, a window of microseconds. A pipe read by the daemon would bound the file
  exactly, but llama-server would then block whenever the daemon does not drain the pipe (and
  die with it); the file keeps the engine independent of the daemon. The daemon log's handler
  checks the engine logs of its directory every :data:`ENGINE_CHECK_SECONDS` while it writes
  (every request writes an access line), and once when logging is set up.

The packaged service adds /etc/logrotate.d/docker-model-runner (weekly, compressed, ``dateext``
names that never collide with these ``.log.N`` ones, ``copytruncate``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import logging.handlers
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO, cast

from orchestrator.errors import ConfigError

DAEMON_LOG_NAME = "inference.log"
ENGINE_LOG_PREFIX = "engine-"
_HANDLER_TAG = "_orchestrator_handler"
_TAIL_BLOCK_BYTES = 8192
_TIMESTAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z)\] ")
ZERO_TIME = "0001-01-01T00:00:00Z"
# Defaults of the log_max_size and log_backups settings (tests check that they agree).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_BACKUPS = 3
# How often, at most, the daemon log's handler looks at the engine logs' sizes.
ENGINE_CHECK_SECONDS = 5.0
_COPY_CHUNK_BYTES = 1 << 20


def format_timestamp(ns: int | None = None) -> str:
    """Return ``ns`` (default now, ns since the epoch) as UTC RFC3339 with nine fraction digits."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{_whole_seconds(seconds)}.{fraction:09d}Z"


@functools.lru_cache(maxsize=4)
def _whole_seconds(seconds: int) -> str:
    # Every log line formats a time; lines come in bursts within the same second, and
    # strftime was a visible share of the access log's cost per request (issue 18).
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_rfc3339(seconds: float) -> str:
    """Return wall-clock ``seconds`` as RFC3339 UTC without fraction (``last_used``)."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(line: str) -> int | None:
    """Return the ns-since-epoch of a line's ``[timestamp] `` prefix, or ``None``."""
    match = _TIMESTAMP.match(line)
    if match is None:
        return None
    text = match.group(1)[:-1]
    whole, _, fraction = text.partition(".")
    parsed = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


class LineFormatter(logging.Formatter):
    """``[timestamp] level=info logger=name message``; continuation lines are indented."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one prefixed line (plus indented traceback lines)."""
        # The console and the log file both format each record: once is enough.
        cached = record.__dict__.get("_dmr_line")
        if cached is not None:
            return cast(str, cached)
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        stamp = format_timestamp(int(record.created * 1_000_000_000))
        first, *rest = message.splitlines() or [""]
        line = f"[{stamp}] level={record.levelname.lower()} logger={record.name} {first}"
        if rest:
            line = "\n".join([line, *("    " + extra for extra in rest)])
        record.__dict__["_dmr_line"] = line
        return line


def backup_path(path: Path, number: int) -> Path:
    """Return rotated copy ``number`` of ``path`` (``inference.log.1`` is the newest)."""
    return path.with_name(f"{path.name}.{number}")


def _shift_backups(path: Path, backups: int) -> None:
    """Rename ``.1`` .. ``.<backups - 1>`` one number up; the oldest is replaced."""
    for number in range(backups - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(backup_path(path, number), backup_path(path, number + 1))


def _copy_to_backup(fd: int, path: Path, mode: int) -> None:
    """Write the content of ``fd`` (from byte 0) to ``<path>.1`` (``mode``) via a temp file."""
    target = backup_path(path, 1)
    temp_fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.tmp-")
    try:
        os.fchmod(temp_fd, mode)
        with open(fd, "rb", closefd=False) as source, open(temp_fd, "wb") as temp:
            source.seek(0)
            shutil.copyfileobj(source, temp, _COPY_CHUNK_BYTES)
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def rotate_in_place(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy ``path`` to ``<path>.1`` and truncate it, if it holds ``max_bytes`` or more.

    For a log that another process writes through its own ``O_APPEND`` descriptor (an engine
    log): renaming it would not stop that process writing into the renamed file. With
    ``backups`` 0 the file is only emptied. A file another caller is rotating right now (an
    ``flock`` is held) is left to it; links and non-regular files are never touched.

    Returns:
        Whether the file was rotated.

    Raises:
        OSError: The copy or the truncation failed (the file is then left as it was, or
            rotated without its last lines if only the truncation failed).
    """
    if max_bytes <= 0:
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # gone, a link, or not ours
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size < max_bytes:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Re-read under the lock: the previous holder may have emptied it a moment ago.
        if os.fstat(fd).st_size < max_bytes:
            return False
        if backups > 0:
            _shift_backups(path, backups)
            _copy_to_backup(fd, path, stat.S_IMODE(info.st_mode))
        os.ftruncate(fd, 0)
        return True
    finally:
        os.close(fd)  # releases the flock


class EngineLogCap:
    """Keeps every engine log of a directory under a size, rotating in place.

    Args:
        log_dir: The log directory.
        max_bytes: Rotate a log once it holds this many bytes; 0 turns the cap off.
        backups: Rotated copies kept of each log.
        interval: :meth:`maybe_enforce` looks at most this often (seconds).
        clock: Monotonic clock (a seam for tests).
    """

    def __init__(
        self,
        log_dir: Path,
        max_bytes: int,
        backups: int,
        *,
        interval: float = ENGINE_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.max_bytes = max_bytes
        self.backups = backups
        self.interval = interval
        self._clock = clock
        self._last_check: float | None = None
        self._busy = threading.Lock()

    def maybe_enforce(self) -> None:
        """Run :meth:`enforce` if the last run is :attr:`interval` seconds old; never raise."""
        now = self._clock()
        last = self._last_check
        if last is not None and now - last < self.interval:
            return
        if not self._busy.acquire(blocking=False):
            return
        try:
            self._last_check = now
            self.enforce()
        except OSError:
            # NOTE(logs): called from a logging handler, which must not log (it would re-enter
            # itself); a failed rotation is retried at the next interval.
            pass
        finally:
            self._busy.release()

    def enforce(self) -> list[Path]:
        """Rotate every engine log over the cap; return the ones rotated.

        Raises:
            OSError: A copy or truncation failed (the logs before it are rotated).
        """
        if self.max_bytes <= 0:
            return []
        return [
            path
            for path in sorted(self.log_dir.glob(f"{ENGINE_LOG_PREFIX}*.log"))
            if rotate_in_place(path, self.max_bytes, self.backups)
        ]


class CappedFileHandler(logging.handlers.WatchedFileHandler):
    """Appends to a log file, rotating it when it reaches ``max_bytes`` (see the module doc).

    Like ``WatchedFileHandler``, it reopens the path before each record when the path no longer
    names the file it holds (logrotate, or another process's rotation). Unlike
    ``RotatingFileHandler``, it works when several processes write the file: a rotation happens
    under an ``flock`` of the full file, and only while the path still names it.

    Args:
        path: The log file.
        max_bytes: Rotate once the file holds this many bytes; 0 never rotates.
        backups: Rotated copies kept; 0 empties a full file instead.
        engine_logs: Also keeps these engine logs under their cap, checked after a write.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        backups: int,
        engine_logs: EngineLogCap | None = None,
    ) -> None:
        super().__init__(path, encoding="utf-8")
        self.max_bytes = max_bytes
        self.backups = backups
        self.engine_logs = engine_logs

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record``, rotating the file first if it is full."""
        try:
            self.reopenIfNeeded()
            if self.max_bytes > 0 and self.stream is not None:
                info = os.fstat(self.stream.fileno())
                if stat.S_ISREG(info.st_mode) and info.st_size >= self.max_bytes:
                    self._rotate()
        except OSError:
            self.handleError(record)
        logging.FileHandler.emit(self, record)
        if self.engine_logs is not None:
            self.engine_logs.maybe_enforce()

    def _rotate(self) -> None:
        """Rotate the file if the path still names the one this handler writes (see above)."""
        path = Path(self.baseFilename)
        # The lock goes on a descriptor of our own: gunicorn's worker inherits the master's
        # (one open file description, one flock), so locking the stream would exclude nobody.
        try:
            lock_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            lock_fd = None
        if lock_fd is not None:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                # Another process may have rotated it while we waited: then the path names a
                # new, small file (or the lock is on the old one), and we only reopen.
                held = os.fstat(lock_fd)
                try:
                    named: os.stat_result | None = os.stat(path)
                except FileNotFoundError:
                    named = None  # renamed away since we opened it
                ours = (self.dev, self.ino)
                if (
                    named is not None
                    and (held.st_dev, held.st_ino) == ours == (named.st_dev, named.st_ino)
                    and named.st_size >= self.max_bytes
                ):
                    if self.backups > 0:
                        _shift_backups(path, self.backups)
                        os.replace(path, backup_path(path, 1))
                    else:
                        os.truncate(path, 0)
            finally:
                os.close(lock_fd)  # releases the flock
        self.reopenIfNeeded()


def setup_logging(
    log_dir: Path,
    level: str = "info",
    *,
    stream: TextIO | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
) -> Path:
    """Send the ``orchestrator`` loggers to stderr and ``<log_dir>/inference.log``.

    Idempotent: handlers installed by an earlier call are replaced, not duplicated. The file
    handler reopens the file when it is rotated away and rotates it at ``max_bytes``
    (:class:`CappedFileHandler`); the engine logs beside it get the same cap, rotated in place
    (:class:`EngineLogCap`), once now and then as the daemon writes.

    Args:
        log_dir: The log directory (created if missing).
        level: debug, info, warning or error.
        stream: Where the console copy goes (default stderr).
        max_bytes: The ``log_max_size`` setting; 0 never rotates.
        backups: The ``log_backups`` setting.

    Returns:
        The daemon log file path.

    Raises:
        ConfigError: ``level`` is not debug, info, warning or error.
    """
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ConfigError(
            f"unknown log level {level!r}; use one of 'debug', 'info', 'warning' or 'error'",
            param="log_level",
        )
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / DAEMON_LOG_NAME
    logger = logging.getLogger("orchestrator")
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            logger.removeHandler(handler)
            handler.close()
    engine_logs = EngineLogCap(log_dir, max_bytes, backups)
    engine_logs.maybe_enforce()
    formatter = LineFormatter()
    handlers: list[logging.Handler] = [
        logging.StreamHandler(stream if stream is not None else sys.stderr),
        CappedFileHandler(path, max_bytes=max_bytes, backups=backups, engine_logs=engine_logs),
    ]
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_TAG, True)
        logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
    return path


def engine_log_path(log_dir: Path, model_short_id: str, mode: str) -> Path:
    """Return the engine log file of one model in one mode."""
    return Path(log_dir) / f"{ENGINE_LOG_PREFIX}{model_short_id}-{mode}.log"


def append_line(path: Path, text: str) -> None:
    """Append one ``[timestamp] text`` line to ``path`` (used for engine log markers).

    Errors are logged, not raised: a full disk must not stop a runner from starting or
    stopping.
    """
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"[{format_timestamp()}] {text}\n")
    except OSError as ex:
        logging.getLogger(__name__).warning("cannot write log path=%s error=%s", path, ex)


def tail(path: Path, lines: int = 40, *, start: int = 0) -> list[str]:
    """Return the last ``lines`` lines of ``path`` (without newlines; ``[]`` if missing).

    Reads backwards in blocks, so a large log costs only what is returned.

    Args:
        path: The file.
        lines: How many lines at most.
        start: Ignore everything before this byte offset (the start of one run's output);
            when the file is shorter than that now, it was rotated in place and is read whole.
    """
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            if start > position:
                # Truncated since ``start`` was taken (rotate_in_place): all of it is newer.
                start = 0
            data = b""
            while position > start and data.count(b"\n") <= lines:
                step = min(_TAIL_BLOCK_BYTES, position - start)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def log_files(log_dir: Path) -> list[Path]:
    """Return the daemon log then every engine log in ``log_dir`` (sorted), existing ones only."""
    log_dir = Path(log_dir)
    files = [log_dir / DAEMON_LOG_NAME] if (log_dir / DAEMON_LOG_NAME).is_file() else []
    files += sorted(
        path for path in log_dir.glob(f"{ENGINE_LOG_PREFIX}*.log") if path.is_file()
    )
    return files


def read_entries(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(ns timestamp, line)`` for every line of ``path``.

    A line without a bracket timestamp (llama-server's own output, traceback lines) gets the
    timestamp of the line before it; lines before the first timestamp get the first one found
    (the file's mtime if there is none), so files merge chronologically with ``heapq.merge``.
    """
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError:
        return
    with handle:
        current: int | None = None
        leading: list[str] = []
        for raw in handle:
            line = raw.rstrip("\n")
            stamp = parse_timestamp(line)
            if stamp is not None:
                current = stamp
            if current is None:
                leading.append(line)
                continue
            for early in leading:
                yield current, early
            leading.clear()
            yield current, line
        if leading:
            try:
                mtime = int(os.fstat(handle.fileno()).st_mtime_ns)
            except OSError:
                mtime = 0
            for early in leading:
                yield mtime, early

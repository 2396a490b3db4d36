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
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from orchestrator.errors import ConfigError

DAEMON_LOG_NAME = "inference.log"
ENGINE_LOG_PREFIX = "engine-"
_HANDLER_TAG = "_orchestrator_handler"
_TAIL_BLOCK_BYTES = 8192
_TIMESTAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z)\] ")
ZERO_TIME = "0001-01-01T00:00:00Z"


def format_timestamp(ns: int | None = None) -> str:
    """Return ``ns`` (default now, ns since the epoch) as UTC RFC3339 with nine fraction digits."""
    if ns is None:
        ns = time.time_ns()
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


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
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        stamp = format_timestamp(int(record.created * 1_000_000_000))
        first, *rest = message.splitlines() or [""]
        line = f"[{stamp}] level={record.levelname.lower()} logger={record.name} {first}"
        return "\n".join([line, *("    " + extra for extra in rest)])


def setup_logging(log_dir: Path, level: str = "info", *, stream: TextIO | None = None) -> Path:
    """Send the ``orchestrator`` loggers to stderr and ``<log_dir>/inference.log``.

    Idempotent: handlers installed by an earlier call are replaced, not duplicated. The file
    handler reopens the file when it is rotated away (``WatchedFileHandler``).

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
    formatter = LineFormatter()
    handlers: list[logging.Handler] = [
        logging.StreamHandler(stream if stream is not None else sys.stderr),
        logging.handlers.WatchedFileHandler(path, encoding="utf-8"),
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
        start: Ignore everything before this byte offset (the start of one run's output).
    """
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
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

"""``GET /logs?follow=&no-engines=``: the daemon log and the engine logs, merged by time.

Lines are ordered by their ``[timestamp] `` prefix (lines without one inherit the previous
line's, see :func:`orchestrator.logfiles.read_entries`). ``follow=true`` keeps the response open
and polls the files every half second for new complete lines (and new engine log files); the
poll ends when the client has gone, which gunicorn's socket tells us even while the log is
quiet.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import socket
import time
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import falcon

from orchestrator.api.body import query_bool
from orchestrator.errors import NotFoundError, NotSupportedError
from orchestrator.logfiles import (
    DAEMON_LOG_NAME,
    ENGINE_LOG_PREFIX,
    log_files,
    parse_timestamp,
)

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
MAX_CHUNK_BYTES = 64 * 1024


class LogFile:
    """Incremental reader of one log file: yields new complete lines with timestamps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.stamp: int | None = None

    def entries(self) -> Iterator[tuple[int, str]]:
        """Yield ``(ns, line)`` for complete lines added since the last call."""
        try:
            with open(self.path, "rb") as handle:
                yield from self._read(handle)
        except OSError:
            return

    def _read(self, handle: BinaryIO) -> Iterator[tuple[int, str]]:
        info = os.fstat(handle.fileno())
        if info.st_size < self.offset:
            # Truncated or replaced: start over.
            self.offset = 0
        if self.stamp is None:
            self.stamp = min(int(info.st_mtime_ns), time.time_ns())
        handle.seek(self.offset)
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # a line still being written; read it next time
            self.offset += len(raw)
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            stamp = parse_timestamp(line)
            if stamp is not None:
                self.stamp = stamp
            yield self.stamp or 0, line


def client_gone(env: dict[str, Any]) -> bool:
    """Return whether the client closed its connection (gunicorn only; else ``False``)."""
    sock = env.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _chunks(lines: Iterator[tuple[int, str]]) -> Iterator[bytes]:
    batch: list[str] = []
    size = 0
    for _stamp, line in lines:
        batch.append(line)
        size += len(line) + 1
        if size >= MAX_CHUNK_BYTES:
            yield ("\n".join(batch) + "\n").encode()
            batch, size = [], 0
    if batch:
        yield ("\n".join(batch) + "\n").encode()


class LogsResource:
    """``GET /logs``: merged logs as ``text/plain``; ``follow`` streams new lines."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        follow = query_bool(req, "follow")
        no_engines = query_bool(req, "no-engines")
        log_dir = self.ctx.config.log_path
        if not log_dir.is_dir():
            raise NotSupportedError(
                f"the log directory {str(log_dir)!r} does not exist; set MODEL_RUNNER_LOG_DIR"
            )
        if not (log_dir / DAEMON_LOG_NAME).is_file():
            raise NotFoundError(f"service log not found in {str(log_dir)!r}")
        files = {path: LogFile(path) for path in log_files(log_dir)}
        if no_engines:
            files = {path: reader for path, reader in files.items() if path.name == DAEMON_LOG_NAME}
        resp.content_type = "text/plain; charset=utf-8"
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = self._stream(req.env, log_dir, files, follow, no_engines)

    def _stream(
        self,
        env: dict[str, Any],
        log_dir: Path,
        files: dict[Path, LogFile],
        follow: bool,
        no_engines: bool,
    ) -> Iterator[bytes]:
        merged = heapq.merge(*(reader.entries() for reader in files.values()), key=itemgetter(0))
        yield from _chunks(merged)
        while follow:
            time.sleep(POLL_SECONDS)
            if client_gone(env):
                return
            if not no_engines:
                for path in log_dir.glob(f"{ENGINE_LOG_PREFIX}*.log"):
                    if path not in files:
                        files[path] = LogFile(path)
            batch = sorted(
                (entry for reader in files.values() for entry in reader.entries()),
                key=itemgetter(0),
            )
            yield from _chunks(iter(batch))

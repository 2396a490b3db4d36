"""Run a long job (pull, push, export) in a thread and stream what it emits to the client.

The job gets an ``emit(bytes)`` callback. The request thread waits for the job's first output:
if the job fails before emitting anything, :meth:`BackgroundStream.wait_first` raises its error
so the client gets a proper JSON error status; otherwise the stream becomes ``resp.stream`` and
a later failure is turned into a last chunk by ``on_error`` (a ``{"type":"error"}`` progress
line for pulls, nothing for a tar, whose cut is the signal).

When the client goes away, gunicorn closes the stream; the next ``emit`` in the job raises
:class:`StreamCancelled`, which unwinds the job (an aborted pull keeps its partial blobs for
resuming). The queue is bounded, so a slow client slows the job instead of filling memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

_DONE = object()
_POLL_SECONDS = 0.5
# How long a job may block on a full queue (a client that stopped reading) before giving up.
STALLED_CLIENT_SECONDS = 600.0


class StreamCancelled(Exception):
    """The client of a streamed response went away; raised inside the job by ``emit``."""


class BackgroundStream:
    """A job in a thread whose output is a response body.

    Args:
        job: Called in the thread with the ``emit`` callback.
        name: Thread name (for logs).
        on_error: Turns an exception raised after the first chunk into a last chunk
            (``None``: end the stream without one).
        max_chunks: Queue bound (back-pressure).
    """

    def __init__(
        self,
        job: Callable[[Callable[[bytes], None]], None],
        *,
        name: str,
        on_error: Callable[[BaseException], bytes | None] | None = None,
        on_exit: Callable[[], None] | None = None,
        max_chunks: int = 64,
    ) -> None:
        self._job = job
        self._on_error = on_error
        self._on_exit = on_exit
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_chunks)
        self._cancelled = threading.Event()
        self._first = threading.Event()
        self._error: BaseException | None = None
        self._emitted = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> BackgroundStream:
        """Start the job thread; returns ``self``."""
        self._thread.start()
        return self

    def emit(self, chunk: bytes) -> None:
        """Queue one chunk for the client (called by the job).

        Raises:
            StreamCancelled: The client went away or stopped reading for too long.
        """
        deadline = time.monotonic() + STALLED_CLIENT_SECONDS
        while True:
            if self._cancelled.is_set():
                raise StreamCancelled("the client closed the connection")
            try:
                self._queue.put(chunk, timeout=_POLL_SECONDS)
                self._emitted = True
                self._first.set()
                return
            except queue.Full:
                if time.monotonic() >= deadline:
                    self._cancelled.set()
                    raise StreamCancelled("the client stopped reading") from None

    def _run(self) -> None:
        try:
            self._job(self.emit)
        except StreamCancelled:
            log.info("streamed job cancelled thread=%s", self._thread.name)
        except BaseException as ex:  # noqa: BLE001 - handed to the request thread
            self._error = ex
        finally:
            self._first.set()
            if self._on_exit is not None:
                self._on_exit()
            self._put_done()

    def _put_done(self) -> None:
        while not self._cancelled.is_set():
            try:
                self._queue.put(_DONE, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def wait_first(self, timeout: float) -> None:
        """Wait until the job emits, ends, or ``timeout`` passes.

        Raises:
            BaseException: The job's own exception when it failed before emitting anything.
        """
        self._first.wait(timeout)
        if self._error is not None and not self._emitted:
            self._thread.join(timeout=_POLL_SECONDS)
            raise self._error

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        break
                    continue
                if item is _DONE:
                    break
                yield item  # type: ignore[misc]
            if self._error is not None and self._on_error is not None:
                last = self._on_error(self._error)
                if last:
                    yield last
        finally:
            self.close()

    def close(self) -> None:
        """Stop feeding the client; the job stops at its next ``emit``."""
        self._cancelled.set()

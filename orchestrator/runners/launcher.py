"""The one thread every runner is spawned from.

Linux sends the parent-death signal (``PR_SET_PDEATHSIG``, set by ``pdeathsig.py``) when the
*thread* that forked the child exits, not when the process does. Gunicorn's request threads
and our tests' threads come and go, so a runner forked from one of them would be SIGKILLed as
soon as that thread ended. Every ``Popen`` therefore runs on a :class:`Launcher` thread that
lives until the scheduler has stopped every runner.
"""

from __future__ import annotations

import concurrent.futures
import queue
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from orchestrator.errors import ServiceUnavailableError

POPEN_TIMEOUT_SECONDS = 30.0


class Launcher:
    """Run every ``Popen`` on one long-lived thread.

    ``PR_SET_PDEATHSIG`` fires when the thread that forked the child exits. Request threads
    come and go; this one lives until :meth:`close`, which the scheduler calls only after every
    runner is stopped.
    """

    def __init__(self) -> None:
        """Create the launcher; its thread starts on first use."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            argv, kwargs, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as ex:  # noqa: BLE001 - handed to the caller, which re-raises it
                future.set_exception(ex)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` on the launcher thread and return its ``Popen``.

        Raises:
            ServiceUnavailableError: The launcher is closed (the daemon is shutting down).
            OSError: ``Popen`` failed (missing or non-executable program).
        """
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise ServiceUnavailableError(
                    "the daemon is shutting down and starts no runners; retry after it restarts"
                )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="runner-launcher", daemon=True
                )
                self._thread.start()
            self._queue.put((list(argv), kwargs, future))
        return future.result(timeout=POPEN_TIMEOUT_SECONDS)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the launcher thread (idempotent); later :meth:`popen` calls fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join(timeout)

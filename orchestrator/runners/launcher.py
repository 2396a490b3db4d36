"""The one thread every runner is spawned from, and the wrapper it keeps ready.

Linux sends the parent-death signal (``PR_SET_PDEATHSIG``, set by ``pdeathsig.py``) when the
*thread* that forked the child exits, not when the process does. Gunicorn's request threads
and our tests' threads come and go, so a runner forked from one of them would be SIGKILLed as
soon as that thread ended. Every ``Popen`` therefore runs on a :class:`Launcher` thread that
lives until the scheduler has stopped every runner.

The wrapper is a Python interpreter: starting one takes about 20 ms of CPU, which a runner
start would otherwise spend between the request and llama-server's ``exec``. The launcher
therefore keeps one wrapper started ahead (:meth:`Launcher.prepare`), waiting in
``pdeathsig.py --wait`` for its command; :meth:`Launcher.start_prepared` hands it the runner's
command line and it ``exec``'s at once. Without a spare ready, a runner starts the old way.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

POPEN_TIMEOUT_SECONDS = 30.0
SPARE_EXIT_SECONDS = 2.0
"""How long :meth:`Launcher.close` waits for an unused spare to leave on end of input."""
WRAPPER = Path(__file__).with_name("pdeathsig.py")


def wrapped(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` behind the parent-death wrapper (``pdeathsig.py <our pid> -- argv``)."""
    return [sys.executable, "-I", "-S", str(WRAPPER), str(os.getpid()), "--", *argv]


def _spare_argv() -> list[str]:
    return [sys.executable, "-I", "-S", str(WRAPPER), str(os.getpid()), "--wait"]


class Launcher:
    """Run every ``Popen`` on one long-lived thread; keep one wrapper started ahead.

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
        self._spare: subprocess.Popen[bytes] | None = None  # guarded by _lock
        self._preparing = False  # guarded by _lock

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if item == "spare":
                self._start_spare()
                continue
            argv, kwargs, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as ex:  # noqa: BLE001 - handed to the caller, which re-raises it
                future.set_exception(ex)

    def _start_spare(self) -> None:
        """Start the waiting wrapper (on the launcher thread, like every runner)."""
        try:
            spare: subprocess.Popen[bytes] | None = subprocess.Popen(
                _spare_argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as ex:
            log.warning("cannot start a spare runner wrapper error=%s", ex)
            spare = None
        with self._lock:
            self._preparing = False
            if not self._closed and spare is not None:
                self._spare, spare = spare, None
        if spare is not None:  # closed meanwhile
            _dismiss(spare)

    def _submit_locked(self, item: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="runner-launcher", daemon=True)
            self._thread.start()
        self._queue.put(item)

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
            self._submit_locked((list(argv), kwargs, future))
        return future.result(timeout=POPEN_TIMEOUT_SECONDS)

    def prepare(self) -> None:
        """Start a spare wrapper in the background unless one is ready (non-blocking)."""
        with self._lock:
            if self._closed or self._preparing or self._spare is not None:
                return
            self._preparing = True
            self._submit_locked("spare")

    def start_prepared(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes] | None:
        """Hand ``argv`` to the spare wrapper, which ``exec``'s it; return its ``Popen``.

        The process appends its output to ``log_path``, runs in ``cwd`` with ``env`` (``None``:
        the daemon's environment) and reads ``/dev/null``, as :meth:`popen` would set it up.

        Returns:
            The runner's ``Popen``, or ``None`` when no spare is ready (start it with
            :meth:`popen`).

        Raises:
            ServiceUnavailableError: The launcher is closed (the daemon is shutting down).
        """
        with self._lock:
            if self._closed:
                raise ServiceUnavailableError(
                    "the daemon is shutting down and starts no runners; retry after it restarts"
                )
            spare, self._spare = self._spare, None
        if spare is None or spare.stdin is None:
            return None
        command = {
            "argv": list(argv),
            "cwd": str(cwd),
            "log": str(log_path),
            # The environment as it is now, not as it was when the spare started.
            "env": dict(os.environ if env is None else env),
        }
        try:
            if spare.poll() is not None:
                raise BrokenPipeError("the spare wrapper exited")
            spare.stdin.write(json.dumps(command).encode("utf-8") + b"\n")
            spare.stdin.close()
        except OSError as ex:
            # Killed from outside while it waited: start this runner the old way.
            log.warning("spare runner wrapper unusable pid=%d error=%s", spare.pid, ex)
            _dismiss(spare)
            return None
        return spare

    def close(self, timeout: float = 5.0) -> None:
        """Stop the launcher thread and any spare (idempotent); later starts fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            spare, self._spare = self._spare, None
        if spare is not None:
            # Before the thread ends: its end would SIGKILL the spare (parent-death signal).
            _dismiss(spare)
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout)


def _dismiss(spare: subprocess.Popen[bytes]) -> None:
    """End an unused spare: end of input (it exits 0), then SIGKILL if it lingers; reap it."""
    try:
        if spare.stdin is not None:
            spare.stdin.close()
        spare.wait(SPARE_EXIT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        spare.kill()
        try:
            spare.wait(SPARE_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("spare runner wrapper not reaped after SIGKILL pid=%d", spare.pid)

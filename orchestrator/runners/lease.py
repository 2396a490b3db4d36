"""What a request holds: a :class:`Lease` on a ready runner.

The lease knows nothing of the scheduler: it holds the two callbacks the scheduler gave it
(give the runner back; report that the connection died), so this module imports no part of
the scheduling machinery and every call goes one way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from orchestrator.runners.info import RunnerInfo


class Lease:
    """One request's hold on a ready runner; a context manager.

    Attributes:
        runner: Facts about the runner.
        socket_path: Unix socket of the runner's llama-server.
    """

    def __init__(
        self,
        runner: RunnerInfo,
        *,
        release: Callable[[], None],
        report_crash: Callable[[], None],
    ) -> None:
        """Hold a runner whose reference the scheduler already counted."""
        self.runner = runner
        self.socket_path: str = runner.socket_path
        self._release = release
        self._report_crash = report_crash
        self._released = False
        self._release_lock = threading.Lock()

    def release(self) -> None:
        """Give the runner back (idempotent); at zero leases its idle clock starts."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        self._release()

    def report_crash(self) -> None:
        """Tell the scheduler the connection to the runner died mid-request.

        The scheduler checks the process: if it exited, the runner is dropped at once so the
        next request starts a fresh one (the lease still needs :meth:`release`).
        """
        self._report_crash()

    def __enter__(self) -> Self:
        """Return the lease itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the lease."""
        self.release()

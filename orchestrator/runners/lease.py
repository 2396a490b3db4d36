"""What a request holds: a :class:`Lease` on a runner, and the table entry behind it.

:class:`RunnerEntry` is the scheduler's record of one runner (process, reference count, idle
clock, the event waiters block on while it loads). Its fields are guarded by the scheduler's
lock; only the scheduler changes them.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self

from orchestrator.errors import OrchestratorError
from orchestrator.runners.info import RunnerInfo
from orchestrator.runners.process import RunnerProcess

if TYPE_CHECKING:
    from orchestrator.memory.footprint import Footprint
    from orchestrator.runners.admission import RunnerPlan
    from orchestrator.runners.scheduler import Scheduler


class RunnerEntry:
    """A table entry: the process plus scheduling state (guarded by the scheduler lock)."""

    def __init__(self, *, runner_id: str, model_id: str, model_name: str, mode: str) -> None:
        """Create a loading entry with no process yet."""
        self.runner_id = runner_id
        self.model_id = model_id
        self.model_name = model_name
        self.mode = mode
        self.key = (model_id, mode)
        self.process: RunnerProcess | None = None
        self.info: RunnerInfo | None = None
        self.keep_alive = 0.0
        self.refcount = 0
        self.loading = True
        self.done = threading.Event()
        self.error: OrchestratorError | None = None
        self.last_used: float | None = None  # wall clock, for display
        self.idle_since: float | None = None  # monotonic, for the keep-alive deadline
        self.removed = False
        # Memory and eviction policy (see orchestrator.runners.policy).
        self.plan: RunnerPlan | None = None
        self.pinned = False
        self.default_model = False
        self.slots = 1
        self.started = time.monotonic()  # reset when ready; min residency counts from it
        self.last_used_mono = self.started  # LRU order for evictions
        self.measured: Footprint | None = None
        self.peak_rss = 0
        self.peak_vram = 0
        self.measured_at: float | None = None  # monotonic, rate-limits measurements

    @property
    def label(self) -> str:
        """Return ``'model' (mode)`` for messages."""
        return f"{self.model_name!r} ({self.mode})"

    @property
    def is_defunct(self) -> bool:
        """Return whether the process was spawned and has exited."""
        return self.process is not None and self.process.exited.is_set()


def copy_error(error: OrchestratorError) -> OrchestratorError:
    """Return a fresh instance of ``error`` (same class, message, param, details)."""
    # Each waiter raises its own instance: one exception object raised in several threads
    # would share (and keep growing) one traceback.
    return type(error)(error.message, param=error.param, details=dict(error.details))


class Lease:
    """One request's hold on a ready runner; a context manager.

    Attributes:
        socket_path: Unix socket of the runner's llama-server.
        runner: Facts about the runner.
    """

    def __init__(self, scheduler: Scheduler, runner: RunnerEntry) -> None:
        """Hold ``runner`` (the scheduler already counted the reference)."""
        assert runner.info is not None
        self._scheduler = scheduler
        self._runner = runner
        self._released = False
        self._release_lock = threading.Lock()
        self.runner: RunnerInfo = runner.info
        self.socket_path: str = runner.info.socket_path

    def release(self) -> None:
        """Give the runner back (idempotent); at zero leases its idle clock starts."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        self._scheduler._release(self._runner)

    def report_crash(self) -> None:
        """Tell the scheduler the connection to the runner died mid-request.

        The scheduler checks the process: if it exited, the runner is dropped at once so the
        next request starts a fresh one (the lease still needs :meth:`release`).
        """
        self._scheduler._check_crash(self._runner)

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

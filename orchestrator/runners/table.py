"""The runner table: one record per runner, and the lock every scheduling decision takes.

A :class:`Runner` has exactly one lifecycle state, its process's
(:class:`~orchestrator.runners.state.RunnerState`: starting, loading, ready, stopping, stopped,
failed). The process object exists from admission on, so a runner is never "in the table but
without a state"; taking it out of the table asks its process to stop at once, so a runner that
is no longer scheduled is never still ``READY``. What is not lifecycle is plain data: leases,
the two clocks (ready, last used), memory measurements, and the start's error for waiters.

:class:`RunnerTable` holds the runners by (model ID, mode), the runners being stopped (their
memory is not free yet), the requests waiting for admission, and ``changed``: the condition
every waiter sleeps on and every change notifies. All of it is guarded by ``changed``'s lock;
methods that read or write the table say so, and their callers hold the lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from orchestrator.errors import OrchestratorError, ServiceUnavailableError
from orchestrator.memory.footprint import Footprint
from orchestrator.runners.info import RunnerInfo
from orchestrator.runners.launch import LaunchPlan
from orchestrator.runners.memoryplan import MemoryPlan
from orchestrator.runners.process import RunnerProcess
from orchestrator.runners.rpc import Placement
from orchestrator.runners.state import RunnerState
from orchestrator.runners.stats import RunnerStats

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(model ID, mode): one runner per key."""


@dataclasses.dataclass
class RunnerUsage:
    """What a runner was measured to hold (guarded by the table lock).

    Attributes:
        latest: The latest measurement, ``None`` until measured.
        peak_rss: Largest RSS measured.
        peak_vram: Largest GPU memory measured.
        measured_at: ``time.monotonic()`` of the latest measurement (rate-limits them).
    """

    latest: Footprint | None = None
    peak_rss: int = 0
    peak_vram: int = 0
    measured_at: float | None = None

    def add(self, footprint: Footprint, now: float) -> None:
        """Fold in one measurement."""
        self.latest = footprint
        self.measured_at = now
        self.peak_rss = max(self.peak_rss, footprint.rss_bytes)
        self.peak_vram = max(self.peak_vram, footprint.vram_bytes)


class Runner:
    """One runner: its process, whose state is the runner's state, and its scheduling data.

    Attributes:
        launch: How it was planned (argv, socket, log, memory plan, settings).
        process: The llama-server process.
        keep_alive: Idle seconds before it stops (``-1`` never).
        pinned: Never evicted for another model or for pressure.
        default_model: Loaded as the daemon's ``default_model`` (kept until evicted).
        leases: Requests holding it (the one starting it included).
        admitted_at: ``time.monotonic()`` when admission created it.
        ready_at: ``time.monotonic()`` when its start finished; ``None`` before. The minimum
            residency counts from it: a slow load is not residency.
        last_used: ``time.monotonic()`` of the last lease given back (LRU order; the
            keep-alive deadline when no lease is held).
        error: Why its start failed, for the requests waiting on it.
        usage: Its measurements.
    """

    def __init__(
        self,
        launch: LaunchPlan,
        process: RunnerProcess,
        *,
        keep_alive: float,
        default_model: bool,
    ) -> None:
        self.launch = launch
        self.process = process
        self.keep_alive = keep_alive
        self.pinned = launch.pinned
        self.default_model = default_model
        self.leases = 1
        self.admitted_at = time.monotonic()
        self.ready_at: float | None = None
        self.last_used = self.admitted_at
        self.error: OrchestratorError | None = None
        self.usage = RunnerUsage()
        # Where its layers went (RPC runners only), read from its log once it is ready.
        self.placement: Placement | None = None

    @property
    def runner_id(self) -> str:
        """Return the short unique name (socket and pid file names)."""
        return self.launch.runner_id

    @property
    def model_id(self) -> str:
        """Return ``sha256:<hex>`` of the model."""
        return self.launch.model_id

    @property
    def model_name(self) -> str:
        """Return the model's display label."""
        return self.launch.model_name

    @property
    def mode(self) -> str:
        """Return ``completion``, ``embedding`` or ``reranking``."""
        return self.launch.mode

    @property
    def key(self) -> Key:
        """Return (model ID, mode)."""
        return (self.launch.model_id, self.launch.mode)

    @property
    def plan(self) -> MemoryPlan:
        """Return the memory plan it was admitted with."""
        return self.launch.memory

    @property
    def slots(self) -> int:
        """Return how many requests it serves at once (llama-server's parallel slots)."""
        return max(self.launch.memory.estimate.parallel, 1)

    @property
    def label(self) -> str:
        """Return ``'model' (mode)`` for messages."""
        return f"{self.model_name!r} ({self.mode})"

    @property
    def state(self) -> RunnerState:
        """Return the lifecycle state (its process's)."""
        return self.process.state

    @property
    def loading(self) -> bool:
        """Return whether it is not ready yet (not spawned, or spawned and loading)."""
        return self.process.state in (RunnerState.STARTING, RunnerState.LOADING)

    @property
    def is_defunct(self) -> bool:
        """Return whether its process has ended (stopped or failed)."""
        return self.process.state.is_final

    @property
    def is_idle(self) -> bool:
        """Return whether it is ready and no request holds it."""
        return self.leases == 0 and self.process.state is RunnerState.READY

    @property
    def settled(self) -> bool:
        """Return whether its start has finished, one way or the other (waiters stop here)."""
        return self.error is not None or self.ready_at is not None

    def info(self) -> RunnerInfo:
        """Return the public facts about it (leases, ``/metrics``)."""
        return RunnerInfo(
            runner_id=self.runner_id,
            model_id=self.model_id,
            model_name=self.model_name,
            mode=self.mode,
            socket_path=str(self.launch.socket_path),
            pid=self.process.pid,
            context_size=self.launch.context_size,
            log_path=str(self.launch.log_path),
            draft_model=self.launch.draft_model,
        )


def copy_error(error: OrchestratorError) -> OrchestratorError:
    """Return a fresh instance of ``error`` (same class, message, param, details)."""
    # Each waiter raises its own instance: one exception object raised in several threads
    # would share (and keep growing) one traceback.
    return type(error)(
        error.message, param=error.param, details=dict(error.details), retry_after=error.retry_after
    )


class RunnerTable:
    """The runners by key, the ones being stopped, and the admission waiters.

    Args:
        stats: Counters told when a runner leaves the table.
    """

    def __init__(self, stats: RunnerStats) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.closed = False
        self._stats = stats
        self._runners: dict[Key, Runner] = {}
        self._stopping: list[Runner] = []
        self._waiting: dict[Key, int] = {}
        self._names: dict[Key, str] = {}

    # --- reading (caller holds the lock) --------------------------------------------------

    def check_open(self) -> None:
        """Raise :class:`ServiceUnavailableError` once the scheduler is shut down."""
        if self.closed:
            raise ServiceUnavailableError(
                "the daemon is shutting down; retry the request after it restarts"
            )

    def holds(self, runner: Runner) -> bool:
        """Return whether ``runner`` is the table's runner for its key."""
        return self._runners.get(runner.key) is runner

    def get(self, key: Key) -> Runner | None:
        """Return the runner of ``key``, defunct or not."""
        return self._runners.get(key)

    def live(self, key: Key) -> Runner | None:
        """Return the runner of ``key``; a defunct one is removed (as a crash) and ``None``."""
        runner = self._runners.get(key)
        if runner is not None and runner.is_defunct:
            self.drop_defunct(runner)
            return None
        return runner

    def runners(self) -> list[Runner]:
        """Return every runner in the table whose process has not ended."""
        return [r for r in self._runners.values() if not r.is_defunct]

    def all(self) -> list[Runner]:
        """Return every runner in the table, defunct ones included."""
        return list(self._runners.values())

    @property
    def stopping(self) -> list[Runner]:
        """Return the evicted runners whose processes are not reaped yet."""
        return list(self._stopping)

    def is_empty(self) -> bool:
        """Return whether nothing runs, stops or waits."""
        return not (self._runners or self._stopping or self._waiting)

    def queue_keys(self) -> list[tuple[Key, str, int]]:
        """Return (key, display name, admission waiters) for every key anything waits on."""
        keys = set(self._waiting) | set(self._runners)
        return [(k, self._names.get(k, k[0]), self._waiting.get(k, 0)) for k in keys]

    def has_waiters(self) -> bool:
        """Return whether any request waits for admission."""
        return bool(self._waiting)

    def waiting(self, key: Key) -> int:
        """Return how many requests wait for admission of ``key``."""
        return self._waiting.get(key, 0)

    # --- changing (caller holds the lock) -------------------------------------------------

    def name(self, key: Key, name: str) -> None:
        """Remember the display name of ``key`` (for queue metrics)."""
        self._names[key] = name

    def add(self, runner: Runner) -> None:
        """Put an admitted runner into the table."""
        self._runners[runner.key] = runner

    def add_waiter(self, key: Key) -> None:
        """Count one more request waiting for admission of ``key``."""
        self._waiting[key] = self._waiting.get(key, 0) + 1

    def remove_waiter(self, key: Key) -> None:
        """Count one request fewer waiting for admission of ``key``."""
        self._waiting[key] -= 1
        if not self._waiting[key]:
            del self._waiting[key]

    def remove(self, runner: Runner, reason: str, *, eviction: str | None = None) -> bool:
        """Take ``runner`` out of the table and ask its process to stop; return if it was in.

        ``reason`` is the metrics stop reason (a runner that never became ready is not
        counted as stopped: its start failed instead); ``eviction``, when given, the metrics
        eviction reason.
        """
        if not self.holds(runner):
            return False
        del self._runners[runner.key]
        self._stats.clear_memory(runner.model_name, runner.mode)
        if runner.ready_at is not None:
            self._stats.record_stop(reason)
        if eviction is not None:
            self._stats.record_eviction(eviction)
        # Non-blocking (SIGTERM, or STOPPED at once if never spawned); the bounded wait and
        # the SIGKILL happen outside the lock, in the caller's stop.
        runner.process.terminate()
        return True

    def evict(self, runner: Runner, reason: str) -> None:
        """Remove ``runner`` for another model or for pressure; it counts until reaped."""
        if self.remove(runner, "evicted", eviction=reason):
            self._stopping.append(runner)

    def evicted_gone(self, runners: list[Runner]) -> None:
        """Forget evicted runners whose processes have been stopped."""
        for runner in runners:
            if runner in self._stopping:
                self._stopping.remove(runner)

    def drop_defunct(self, runner: Runner) -> None:
        """Remove a runner whose process ended on its own (a crash); loading ones are left."""
        if runner.ready_at is None or not self.holds(runner):
            return  # a failed start is cleaned up by the thread that started it
        log.warning(
            "runner removed id=%s model=%s mode=%s how=%r leases=%d",
            runner.runner_id, runner.model_name, runner.mode,
            runner.process.exit_description or "exited", runner.leases,
        )  # fmt: skip
        self.remove(runner, "crash")

    def close(self) -> list[Runner]:
        """Mark the table closed and remove every runner; return them (to be stopped)."""
        self.closed = True
        victims = list(self._runners.values())
        for runner in victims:
            self.remove(runner, "shutdown")
        return victims

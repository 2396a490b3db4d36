"""The scheduler's one background thread: keep-alive expiry, memory pressure, default model.

:class:`Chores` sleeps on the runner table's condition, so a lease given back (which starts a
keep-alive clock) wakes it at once, and otherwise wakes at the earliest of the next keep-alive
deadline and the next pressure reading. Each round, under the table lock, it takes out runners
idle past their keep-alive; outside the lock it stops them, takes a pressure reading
(:class:`~orchestrator.runners.pressure.PressureMonitor`, which may evict idle runners), and
gives :class:`DefaultModelLoader` its turn. A failing chore is logged and the thread goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from orchestrator.errors import OrchestratorError
from orchestrator.runners.info import RecordLike
from orchestrator.runners.pressure import PRESSURE_INTERVAL_SECONDS, PressureMonitor
from orchestrator.runners.table import Runner, RunnerTable
from orchestrator.settings import format_duration

log = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 5.0
JOIN_TIMEOUT_SECONDS = 5.0
DEFAULT_MODEL_IDLE_SECONDS = 10.0
"""How long nothing must be loaded before ``default_model`` is loaded again."""
DEFAULT_MODEL_RETRY_SECONDS = 300.0
"""After the default model failed to load, how long before it is tried again."""


class DefaultModelLoader:
    """Loads ``default_model`` again once nothing has been loaded for a while.

    Args:
        name: The model reference (``DMR_DEFAULT_MODEL``).
        table: The runner table (to see that nothing runs or waits).
        find: Looks a reference up in the store (``None`` when absent).
        load: Starts and releases a runner of a record (the scheduler's acquire).
    """

    def __init__(
        self,
        name: str,
        *,
        table: RunnerTable,
        find: Callable[[str], RecordLike | None],
        load: Callable[[RecordLike], None],
    ) -> None:
        self.name = name
        self._table = table
        self._find = find
        self._load = load
        self._empty_since: float | None = None
        self._failed_at: float | None = None
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """Start a load if nothing has run for :data:`DEFAULT_MODEL_IDLE_SECONDS`."""
        now = time.monotonic()
        with self._table.changed:
            busy = self._table.closed or not self._table.is_empty()
            if self._failed_at is not None and now - self._failed_at < DEFAULT_MODEL_RETRY_SECONDS:
                return
            if busy or (self._thread is not None and self._thread.is_alive()):
                self._empty_since = None
                return
            if self._empty_since is None:
                self._empty_since = now
                return
            if now - self._empty_since < DEFAULT_MODEL_IDLE_SECONDS:
                return
            self._empty_since = None
            # Its own thread: a load can take minutes and the chores must go on meanwhile.
            self._thread = threading.Thread(target=self._run, name="default-model", daemon=True)
            self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for a load in progress, at most ``timeout`` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            record = self._find(self.name)
            if record is None:
                log.warning("default model not in the store, retrying in %.0fs model=%s",
                            DEFAULT_MODEL_RETRY_SECONDS, self.name)
            else:
                log.info("loading the default model model=%s", self.name)
                self._load(record)
                return
        except OrchestratorError as ex:
            if self._table.closed:
                return
            log.warning("default model not loaded, retrying in %.0fs model=%s reason=%s",
                        DEFAULT_MODEL_RETRY_SECONDS, self.name, ex.message)
        with self._table.changed:
            self._failed_at = time.monotonic()


class Chores:
    """The background thread (see the module doc).

    Args:
        table: The runner table.
        stop_runners: Stops runners already out of the table (bounded, SIGKILL after grace).
        pressure: The pressure monitor; its eviction callback runs on this thread.
        default_model: Reloads the default model, when one is configured.
        interval: Seconds between pressure readings.
    """

    def __init__(
        self,
        *,
        table: RunnerTable,
        stop_runners: Callable[[list[Runner]], None],
        pressure: PressureMonitor,
        default_model: DefaultModelLoader | None = None,
        interval: float = PRESSURE_INTERVAL_SECONDS,
    ) -> None:
        self._table = table
        self._stop_runners = stop_runners
        self.pressure = pressure
        self.default_model = default_model
        self.interval = interval
        self._thread: threading.Thread | None = None
        # When the thread will look at the table next while it waits; 0 while it is awake
        # (it scans the table before it waits again). Guarded by the table lock.
        self.wakes_at = 0.0

    def must_wake_for(self, due: float) -> bool:
        """Whether a runner that expires at ``due`` needs the thread woken (lock held): only
        if it waits past then; otherwise it finds the runner when it looks next."""
        return self.wakes_at > due

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="runner-chores", daemon=True
            )
            self._thread.start()

    def join(self, timeout: float = JOIN_TIMEOUT_SECONDS) -> None:
        """Wait for the thread to end (it ends when the table is closed)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.default_model is not None:
            self.default_model.join(timeout)

    def _run(self) -> None:
        next_reading = time.monotonic() + self.interval
        while True:
            with self._table.changed:
                if self._table.closed:
                    return
                now = time.monotonic()
                expired, next_due = self._expire_idle_locked(now)
                if not expired and now < next_reading:
                    # Waiting in the same lock hold as the check: no release is missed.
                    self.wakes_at = min(next_due, next_reading)
                    self._table.changed.wait(self.wakes_at - now)
                    self.wakes_at = 0.0
                    continue
            if expired:
                self._stop_expired(expired)
                continue
            next_reading = time.monotonic() + self.interval
            self._periodic()

    def _expire_idle_locked(self, now: float) -> tuple[list[Runner], float]:
        """Take runners idle past their keep-alive out of the table; return them and the
        next deadline."""
        next_due = now + MAX_SLEEP_SECONDS
        expired: list[Runner] = []
        for runner in self._table.all():
            if runner.ready_at is None:
                continue  # loading: its starter owns it
            if runner.is_defunct:
                self._table.drop_defunct(runner)
                continue
            if runner.leases > 0 or runner.keep_alive < 0:
                continue
            due = runner.last_used + runner.keep_alive
            if due > now:
                next_due = min(next_due, due)
                continue
            log.info(
                "runner idle, stopping id=%s model=%s mode=%s keep_alive=%s",
                runner.runner_id, runner.model_name, runner.mode,
                format_duration(runner.keep_alive),
            )  # fmt: skip
            self._table.remove(runner, "idle", eviction="idle")
            expired.append(runner)
        return expired, next_due

    def _stop_expired(self, runners: list[Runner]) -> None:
        try:
            self._stop_runners(runners)
        except Exception:  # the chores must survive a bug in one stop
            log.exception("stopping idle runners failed")
        with self._table.changed:
            self._table.changed.notify_all()

    def _periodic(self) -> None:
        try:
            self.pressure.sample()
        except Exception:  # a failed probe must not end the chores
            log.exception("memory pressure sample failed")
        if self.default_model is not None:
            try:
                self.default_model.tick()
            except Exception:
                log.exception("default model chore failed")

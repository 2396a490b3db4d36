"""The scheduler: one runner per (model ID, mode), leases, idle keep-alive, shutdown.

One :class:`Scheduler` in the gunicorn worker owns every llama-server child. Its lock guards the
runner table and is never held across a spawn, a readiness wait or a stop (DMR's "loading
reservation"): the first request for a key puts a loading entry in the table and starts the
process outside the lock; concurrent requests for the same key find the entry and wait on its
``done`` event with the same deadline, so eight simultaneous first requests start one process.

A :class:`Lease` holds a reference on a runner; at zero references the idle clock starts. The
scheduler's reaper thread wakes at the next idle deadline (at most every few seconds, and at
once when a lease is released or a runner exits), stops runners idle longer than their
keep-alive and drops runners whose process exited on its own; the next request for that key
starts a fresh one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import logs
from orchestrator.config import Config, format_duration
from orchestrator.errors import (
    ConflictError,
    InvalidRequestError,
    OrchestratorError,
    RunnerStartError,
    RunnerTimeoutError,
    ServiceUnavailableError,
)
from orchestrator.runners.configs import (
    CONFIG_FILE_NAME,
    RunnerConfigStore,
    RunnerSettings,
)
from orchestrator.runners.info import (
    BACKEND_NAME,
    RecordLike,
    RunnerInfo,
    StoreLike,
    configuration_entry,
    id_matches,
    ps_entry,
    short_id,
)
from orchestrator.runners.launcher import Launcher
from orchestrator.runners.lease import Lease, RunnerEntry, copy_error
from orchestrator.runners.llamacpp import MODES, build_argv, context_size_for
from orchestrator.runners.process import RunnerProcess, stop_processes
from orchestrator.runners.state import RunnerState
from orchestrator.runners.stats import RunnerStats
from orchestrator.runners.sweep import sweep_leftovers
from orchestrator.store.reference import familiar_name

__all__ = ["BACKEND_NAME", "MODES", "Lease", "RunnerInfo", "Scheduler"]

log = logging.getLogger(__name__)

REAPER_MAX_SLEEP_SECONDS = 5.0
CRASH_CHECK_SECONDS = 0.5
"""How long :meth:`Lease.report_crash` waits for the process exit to be observed."""


class Scheduler:
    """Owner of every llama-server runner of this daemon process."""

    def __init__(
        self,
        *,
        config: Config,
        store: StoreLike,
        engine_path: Path,
        runtime_dir: Path,
        log_dir: Path,
        stats: RunnerStats | None = None,
        configs: RunnerConfigStore | None = None,
    ) -> None:
        """Create the scheduler; :meth:`start` sweeps leftovers and starts the reaper.

        Args:
            config: Daemon settings (keep-alive, timeouts, default context size).
            store: The model store (bundles; models for ``configurations``).
            engine_path: The llama-server executable.
            runtime_dir: Runtime directory; sockets and pid files go in ``<it>/runners``.
            log_dir: Directory for the engine logs.
            stats: Counters for ``/metrics`` (default: a new :class:`RunnerStats`).
            configs: Settings store (default: ``<store root>/runner-configs.json``).
        """
        self._config = config
        self._store = store
        self._engine_path = Path(engine_path)
        self._runners_dir = Path(runtime_dir) / "runners"
        self._log_dir = Path(log_dir)
        self.stats = stats if stats is not None else RunnerStats()
        self.configs = configs if configs is not None else RunnerConfigStore(
            Path(store.root) / CONFIG_FILE_NAME
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._runners: dict[tuple[str, str], RunnerEntry] = {}
        self._launcher = Launcher()
        self._sequence = 0
        self._closed = False
        self._started = False
        self._start_lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Kill runners a previous daemon left behind, then start the reaper (idempotent)."""
        with self._start_lock:
            if self._started:
                return
            self._runners_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            killed = sweep_leftovers(self._runners_dir, self._config.stop_grace_seconds)
            if killed:
                log.warning("killed leftover runners count=%d dir=%s", killed, self._runners_dir)
            self._reaper = threading.Thread(
                target=self._reap_loop, name="runner-scheduler-reaper", daemon=True
            )
            self._reaper.start()
            self._started = True

    def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop every runner: SIGTERM to all at once, one shared grace, SIGKILL survivors.

        Afterwards :meth:`acquire` raises :class:`ServiceUnavailableError`. Idempotent.
        """
        grace = self._config.stop_grace_seconds if grace_seconds is None else grace_seconds
        with self._cond:
            already = self._closed
            self._closed = True
            victims = list(self._runners.values())
            for runner in victims:
                self._remove_locked(runner, "shutdown")
            self._cond.notify_all()
        if victims:
            log.info("stopping runners count=%d grace=%.1fs", len(victims), grace)
        self._stop_runners(victims, grace)
        if not already:
            if self._reaper is not None:
                self._reaper.join(REAPER_MAX_SLEEP_SECONDS)
            self._launcher.close()

    # --- leases ----------------------------------------------------------------------------

    def acquire(self, record: RecordLike, mode: str) -> Lease:
        """Return a lease on a READY runner for ``record`` in ``mode``, starting one if needed.

        Blocks until the runner is ready or ``load_timeout_seconds`` pass. Concurrent calls
        for the same model and mode share one start.

        Raises:
            InvalidRequestError: ``mode`` is unknown.
            RunnerStartError: llama-server exited while loading (log tail in details).
            RunnerTimeoutError: It was not ready in time (and was stopped).
            ServiceUnavailableError: The scheduler is shut down.
        """
        if mode not in MODES:
            raise InvalidRequestError(
                f"unknown runner mode {mode!r}; use one of {', '.join(repr(m) for m in MODES)}",
                param="mode",
            )
        if not self._started:
            self.start()
        deadline = time.monotonic() + self._config.load_timeout_seconds
        key = (record.id, mode)
        with self._cond:
            self._check_open()
            runner = self._runners.get(key)
            if runner is not None and runner.is_defunct:
                self._drop_defunct_locked(runner)
                runner = None
            owner = runner is None
            if runner is None:
                self._sequence += 1
                runner = RunnerEntry(
                    runner_id=f"{mode[0]}{self._sequence}-{short_id(record.id)[:8]}",
                    model_id=record.id,
                    model_name=familiar_name(record.tags[0]) if record.tags else record.id,
                    mode=mode,
                )
                self._runners[key] = runner
            runner.refcount += 1
            runner.idle_since = None
        if owner:
            self._start_runner(runner, record, deadline)
            return Lease(self, runner)
        return self._wait_for_start(runner, deadline)

    def _start_runner(self, runner: RunnerEntry, record: RecordLike, deadline: float) -> None:
        """Spawn and wait for ``runner`` (the caller owns its start); raise on failure."""
        process: RunnerProcess | None = None
        try:
            settings = self.configs.get(runner.model_id, runner.mode)
            bundle = self._store.bundle(record)
            socket_path = self._runners_dir / f"{runner.runner_id}.sock"
            log_path = logs.engine_log_path(self._log_dir, short_id(runner.model_id), runner.mode)
            argv = build_argv(
                engine_path=self._engine_path,
                bundle=bundle,
                mode=runner.mode,
                socket_path=socket_path,
                settings=settings,
                default_context_size=self._config.default_context_size,
            )
            process = RunnerProcess(
                runner_id=runner.runner_id,
                label=runner.label,
                argv=argv,
                socket_path=socket_path,
                log_path=log_path,
                runtime_dir=self._runners_dir,
                launcher=self._launcher,
                on_exit=self._on_process_exit,
            )
            context_size = context_size_for(
                bundle.config, settings, self._config.default_context_size
            )
            keep_alive = self._config.keep_alive
            if settings is not None and settings.keep_alive is not None:
                keep_alive = settings.keep_alive
            with self._cond:
                # Checked under the lock shutdown takes: either shutdown sees the process and
                # stops it (spawn then refuses), or we see the shutdown here.
                self._check_open()
                runner.process = process
                runner.keep_alive = keep_alive
            process.spawn()
            self.stats.record_start()
            runner.info = RunnerInfo(
                runner_id=runner.runner_id,
                model_id=runner.model_id,
                model_name=runner.model_name,
                mode=runner.mode,
                socket_path=str(socket_path),
                pid=process.pid,
                context_size=context_size,
                log_path=str(log_path),
            )
            elapsed = process.wait_ready(deadline, grace_seconds=self._config.stop_grace_seconds)
            self.stats.observe_load(elapsed)
            with self._cond:
                self._check_open()
                runner.loading = False
        except BaseException as ex:
            failure = ex
            if isinstance(ex, OrchestratorError) and self._closed:
                failure = ServiceUnavailableError(
                    "the daemon is shutting down; retry the request after it restarts"
                )
            if isinstance(ex, RunnerTimeoutError):
                self.stats.record_start_failure("timeout")
            elif isinstance(ex, RunnerStartError) and not self._closed:
                self.stats.record_start_failure("error")
            with self._cond:
                runner.refcount -= 1
                runner.loading = False
                runner.error = (
                    failure
                    if isinstance(failure, OrchestratorError)
                    else RunnerStartError(f"cannot start the runner for {runner.label}: {ex!r}")
                )
                if self._runners.get(runner.key) is runner:
                    del self._runners[runner.key]
                runner.removed = True
            runner.done.set()
            if process is not None and not process.exited.is_set():
                process.stop(self._config.stop_grace_seconds)
            if failure is ex:
                raise
            raise failure from ex
        runner.done.set()

    def _wait_for_start(self, runner: RunnerEntry, deadline: float) -> Lease:
        if runner.done.wait(max(0.0, deadline - time.monotonic())):
            if runner.error is None:
                return Lease(self, runner)
            with self._cond:
                runner.refcount -= 1
            raise copy_error(runner.error)
        with self._cond:
            runner.refcount -= 1
        raise RunnerTimeoutError(
            f"runner for {runner.label} was not ready within "
            f"{self._config.load_timeout_seconds:.0f}s; retry later or raise load_timeout_seconds",
        )

    def _release(self, runner: RunnerEntry) -> None:
        with self._cond:
            runner.refcount -= 1
            if runner.refcount == 0:
                runner.last_used = time.time()
                runner.idle_since = time.monotonic()
                self._cond.notify_all()

    def _check_crash(self, runner: RunnerEntry) -> None:
        process = runner.process
        if process is None:
            return
        if process.exited.wait(CRASH_CHECK_SECONDS):
            with self._cond:
                self._drop_defunct_locked(runner)
        else:
            log.info("runner connection lost but process alive id=%s", runner.runner_id)

    # --- table maintenance (callers hold the lock) -----------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailableError(
                "the daemon is shutting down; retry the request after it restarts"
            )

    def _remove_locked(self, runner: RunnerEntry, reason: str) -> None:
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
        if not runner.removed:
            runner.removed = True
            if runner.process is not None and not runner.loading:
                self.stats.record_stop(reason)

    def _drop_defunct_locked(self, runner: RunnerEntry) -> None:
        if runner.removed or runner.loading:
            return
        process = runner.process
        how = process.exit_description if process is not None else "exited"
        log.warning(
            "runner removed id=%s model=%s mode=%s how=%r leases=%d",
            runner.runner_id, runner.model_name, runner.mode, how, runner.refcount,
        )
        self._remove_locked(runner, "crash")

    def _on_process_exit(self, process: RunnerProcess) -> None:
        with self._cond:
            for runner in list(self._runners.values()):
                if runner.process is process and process.state is RunnerState.FAILED:
                    self._drop_defunct_locked(runner)
            self._cond.notify_all()

    def _reap_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                next_due = now + REAPER_MAX_SLEEP_SECONDS
                victims: list[RunnerEntry] = []
                for runner in list(self._runners.values()):
                    if runner.loading:
                        continue
                    if runner.is_defunct:
                        self._drop_defunct_locked(runner)
                        continue
                    if runner.refcount > 0 or runner.keep_alive < 0 or runner.idle_since is None:
                        continue
                    due = runner.idle_since + runner.keep_alive
                    if due <= now:
                        log.info(
                            "runner idle, stopping id=%s model=%s mode=%s keep_alive=%s",
                            runner.runner_id, runner.model_name, runner.mode,
                            format_duration(runner.keep_alive),
                        )
                        self._remove_locked(runner, "idle")
                        victims.append(runner)
                    else:
                        next_due = min(next_due, due)
                if not victims:
                    self._cond.wait(max(0.0, next_due - now))
                    continue
            try:
                self._stop_runners(victims, self._config.stop_grace_seconds)
            except Exception:  # the reaper must survive a bug in one stop
                log.exception("stopping idle runners failed")

    def _stop_runners(self, runners: Iterable[RunnerEntry], grace_seconds: float) -> None:
        stop_processes([r.process for r in runners if r.process is not None], grace_seconds)

    # --- management API --------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        """Return ``GET /engines/ps`` entries (DMR's fields plus pid, context_size, socket)."""
        with self._cond:
            runners = sorted(
                (r for r in self._runners.values() if not r.is_defunct),
                key=lambda r: (r.model_name, r.mode),
            )
            return [
                ps_entry(
                    model_name=runner.model_name,
                    mode=runner.mode,
                    in_use=runner.refcount > 0,
                    loading=runner.loading,
                    last_used=runner.last_used,
                    keep_alive=runner.keep_alive if runner.process else self._config.keep_alive,
                    info=runner.info,
                )
                for runner in runners
            ]

    def active_runners(self) -> list[RunnerInfo]:
        """Return the READY runners (for ``/metrics`` aggregation)."""
        with self._cond:
            return [
                runner.info
                for runner in self._runners.values()
                if runner.info is not None and not runner.loading and not runner.is_defunct
            ]

    def unload(self, *, model_ids: Sequence[str] = (), all: bool = False) -> int:
        """Stop idle runners of the given models (or all); return how many were stopped.

        Runners with leases or still loading are never unloaded (DMR's rule). Settings stored
        by :meth:`configure` are kept. ``model_ids`` are full or short model IDs.
        """
        with self._cond:
            victims = [
                runner
                for runner in self._runners.values()
                if (all or any(id_matches(runner.model_id, wanted) for wanted in model_ids))
                and runner.refcount == 0
                and not runner.loading
            ]
            for runner in victims:
                self._remove_locked(runner, "unload")
        self._stop_runners(victims, self._config.stop_grace_seconds)
        return len(victims)

    def configure(self, record: RecordLike, settings: RunnerSettings) -> None:
        """Store ``settings`` for ``record`` in ``settings.mode``; restart an idle runner.

        The settings persist across unload and daemon restarts. An idle runner of that key
        is stopped so the next request starts with the new arguments.

        Raises:
            ConflictError: A runner for that model and mode is loading or serving requests.
            StoreError: The settings file cannot be written.
        """
        key = (record.id, settings.mode)
        victim: RunnerEntry | None = None
        with self._cond:
            runner = self._runners.get(key)
            if runner is not None and not runner.is_defunct and (runner.refcount or runner.loading):
                raise ConflictError(
                    f"runner for {runner.label} is active; retry when its requests have finished"
                )
            changed = self.configs.put(record.id, settings)
            if changed and runner is not None:
                self._remove_locked(runner, "configure")
                victim = runner
        if victim is not None:
            log.info("runner restarts with new settings id=%s", victim.runner_id)
            self._stop_runners([victim], self._config.stop_grace_seconds)

    def configurations(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Return ``GET /engines/_configure`` entries (capitalised keys, as DMR's).

        Entries of models no longer in the store are left out.
        """
        entries = []
        for stored_id, settings in self.configs.items():
            if model_id is not None and not id_matches(stored_id, model_id):
                continue
            record = self._store.find(stored_id)
            if record is None:
                continue
            model = record.tags[0] if record.tags else stored_id
            entries.append(configuration_entry(model, stored_id, settings))
        return entries

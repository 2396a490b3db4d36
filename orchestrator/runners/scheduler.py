"""The scheduler: one runner per (model ID, mode), admission, leases, eviction, shutdown.

One :class:`Scheduler` in the gunicorn worker owns every llama-server child. Its lock guards the
runner table and is never held across a spawn, a readiness wait or a stop (DMR's "loading
reservation"): the first request for a key puts a loading entry in the table and starts the
process outside the lock; concurrent requests for the same key find the entry and wait on its
``done`` event with the same deadline, so eight simultaneous first requests start one process.

Admission (before an entry is created, under the lock): the runner's need — its footprint
learned from an earlier run with the same argv, else the estimate from the GGUF header — is
checked by the :class:`~orchestrator.memory.guard.MemoryGuard` against every resident runner,
loading ones included. It fits; or idle runners are evicted least recently used first (never
leased, loading, pinned or younger than ``min_residency``); or the request waits, at most
``max_wait``, for busy runners to finish (then 503); or it can never fit (507 at once, before any
process starts). ``max_runners`` caps the engines the same way. At most ``max_queue`` requests
per model wait; more get 429 with ``Retry-After``.

A :class:`Lease` holds a reference on a runner; at zero references the idle clock starts. The
reaper thread stops runners idle longer than their keep-alive; the pressure thread
(:mod:`~orchestrator.runners.pressure`) evicts idle runners when free memory stays under the
reserve, and reloads ``default_model`` when nothing is loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from orchestrator import logs
from orchestrator.config import Config, format_duration
from orchestrator.errors import (
    EngineCrashedError,
    InvalidRequestError,
    OrchestratorError,
    RunnerStartError,
    RunnerTimeoutError,
    ServiceUnavailableError,
)
from orchestrator.runners import policy
from orchestrator.runners.admission import SOCKET_PLACEHOLDER, RunnerMemory
from orchestrator.runners.configs import CONFIG_FILE_NAME, RunnerConfigStore
from orchestrator.runners.crashes import CrashMemory
from orchestrator.runners.eviction import AdmissionMixin, Prepared
from orchestrator.runners.info import (
    BACKEND_NAME,
    RecordLike,
    RunnerInfo,
    StoreLike,
    short_id,
)
from orchestrator.runners.launcher import Launcher
from orchestrator.runners.lease import Lease, RunnerEntry, copy_error
from orchestrator.runners.llamacpp import MODES, build_argv, context_size_for
from orchestrator.runners.management import ManagementMixin
from orchestrator.runners.pressure import PressureSampler
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
ADMISSION_POLL_SECONDS = 1.0
"""A waiting request re-checks at least this often: other processes may free memory unseen."""
MEASURE_INTERVAL_SECONDS = 10.0
"""A runner is measured after serving at most this often."""


class Scheduler(AdmissionMixin, ManagementMixin):
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
        memory: RunnerMemory | None = None,
        pressure_interval: float | None = None,
    ) -> None:
        """Create the scheduler; :meth:`start` sweeps leftovers and starts its threads.

        Args:
            config: Daemon settings (keep-alive, timeouts, memory limits, queue bounds).
            store: The model store (bundles; models for ``configurations``).
            engine_path: The llama-server executable.
            runtime_dir: Runtime directory; sockets and pid files go in ``<it>/runners``.
            log_dir: Directory for the engine logs.
            stats: Counters for ``/metrics`` (default: a new :class:`RunnerStats`).
            configs: Settings store (default: ``<store root>/runner-configs.json``).
            memory: Memory policy (default: from ``config``, learned footprints in the store).
            pressure_interval: Seconds between pressure samples (default 2; tests shorten it).
        """
        self._config = config
        self._store = store
        self._engine_path = Path(engine_path)
        # Load-time crashes (SIGILL & co) are explained once and not retried in a loop.
        self.crashes = CrashMemory(self._engine_path)
        self._runners_dir = Path(runtime_dir) / "runners"
        self._log_dir = Path(log_dir)
        self.stats = stats if stats is not None else RunnerStats()
        self.configs = configs if configs is not None else RunnerConfigStore(
            Path(store.root) / CONFIG_FILE_NAME
        )
        self.memory = memory if memory is not None else RunnerMemory.from_config(
            config, Path(store.root)
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._runners: dict[tuple[str, str], RunnerEntry] = {}
        self._stopping: list[RunnerEntry] = []  # evicted, process not reaped yet
        self._waiting: dict[tuple[str, str], int] = {}  # requests waiting for admission
        self._names: dict[tuple[str, str], str] = {}
        self._settle_until = 0.0
        self._empty_since: float | None = None
        self._default_loader: threading.Thread | None = None
        self._default_failed_at: float | None = None
        self._launcher = Launcher()
        self._sequence = 0
        self._closed = False
        self._started = False
        self._start_lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        sampler_args = {} if pressure_interval is None else {"interval": pressure_interval}
        self._sampler = PressureSampler(
            deficit=self.memory.deficit,
            on_pressure=self._evict_for_pressure,
            on_tick=self._load_default_model_if_idle,
            **sampler_args,
        )
        self.stats.watch_queue(self.queue_depths)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Kill runners a previous daemon left behind, then start the threads (idempotent)."""
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
            self._sampler.start()
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
            self._sampler.stop()
            if self._reaper is not None:
                self._reaper.join(REAPER_MAX_SLEEP_SECONDS)
            loader = self._default_loader
            if loader is not None:
                loader.join(REAPER_MAX_SLEEP_SECONDS)
            self._launcher.close()
            self.memory.close()

    # --- leases ----------------------------------------------------------------------------

    def acquire(self, record: RecordLike, mode: str) -> Lease:
        """Return a lease on a READY runner for ``record`` in ``mode``, starting one if needed.

        Blocks while admission waits for memory or a runner slot (at most ``max_wait``) and
        until the runner is ready (at most ``load_timeout_seconds``). Concurrent calls for the
        same model and mode share one start.

        Raises:
            InvalidRequestError: ``mode`` is unknown.
            InsufficientMemoryError: It does not fit (507), or busy runners hold the memory
                past ``max_wait`` (``MemoryBusyError``, 503).
            TooManyRequestsError: ``max_queue`` requests already wait for this model (429).
            RunnerStartError: llama-server exited while loading (log tail in details).
            RunnerTimeoutError: It was not ready in time (and was stopped).
            ServiceUnavailableError: The scheduler is shut down, or every runner slot stayed
                busy past ``max_wait``.
        """
        if mode not in MODES:
            raise InvalidRequestError(
                f"unknown runner mode {mode!r}; use one of {', '.join(repr(m) for m in MODES)}",
                param="mode",
            )
        if not self._started:
            self.start()
        return self._acquire(record, mode)

    def _acquire(self, record: RecordLike, mode: str, *, default_model: bool = False) -> Lease:
        key = (record.id, mode)
        name = familiar_name(record.tags[0]) if record.tags else record.id
        began = time.monotonic()
        admit_deadline = began + self._config.max_wait
        prepared: Prepared | None = None
        victims: list[RunnerEntry] = []
        waiting = False
        try:
            while True:
                with self._cond:
                    self._check_open()
                    self._names[key] = name
                    runner = self._live_runner_locked(key)
                    if runner is not None:
                        if not waiting and policy.must_wait(runner):
                            self._check_queue_locked(key, name)
                        runner.refcount += 1
                        runner.idle_since = None
                        owner = False
                        break
                    if prepared is not None:
                        admitted = self._admit_locked(key, name, prepared, default_model)
                        if isinstance(admitted, tuple):
                            runner, victims = admitted
                            owner = True
                            break
                        if not admitted.may_wait or time.monotonic() >= admit_deadline:
                            self._refuse(admitted, name)
                        if not waiting:
                            self._check_queue_locked(key, name)
                            self._waiting[key] = self._waiting.get(key, 0) + 1
                            waiting = True
                        remaining = admit_deadline - time.monotonic()
                        self._cond.wait(min(max(remaining, 0.0), ADMISSION_POLL_SECONDS))
                        # Settings or learned footprints may have changed meanwhile.
                        prepared = None
                        continue
                # Outside the lock: reading the GGUF header and the settings file.
                prepared = self._prepare(record, mode)
        except BaseException:
            if waiting:
                self.stats.observe_wait(name, time.monotonic() - began)
            raise
        finally:
            if waiting:
                with self._cond:
                    self._waiting[key] -= 1
                    if not self._waiting[key]:
                        del self._waiting[key]
        deadline = time.monotonic() + self._config.load_timeout_seconds
        if owner:
            if waiting:
                self.stats.observe_wait(name, time.monotonic() - began)
            assert prepared is not None
            self._start_runner(runner, record, prepared, victims, deadline)
            return Lease(self, runner)
        return self._wait_for_start(runner, deadline, name, began if waiting else None)

    def _prepare(self, record: RecordLike, mode: str) -> Prepared:
        self.crashes.check(record.id)
        settings = self.configs.get(record.id, mode)
        bundle = self._store.bundle(record)
        argv = build_argv(
            engine_path=self._engine_path,
            bundle=bundle,
            mode=mode,
            socket_path=SOCKET_PLACEHOLDER,
            settings=settings,
            default_context_size=self._config.default_context_size,
            prompt_cache_mib=self._config.prompt_cache_mib,
        )
        return Prepared(settings, bundle, self.memory.plan(record.id, bundle, argv))

    def _live_runner_locked(self, key: tuple[str, str]) -> RunnerEntry | None:
        runner = self._runners.get(key)
        if runner is not None and runner.is_defunct:
            self._drop_defunct_locked(runner)
            return None
        return runner

    def _start_runner(
        self,
        runner: RunnerEntry,
        record: RecordLike,
        prepared: Prepared,
        victims: list[RunnerEntry],
        deadline: float,
    ) -> None:
        """Stop the victims, then spawn and wait for ``runner`` (the caller owns its start)."""
        process: RunnerProcess | None = None
        try:
            if victims:
                self._finish_evictions(victims)
            settings = prepared.settings
            socket_path = self._runners_dir / f"{runner.runner_id}.sock"
            log_path = logs.engine_log_path(self._log_dir, short_id(runner.model_id), runner.mode)
            argv = [str(socket_path) if w == SOCKET_PLACEHOLDER else w for w in prepared.plan.argv]
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
                prepared.bundle.config, settings, self._config.default_context_size
            )
            keep_alive = -1.0 if runner.default_model else self._config.keep_alive
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
            self.stats.set_memory(runner.model_name, runner.mode, prepared.plan.estimate.ram_bytes)
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
            self._measure(runner, ready=True)
            with self._cond:
                self._check_open()
                runner.loading = False
                # The minimum residency counts from ready: a slow load is not residency.
                runner.started = runner.last_used_mono = time.monotonic()
                self._cond.notify_all()
        except BaseException as ex:
            self._start_failed(runner, process, ex)
            failure = self._start_failure(ex)
            if failure is ex:
                raise
            raise failure from ex
        runner.done.set()

    def _start_failure(self, ex: BaseException) -> BaseException:
        if isinstance(ex, OrchestratorError) and self._closed:
            return ServiceUnavailableError(
                "the daemon is shutting down; retry the request after it restarts"
            )
        return ex

    def _start_failed(
        self, runner: RunnerEntry, process: RunnerProcess | None, ex: BaseException
    ) -> None:
        failure = self._start_failure(ex)
        if isinstance(ex, EngineCrashedError) and not self._closed:
            signum = ex.details.get("signal")
            if isinstance(signum, int):
                self.crashes.record(signum, runner.model_id, ex)
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
            self.stats.clear_memory(runner.model_name, runner.mode)
            self._cond.notify_all()
        runner.done.set()
        if process is not None and not process.exited.is_set():
            process.stop(self._config.stop_grace_seconds)

    def _wait_for_start(
        self, runner: RunnerEntry, deadline: float, name: str, waited_since: float | None
    ) -> Lease:
        began = time.monotonic() if waited_since is None else waited_since
        # A request counts as having waited if admission held it or the runner was loading.
        waits = waited_since is not None or not runner.done.is_set()
        try:
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
                f"{self._config.load_timeout_seconds:.0f}s; retry later or raise "
                f"load_timeout_seconds",
            )
        finally:
            if waits:
                self.stats.observe_wait(name, time.monotonic() - began)

    def _release(self, runner: RunnerEntry) -> None:
        now = time.monotonic()
        measure = False
        with self._cond:
            runner.refcount -= 1
            if runner.refcount == 0:
                runner.last_used = time.time()
                runner.idle_since = now
                runner.last_used_mono = now
            if not runner.removed and not runner.loading and (
                runner.measured_at is None or now - runner.measured_at >= MEASURE_INTERVAL_SECONDS
            ):
                runner.measured_at = now
                measure = True
            self._cond.notify_all()
        if measure:
            self._measure(runner, ready=False)

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
            self.stats.clear_memory(runner.model_name, runner.mode)
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
                        self.stats.record_eviction("idle")
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
            with self._cond:
                self._cond.notify_all()

    def _stop_runners(self, runners: Iterable[RunnerEntry], grace_seconds: float) -> None:
        stop_processes([r.process for r in runners if r.process is not None], grace_seconds)


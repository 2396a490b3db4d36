"""The scheduler: one runner per (model ID, mode), started on first use, shared by leases.

:class:`Scheduler` owns every llama-server child of the daemon and wires small parts, each in
its own module, every call going one way (scheduler -> part):

* :class:`~orchestrator.runners.table.RunnerTable` — the runners (one lifecycle state each,
  their process's), the ones being stopped, the admission waiters, and the one lock.
* :class:`~orchestrator.runners.launch.LaunchPlanner` — argv, paths and memory plan of a start,
  worked out outside the lock (settings file, GGUF header).
* :class:`~orchestrator.runners.gate.AdmissionGate` — admit (with victims) or refuse, from a
  table snapshot and the plan's need.
* :class:`~orchestrator.runners.memoryplan.MemoryPlanner` — estimates, learned footprints,
  measurements.
* :class:`~orchestrator.runners.chores.Chores` — the one background thread: keep-alive expiry,
  memory pressure, default-model reload.
* :class:`~orchestrator.runners.management.RunnerManagement` — ps, unload, configure, memory
  reports, as typed records.

The lock is never held across a spawn, a readiness wait or a stop (DMR's "loading
reservation"): the first request for a key admits a runner into the table and starts its
process outside the lock; concurrent requests for the same key find it and wait on the table's
condition with the same deadline, so eight simultaneous first requests start one process.
Admission refuses at once when a model can never fit (507), lets a request wait at most
``max_wait`` for busy runners (then 503), and bounds the requests waiting per model
(``max_queue``, then 429 with ``Retry-After``). A :class:`~orchestrator.runners.lease.Lease`
holds a reference; at zero the keep-alive clock starts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

from orchestrator.errors import (
    EngineCrashedError,
    InvalidRequestError,
    OrchestratorError,
    RunnerStartError,
    RunnerTimeoutError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from orchestrator.runners import gate
from orchestrator.runners.chores import Chores, DefaultModelLoader
from orchestrator.runners.crashes import CrashMemory
from orchestrator.runners.engineflags import MODES
from orchestrator.runners.gate import AdmissionGate, Admit, Refusal
from orchestrator.runners.info import RecordLike, StoreLike
from orchestrator.runners.launch import LaunchPlan, LaunchPlanner
from orchestrator.runners.launcher import Launcher
from orchestrator.runners.lease import Lease
from orchestrator.runners.management import RunnerManagement
from orchestrator.runners.memoryplan import MemoryPlanner
from orchestrator.runners.persisted import CONFIG_FILE_NAME, RunnerConfigStore
from orchestrator.runners.pressure import PressureMonitor
from orchestrator.runners.process import RunnerProcess, stop_processes
from orchestrator.runners.rpc import PROBE_TIMEOUT_SECONDS, read_placement
from orchestrator.runners.stats import RunnerStats
from orchestrator.runners.sweep import sweep_leftovers
from orchestrator.runners.table import Runner, RunnerTable, copy_error
from orchestrator.settings import Config
from orchestrator.store.reference import model_label

__all__ = ["MODES", "Lease", "Scheduler"]

log = logging.getLogger(__name__)

CRASH_CHECK_SECONDS = 0.5
"""How long :meth:`Lease.report_crash` waits for the process exit to be observed."""
ADMISSION_POLL_SECONDS = 1.0
"""A waiting request re-checks at least this often: other processes may free memory unseen."""
MEASURE_INTERVAL_SECONDS = 10.0
"""A runner is measured after serving at most this often."""
VRAM_SETTLE_SECONDS = 5.0
"""After an eviction NVML may show the freed GPU memory this late; refusals wait it out."""
SHUTTING_DOWN = "the daemon is shutting down; retry the request after it restarts"
WARM_MODELS = 8
"""At start, the GGUF headers of at most this many models are read ahead (see :meth:`_warm`)."""
WARM_JOIN_SECONDS = 5.0


class Scheduler:
    """Owner of every llama-server runner of this daemon process (see the module doc).

    Args:
        config: Daemon settings (keep-alive, timeouts, memory limits, queue bounds).
        store: The model store (bundles; models for ``configurations``).
        engine_path: The llama-server executable.
        runtime_dir: Runtime directory; sockets and pid files go in ``<it>/runners``.
        log_dir: Directory for the engine logs.
        stats: Counters for ``/metrics`` (default: a new :class:`RunnerStats`).
        configs: Settings store (default: ``<store root>/runner-configs.json``).
        memory: Memory planning (default: from ``config``, learned footprints in the store).
        pressure_interval: Seconds between pressure readings (default 2; tests shorten it).
    """

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
        memory: MemoryPlanner | None = None,
        pressure_interval: float | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._runners_dir = Path(runtime_dir) / "runners"
        # Load-time crashes (SIGILL & co) are explained once and not retried in a loop.
        self.crashes = CrashMemory(Path(engine_path))
        self.stats = stats if stats is not None else RunnerStats()
        self.configs = configs if configs is not None else RunnerConfigStore(
            Path(store.root) / CONFIG_FILE_NAME
        )
        self.memory = memory if memory is not None else MemoryPlanner.from_config(
            config, Path(store.root)
        )
        self._table = RunnerTable(self.stats)
        self._gate = AdmissionGate(self.memory.guard, config.runner_limit)
        self._planner = LaunchPlanner(
            config=config,
            store=store,
            configs=self.configs,
            memory=self.memory,
            crashes=self.crashes,
            engine_path=Path(engine_path),
            runners_dir=self._runners_dir,
            log_dir=Path(log_dir),
            held_workers=self._held_workers,
        )
        self.management = RunnerManagement(
            config=config,
            store=store,
            table=self._table,
            configs=self.configs,
            planner=self._planner,
            memory=self.memory,
            stop_runners=self._stop_runners,
        )
        default_model = (
            DefaultModelLoader(
                config.default_model,
                table=self._table,
                find=store.find,
                load=self._load_default_model,
            )
            if config.default_model
            else None
        )
        self.chores = Chores(
            table=self._table,
            stop_runners=self._stop_runners,
            pressure=PressureMonitor(
                deficit=self.memory.deficit, on_pressure=self._evict_for_pressure
            ),
            default_model=default_model,
            **({} if pressure_interval is None else {"interval": pressure_interval}),
        )
        self._launcher = Launcher()
        self._settle_until = 0.0  # guarded by the table lock
        self._started = False
        self._start_lock = threading.Lock()
        self._warmer: threading.Thread | None = None
        self.stats.watch_queue(self.management.queue_depths)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Kill runners a previous daemon left behind, then start the chores (idempotent)."""
        with self._start_lock:
            if self._started:
                return
            self._runners_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            killed = sweep_leftovers(self._runners_dir, self._config.stop_grace_seconds)
            if killed:
                log.warning("killed leftover runners count=%d dir=%s", killed, self._runners_dir)
            self.chores.start()
            # PERF: its own thread, so the daemon answers as soon as before while the first
            # runner start's fixed costs (GPU probe, GGUF header) are paid ahead of it.
            self._warmer = threading.Thread(target=self._warm, name="runner-warmup", daemon=True)
            self._warmer.start()
            self._launcher.prepare()
            self._started = True

    def _warm(self) -> None:
        """Read ahead what a first runner start would wait for (never raises).

        The default model and the models run most recently (those with learned footprints)
        are the ones a fresh daemon is likely to be asked for first; each header is a few tens
        of milliseconds of CPU, so only :data:`WARM_MODELS` of them are read.
        """
        try:
            wanted = [self._config.default_model] if self._config.default_model else []
            if self.memory.footprints is not None:
                wanted += self.memory.footprints.recent_models()
            models: dict[str, Path] = {}
            for reference in wanted:
                if len(models) >= WARM_MODELS or self._table.closed:
                    break
                record = self._store.find(reference)
                if record is not None and record.id not in models:
                    models[record.id] = Path(self._store.bundle(record).gguf_path)
        except Exception:  # warming is an optimisation; a store error shows on the request
            log.exception("runner warm-up failed to list models")
            models = {}
        self.memory.warm(models.items())

    def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop every runner: SIGTERM to all at once, one shared grace, SIGKILL survivors.

        Afterwards :meth:`acquire` raises :class:`ServiceUnavailableError`. Idempotent.
        """
        grace = self._config.stop_grace_seconds if grace_seconds is None else grace_seconds
        with self._table.changed:
            already = self._table.closed
            victims = self._table.close()
            self._table.changed.notify_all()
        if victims:
            log.info("stopping runners count=%d grace=%.1fs", len(victims), grace)
        stop_processes([r.process for r in victims], grace)
        if not already:
            self.chores.join()
            if self._warmer is not None:
                self._warmer.join(WARM_JOIN_SECONDS)  # before NVML closes under it
            self._launcher.close()
            self.memory.close()

    def _load_default_model(self, record: RecordLike) -> None:
        """Start the default model's runner and let it idle (it never times out)."""
        self._acquire(record, "completion", default_model=True).release()

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
        name = model_label(record.tags, record.id)
        table = self._table
        began = time.monotonic()
        admit_deadline = began + self._config.max_wait
        launch: LaunchPlan | None = None
        victims: list[Runner] = []
        waiting = False
        try:
            while True:
                with table.changed:
                    table.check_open()
                    table.name(key, name)
                    runner = table.live(key)
                    if runner is not None:
                        if not waiting and gate.must_wait(runner):
                            self._check_queue_locked(key, name)
                        runner.leases += 1
                        owner = False
                        break
                    if launch is not None:
                        verdict = self._gate.decide(
                            launch.memory.need, model=name, runners=table.runners(),
                            stopping=table.stopping, now=time.monotonic(),
                            settling=time.monotonic() < self._settle_until,
                            workers=launch.memory.rpc_workers,
                            remote_bytes=launch.memory.remote_capacity,
                        )  # fmt: skip
                        if isinstance(verdict, Admit):
                            runner = self._admit_locked(launch, verdict, default_model)
                            victims = [victim for victim, _reason in verdict.victims]
                            owner = True
                            break
                        if not verdict.may_wait or time.monotonic() >= admit_deadline:
                            self._refuse(verdict, name)
                        if not waiting:
                            self._check_queue_locked(key, name)
                            table.add_waiter(key)
                            waiting = True
                        remaining = admit_deadline - time.monotonic()
                        table.changed.wait(min(max(remaining, 0.0), ADMISSION_POLL_SECONDS))
                        # Settings or learned footprints may have changed meanwhile.
                        launch = None
                        continue
                # Outside the lock: reading the GGUF header and the settings file, asking the
                # RPC workers (if any) for their memory.
                launch = self._planner.plan(record, mode)
                workers = launch.memory.workers
                if workers is not None and workers.unreachable:
                    self.stats.record_refusal("rpc_unreachable")
                    error = workers.error(name)
                    error.retry_after = math.ceil(PROBE_TIMEOUT_SECONDS)
                    log.warning("rpc workers unreachable model=%s message=%r", name, error.message)
                    raise error
        except BaseException:
            if waiting:
                self.stats.observe_wait(name, time.monotonic() - began)
            raise
        finally:
            if waiting:
                with table.changed:
                    table.remove_waiter(key)
        deadline = time.monotonic() + self._config.load_timeout_seconds
        if owner:
            if waiting:
                self.stats.observe_wait(name, time.monotonic() - began)
            self._start_runner(runner, victims, deadline)
            return self._lease(runner)
        return self._wait_for_start(runner, deadline, name, began if waiting else None)

    def _admit_locked(self, launch: LaunchPlan, admit: Admit, default_model: bool) -> Runner:
        """Evict the victims and put the new runner (not spawned yet) into the table."""
        for victim, reason in admit.victims:
            log.info("evicting runner id=%s model=%s reason=%s for=%s",
                     victim.runner_id, victim.model_name, reason, launch.model_name)
            self._table.evict(victim, reason)
        process = RunnerProcess(
            runner_id=launch.runner_id,
            label=f"{launch.model_name!r} ({launch.mode})",
            argv=launch.argv,
            socket_path=launch.socket_path,
            log_path=launch.log_path,
            runtime_dir=self._runners_dir,
            launcher=self._launcher,
            on_exit=self._on_process_exit,
            env=dict(launch.env) if launch.env is not None else None,
        )
        runner = Runner(
            launch,
            process,
            keep_alive=launch.keep_alive(self._config.keep_alive, default_model=default_model),
            default_model=default_model,
        )
        self._table.add(runner)
        return runner

    def _refuse(self, refusal: Refusal, name: str) -> None:
        """Count and raise a refusal; a 503 says when to retry (``Retry-After``)."""
        self.stats.record_refusal(refusal.reason)
        log.warning("admission refused model=%s reason=%s message=%r",
                    name, refusal.reason, refusal.error.message)
        if refusal.error.status == 503:
            refusal.error.retry_after = gate.retry_after_seconds(self.stats.mean_load_seconds())
        raise refusal.error

    def _check_queue_locked(self, key: tuple[str, str], name: str) -> None:
        limit = self._config.max_queue
        if limit <= 0:
            return
        depth = gate.queue_depth(self._table.get(key), self._table.waiting(key))
        if depth < limit:
            return
        self.stats.record_refusal("queue_full")
        retry = gate.retry_after_seconds(self.stats.mean_load_seconds())
        raise TooManyRequestsError(
            f"{depth} requests already wait for model {name!r} (DMR_MAX_QUEUE is {limit}); "
            f"retry in {retry}s",
            retry_after=retry,
            param="model",
        )

    def _start_runner(self, runner: Runner, victims: list[Runner], deadline: float) -> None:
        """Stop the victims, then spawn and wait for ``runner`` (the caller owns its start)."""
        process = runner.process
        try:
            if victims:
                self._finish_evictions(victims)
            # A shutdown meanwhile stopped the process already: spawn refuses a stopped one.
            process.spawn()
            self.stats.record_start()
            self.stats.set_memory(runner.model_name, runner.mode, runner.plan.estimate.ram_bytes)
            elapsed = process.wait_ready(deadline, grace_seconds=self._config.stop_grace_seconds)
            self.stats.observe_load(elapsed)
            # PERF: off the request's path (a process-tree walk, maybe a footprints.json
            # write), so the first token does not wait for it. It runs alongside the first
            # request: what that prompt has touched by then only makes the learned ready
            # footprint a little larger, never smaller.
            threading.Thread(
                target=self._measure,
                args=(runner,),
                kwargs={"ready": True},
                name=f"runner-measure-{runner.runner_id}",
                daemon=True,
            ).start()
            if runner.plan.workers is not None:
                runner.placement = read_placement(runner.launch.log_path)
                if runner.placement is not None:
                    log.info("runner placement id=%s model=%s devices=%s", runner.runner_id,
                             runner.model_name, runner.placement.describe())
            with self._table.changed:
                self._table.check_open()
                runner.ready_at = runner.last_used = time.monotonic()
                self._table.changed.notify_all()
        except BaseException as ex:
            failure = self._start_failed(runner, ex)
            if failure is ex:
                raise
            raise failure from ex

    def _start_failed(self, runner: Runner, ex: BaseException) -> BaseException:
        """Record a failed start, wake the runner's waiters, stop it; return what to raise."""
        closed = self._table.closed
        failure: BaseException = ex
        if isinstance(ex, OrchestratorError) and closed:
            failure = ServiceUnavailableError(SHUTTING_DOWN)
        if isinstance(ex, EngineCrashedError) and not closed:
            signum = ex.details.get("signal")
            if isinstance(signum, int):
                self.crashes.record(signum, runner.model_id, ex)
        if isinstance(ex, RunnerTimeoutError):
            self.stats.record_start_failure("timeout")
        elif isinstance(ex, RunnerStartError) and not closed:
            self.stats.record_start_failure("error")
        with self._table.changed:
            runner.leases -= 1
            runner.error = (
                failure
                if isinstance(failure, OrchestratorError)
                else RunnerStartError(f"cannot start the runner for {runner.label}: {ex!r}")
            )
            self._table.remove(runner, "crash")
            self._table.changed.notify_all()
        if not runner.process.exited.is_set():
            runner.process.stop(self._config.stop_grace_seconds)
        self._launcher.prepare()  # the failed start may have used the spare wrapper
        return failure

    def _wait_for_start(
        self, runner: Runner, deadline: float, name: str, waited_since: float | None
    ) -> Lease:
        began = time.monotonic() if waited_since is None else waited_since
        # A request counts as having waited if admission held it or the runner was loading.
        waits = waited_since is not None or not runner.settled
        try:
            with self._table.changed:
                settled = self._table.changed.wait_for(
                    lambda: runner.settled, max(0.0, deadline - time.monotonic())
                )
                if not settled or runner.error is not None:
                    runner.leases -= 1
                    self._table.changed.notify_all()
            if settled and runner.error is None:
                return self._lease(runner)
            if runner.error is not None:
                raise copy_error(runner.error)
            raise RunnerTimeoutError(
                f"runner for {runner.label} was not ready within "
                f"{self._config.load_timeout_seconds:.0f}s; retry later or raise "
                f"load_timeout_seconds",
            )
        finally:
            if waits:
                self.stats.observe_wait(name, time.monotonic() - began)

    def _lease(self, runner: Runner) -> Lease:
        return Lease(
            runner.info(),
            release=lambda: self._release(runner),
            report_crash=lambda: self._check_crash(runner),
        )

    def _release(self, runner: Runner) -> None:
        now = time.monotonic()
        with self._table.changed:
            runner.leases -= 1
            wake = self._table.has_waiters()
            if runner.leases == 0:
                runner.last_used = now
                # PERF: wake the chores thread only when this runner expires before it looks
                # next (keep-alive 0, say): a wake-up per request cost a thread switch and a
                # table scan, a tenth of the worker's CPU per small request (issue 18).
                wake = wake or (
                    runner.keep_alive >= 0 and self.chores.must_wake_for(now + runner.keep_alive)
                )
            measured_at = runner.usage.measured_at
            measure = (
                self._table.holds(runner)
                and runner.ready_at is not None
                and (measured_at is None or now - measured_at >= MEASURE_INTERVAL_SECONDS)
            )
            if measure:
                runner.usage.measured_at = now  # one measurement at a time per interval
            if wake:
                self._table.changed.notify_all()
        # The next runner start gets a wrapper started ahead; started here, once the request
        # is answered, so it never competes with a load or a first token for the CPU.
        self._launcher.prepare()
        if measure:
            self._measure(runner, ready=False)

    def _check_crash(self, runner: Runner) -> None:
        if runner.process.exited.wait(CRASH_CHECK_SECONDS):
            with self._table.changed:
                self._table.drop_defunct(runner)
                self._table.changed.notify_all()
        else:
            log.info("runner connection lost but process alive id=%s", runner.runner_id)

    def _on_process_exit(self, process: RunnerProcess) -> None:
        with self._table.changed:
            for runner in self._table.all():
                if runner.process is process:
                    self._table.drop_defunct(runner)
            self._table.changed.notify_all()

    # --- memory ----------------------------------------------------------------------------

    def _measure(self, runner: Runner, *, ready: bool) -> None:
        """Measure the runner's RSS and VRAM; learn them for its (model, argv). Never raises."""
        pid = runner.process.pid
        if pid is None:
            return
        try:
            footprint, learned = self.memory.measure(
                runner.model_id, runner.plan.key, pid, ready=ready
            )
        except Exception:  # measuring is an optimisation; a probe bug must not fail a request
            log.exception("measuring runner failed id=%s", runner.runner_id)
            return
        if footprint is None:
            return
        with self._table.changed:
            runner.usage.add(footprint, time.monotonic())
            peak_rss = runner.usage.peak_rss
        log.info(
            "runner measured id=%s rss=%d file=%d vram=%d estimate=%d learned_max=%d",
            runner.runner_id, footprint.rss_bytes, footprint.file_bytes, footprint.vram_bytes,
            runner.plan.estimate.ram_bytes, learned.max_rss if learned else 0,
        )  # fmt: skip
        self.stats.set_memory(
            runner.model_name, runner.mode, runner.plan.estimate.ram_bytes, peak_rss
        )

    def _finish_evictions(self, victims: list[Runner]) -> None:
        """Stop evicted runners (already out of the table), then let waiters re-check."""
        try:
            self._stop_runners(victims)
        finally:
            with self._table.changed:
                self._table.evicted_gone(victims)
                if any(v.usage.peak_vram or v.plan.local_need.vram_bytes for v in victims):
                    self._settle_until = time.monotonic() + VRAM_SETTLE_SECONDS
                self._table.changed.notify_all()

    def _held_workers(self) -> dict[str, str]:
        """Return the RPC workers our runners (live or stopping) hold, with their labels."""
        with self._table.changed:
            runners = [*self._table.runners(), *self._table.stopping]
        return {
            endpoint: runner.label for runner in runners for endpoint in runner.plan.rpc_workers
        }

    def _evict_for_pressure(self, ram_deficit: int, vram_deficit: int) -> None:
        with self._table.changed:
            if self._table.closed:
                return
            victims = gate.pressure_victims(self._table.runners(), ram_deficit, vram_deficit)
            for victim in victims:
                log.warning("evicting runner id=%s model=%s reason=pressure",
                            victim.runner_id, victim.model_name)
                self._table.evict(victim, "pressure")
        if not victims:
            log.info("memory pressure but no idle, unpinned runner to evict")
            return
        self._finish_evictions(victims)

    def _stop_runners(self, runners: list[Runner]) -> None:
        stop_processes([r.process for r in runners], self._config.stop_grace_seconds)

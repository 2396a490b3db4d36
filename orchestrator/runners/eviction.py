"""Admission, queue bounds, evictions and measurement: the memory side of the scheduler.

:class:`AdmissionMixin` is part of :class:`~orchestrator.runners.scheduler.Scheduler` (it holds
no state of its own): the admission decision made under the scheduler's lock, the per-model
queue bound, stopping evicted runners, the pressure sampler's evictions, reloading the default
model, and measuring runners. The rules themselves live in :mod:`~orchestrator.runners.policy`
and :class:`~orchestrator.memory.guard.MemoryGuard`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.config import Config
from orchestrator.errors import (
    OrchestratorError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from orchestrator.memory.guard import Verdict
from orchestrator.runners import policy
from orchestrator.runners.admission import RunnerMemory, RunnerPlan
from orchestrator.runners.configs import RunnerSettings
from orchestrator.runners.info import StoreLike, short_id
from orchestrator.runners.lease import Lease, RunnerEntry
from orchestrator.runners.stats import RunnerStats

if TYPE_CHECKING:
    from orchestrator.runners.info import RecordLike

log = logging.getLogger(__name__)

VRAM_SETTLE_SECONDS = 5.0
"""After an eviction NVML may show the freed GPU memory this late; refusals wait it out."""
DEFAULT_MODEL_IDLE_SECONDS = 10.0
"""How long nothing must be loaded before ``default_model`` is loaded again."""
DEFAULT_MODEL_RETRY_SECONDS = 300.0
"""After the default model failed to load, how long before it is tried again."""


class Prepared:
    """What a runner start needs, worked out outside the lock before admission.

    Attributes:
        settings: The ``_configure`` settings of the model and mode, if any.
        bundle: The model's runtime bundle.
        plan: Argv, estimate and need (:class:`~orchestrator.runners.admission.RunnerPlan`).
    """

    def __init__(self, settings: RunnerSettings | None, bundle: Any, plan: RunnerPlan) -> None:
        """Hold the three."""
        self.settings = settings
        self.bundle = bundle
        self.plan = plan


class Refusal:
    """Why admission said no now.

    Attributes:
        error: What to raise if the request stops waiting.
        may_wait: Whether waiting may help (busy runners, a runner being stopped).
        reason: The metrics reason (``busy``, ``insufficient``, ``too_large``).
    """

    def __init__(self, error: OrchestratorError, *, may_wait: bool, reason: str) -> None:
        """Hold the three."""
        self.error = error
        self.may_wait = may_wait
        self.reason = reason


class AdmissionMixin:
    """The scheduler's admission, eviction and measurement methods (see the module doc)."""

    # Set by Scheduler.__init__; declared here for readers and type checkers.
    _config: Config
    _store: StoreLike
    _cond: threading.Condition
    _runners: dict[tuple[str, str], RunnerEntry]
    _stopping: list[RunnerEntry]
    _waiting: dict[tuple[str, str], int]
    _settle_until: float
    _empty_since: float | None
    _default_loader: threading.Thread | None
    _default_failed_at: float | None
    _sequence: int
    _closed: bool
    memory: RunnerMemory
    stats: RunnerStats

    if TYPE_CHECKING:

        def _remove_locked(self, runner: RunnerEntry, reason: str) -> None: ...
        def _stop_runners(self, runners: Iterable[RunnerEntry], grace_seconds: float) -> None: ...
        def _acquire(
            self, record: RecordLike, mode: str, *, default_model: bool = False
        ) -> Lease: ...

    def _admit_locked(
        self, key: tuple[str, str], name: str, prepared: Prepared, default_model: bool
    ) -> tuple[RunnerEntry, list[RunnerEntry]] | Refusal:
        """Decide under the lock; on success the loading entry is in the table."""
        now = time.monotonic()
        entries = [r for r in self._runners.values() if not r.is_defunct]
        resident = [policy.resident(r) for r in entries]
        resident += [policy.resident(r, stopping=True) for r in self._stopping]
        decision = self.memory.guard.check(prepared.plan.need, resident=resident, model=name)
        if not decision.admitted:
            error = decision.error()
            assert error is not None
            settling = now < self._settle_until
            may_wait = decision.verdict is Verdict.BUSY or settling
            return Refusal(error, may_wait=may_wait, reason=decision.verdict.value)
        by_id = {r.runner_id: r for r in entries}
        memory_victims = [by_id[runner_id] for runner_id in decision.evict]
        limit = self._config.runner_limit
        excess = len(entries) + len(self._stopping) - len(memory_victims) + 1 - limit
        count_victims = policy.count_victims(
            entries, excess, exclude=memory_victims, now=now,
            min_residency=self.memory.guard.min_residency_seconds,
        )  # fmt: skip
        if count_victims is None:
            error = ServiceUnavailableError(
                f"all {limit} runner slots are busy or just started, so model {name!r} cannot "
                f"start now; retry later, unload a model, or raise DMR_MAX_RUNNERS"
            )
            return Refusal(error, may_wait=True, reason="busy")
        for victim, reason in [(v, "memory") for v in memory_victims] + [
            (v, "count") for v in count_victims
        ]:
            log.info("evicting runner id=%s model=%s reason=%s for=%s",
                     victim.runner_id, victim.model_name, reason, name)
            self._remove_locked(victim, "evicted")
            self.stats.record_eviction(reason)
            self._stopping.append(victim)
        settings = prepared.settings
        self._sequence += 1
        runner = RunnerEntry(
            runner_id=f"{key[1][0]}{self._sequence}-{short_id(key[0])[:8]}",
            model_id=key[0],
            model_name=name,
            mode=key[1],
        )
        runner.plan = prepared.plan
        runner.slots = max(prepared.plan.estimate.parallel, 1)
        runner.pinned = settings is not None and settings.pinned
        runner.default_model = default_model
        runner.refcount = 1
        self._runners[key] = runner
        return runner, memory_victims + count_victims

    def _refuse(self, refusal: Refusal, name: str) -> NoReturn:
        """Count and raise a refusal; a 503 says when to retry (``Retry-After``)."""
        self.stats.record_refusal(refusal.reason)
        log.warning("admission refused model=%s reason=%s message=%r",
                    name, refusal.reason, refusal.error.message)
        if refusal.error.status == 503:
            # NOTE(memory): read by the API's error renderer, as TooManyRequestsError's is.
            retry = policy.retry_after_seconds(self.stats.mean_load_seconds())
            refusal.error.headers = {"Retry-After": str(retry)}  # type: ignore[attr-defined]
        raise refusal.error

    def _check_queue_locked(self, key: tuple[str, str], name: str) -> None:
        limit = self._config.max_queue
        if limit <= 0:
            return
        depth = policy.queue_depth(self._runners.get(key), self._waiting.get(key, 0))
        if depth < limit:
            return
        self.stats.record_refusal("queue_full")
        retry = policy.retry_after_seconds(self.stats.mean_load_seconds())
        raise TooManyRequestsError(
            f"{depth} requests already wait for model {name!r} (DMR_MAX_QUEUE is {limit}); "
            f"retry in {retry}s",
            retry_after=retry,
            param="model",
        )

    def _measure(self, runner: RunnerEntry, *, ready: bool) -> None:
        """Measure the runner's RSS and VRAM; learn them for its (model, argv). Never raises."""
        pid = runner.info.pid if runner.info is not None else None
        if pid is None or runner.plan is None:
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
        with self._cond:
            runner.measured = footprint
            runner.measured_at = time.monotonic()
            runner.peak_rss = max(runner.peak_rss, footprint.rss_bytes)
            runner.peak_vram = max(runner.peak_vram, footprint.vram_bytes)
        log.info(
            "runner measured id=%s rss=%d file=%d vram=%d estimate=%d learned_max=%d",
            runner.runner_id, footprint.rss_bytes, footprint.file_bytes, footprint.vram_bytes,
            runner.plan.estimate.ram_bytes, learned.max_rss if learned else 0,
        )
        self.stats.set_memory(
            runner.model_name, runner.mode, runner.plan.estimate.ram_bytes, runner.peak_rss
        )

    def _finish_evictions(self, victims: list[RunnerEntry]) -> None:
        """Stop evicted runners (already out of the table), then let waiters re-check."""
        try:
            self._stop_runners(victims, self._config.stop_grace_seconds)
        finally:
            with self._cond:
                for victim in victims:
                    if victim in self._stopping:
                        self._stopping.remove(victim)
                if any(v.peak_vram or (v.plan and v.plan.need.vram_bytes) for v in victims):
                    self._settle_until = time.monotonic() + VRAM_SETTLE_SECONDS
                self._cond.notify_all()

    def _evict_for_pressure(self, ram_deficit: int, vram_deficit: int) -> None:
        with self._cond:
            if self._closed:
                return
            victims = policy.pressure_victims(self._runners.values(), ram_deficit, vram_deficit)
            for victim in victims:
                log.warning("evicting runner id=%s model=%s reason=pressure",
                            victim.runner_id, victim.model_name)
                self._remove_locked(victim, "evicted")
                self.stats.record_eviction("pressure")
                self._stopping.append(victim)
        if not victims:
            log.info("memory pressure but no idle, unpinned runner to evict")
            return
        self._finish_evictions(victims)

    def _load_default_model_if_idle(self) -> None:
        """Load ``default_model`` once nothing has been loaded for a while (sampler thread)."""
        name = self._config.default_model
        if not name:
            return
        now = time.monotonic()
        with self._cond:
            busy = self._closed or self._runners or self._stopping or self._waiting
            loader = self._default_loader
            failed = self._default_failed_at
            if failed is not None and now - failed < DEFAULT_MODEL_RETRY_SECONDS:
                return
            if busy or (loader is not None and loader.is_alive()):
                self._empty_since = None
                return
            if self._empty_since is None:
                self._empty_since = now
                return
            if now - self._empty_since < DEFAULT_MODEL_IDLE_SECONDS:
                return
            self._empty_since = None
            self._default_loader = threading.Thread(
                target=self._load_default_model, args=(name,), name="default-model", daemon=True
            )
            self._default_loader.start()

    def _load_default_model(self, name: str) -> None:
        try:
            record = self._store.find(name)
            if record is None:
                log.warning("default model not in the store, retrying in %.0fs model=%s",
                            DEFAULT_MODEL_RETRY_SECONDS, name)
            else:
                log.info("loading the default model model=%s", name)
                self._acquire(record, "completion", default_model=True).release()
                return
        except OrchestratorError as ex:
            if self._closed:
                return
            log.warning("default model not loaded, retrying in %.0fs model=%s reason=%s",
                        DEFAULT_MODEL_RETRY_SECONDS, name, ex.message)
        with self._cond:
            self._default_failed_at = time.monotonic()

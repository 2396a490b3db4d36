"""The scheduler's management API: ps, unload, configure, and the memory surfaces.

:class:`ManagementMixin` is part of :class:`~orchestrator.runners.scheduler.Scheduler` (it holds
no state of its own): what ``/engines/ps``, ``/engines/unload``, ``/engines/_configure``,
``GET /models/{ref}`` (``memory``), ``POST /models/create`` (the can-never-fit warning) and
``/metrics`` (queue depths) ask of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.config import Config
from orchestrator.errors import ConflictError, OrchestratorError
from orchestrator.runners import policy
from orchestrator.runners.admission import RunnerMemory
from orchestrator.runners.configs import RunnerConfigStore, RunnerSettings
from orchestrator.runners.info import (
    RecordLike,
    RunnerInfo,
    StoreLike,
    configuration_entry,
    id_matches,
    memory_entry,
    ps_entry,
)
from orchestrator.runners.lease import RunnerEntry
from orchestrator.runners.stats import RunnerStats
from orchestrator.store.reference import familiar_name

if TYPE_CHECKING:
    from orchestrator.runners.eviction import Prepared

log = logging.getLogger(__name__)


class ManagementMixin:
    """The scheduler's management methods (see the module doc)."""

    # Set by Scheduler.__init__; declared here for readers and type checkers.
    _config: Config
    _store: StoreLike
    _cond: threading.Condition
    _runners: dict[tuple[str, str], RunnerEntry]
    _waiting: dict[tuple[str, str], int]
    _names: dict[tuple[str, str], str]
    configs: RunnerConfigStore
    memory: RunnerMemory
    stats: RunnerStats

    if TYPE_CHECKING:

        def _remove_locked(self, runner: RunnerEntry, reason: str) -> None: ...
        def _stop_runners(self, runners: Iterable[RunnerEntry], grace_seconds: float) -> None: ...
        def _prepare(self, record: RecordLike, mode: str) -> Prepared: ...

    def ps(self) -> list[dict[str, Any]]:
        """Return ``GET /engines/ps`` entries (DMR's fields plus pid, context, socket, memory)."""
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
                    memory=memory_entry(
                        runner.plan, runner.measured, runner.peak_rss, runner.pinned
                    ),
                )
                for runner in runners
            ]

    def queue_depths(self) -> dict[str, int]:
        """Return how many requests wait now, by model name (for ``/metrics``)."""
        with self._cond:
            depths: dict[str, int] = {}
            for key in set(self._waiting) | set(self._runners):
                name = self._names.get(key, key[0])
                depth = policy.queue_depth(self._runners.get(key), self._waiting.get(key, 0))
                depths[name] = depths.get(name, 0) + depth
            return depths

    def memory_for(self, record: RecordLike, mode: str = "completion") -> dict[str, Any]:
        """Return the memory a runner of ``record`` would need with its current settings.

        For ``GET /models/{ref}``: the estimate breakdown, the learned footprint if any, and
        ``never_fits``, the reason it can never run on this host (``""`` when it can).

        Raises:
            InvalidRequestError: Its settings name a KV cache type the engine does not know.
        """
        plan = self._prepare(record, mode).plan
        name = familiar_name(record.tags[0]) if record.tags else record.id
        body = memory_entry(plan, None, 0, False)
        del body["measured"], body["pinned"]
        body["learned"] = plan.learned.to_json() if plan.learned is not None else None
        body["never_fits"] = self.memory.guard.never_fits(plan.need, model=name)
        return body

    def never_fits(self, record: RecordLike) -> str:
        """Return why ``record`` can never run on this host (``""`` when it could).

        For ``POST /models/create``'s warning; never raises (a model whose header cannot be
        read gets ``""``: the engine reports that better when it loads).
        """
        try:
            return str(self.memory_for(record)["never_fits"])
        except OrchestratorError as ex:
            log.info("no memory verdict for model=%s reason=%s", record.id, ex.message)
            return ""

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
                self.stats.record_eviction("manual")
        self._stop_runners(victims, self._config.stop_grace_seconds)
        with self._cond:
            self._cond.notify_all()
        return len(victims)

    def configure(self, record: RecordLike, settings: RunnerSettings) -> None:
        """Store ``settings`` for ``record`` in ``settings.mode``; restart an idle runner.

        The settings persist across unload and daemon restarts. An idle runner of that key is
        stopped so the next request starts with the new arguments; a change of ``keep_alive``
        or ``pinned`` only is applied to the running runner, busy or not.

        Raises:
            ConflictError: A runner for that model and mode is loading or serving requests
                and the change needs a restart.
            StoreError: The settings file cannot be written.
        """
        key = (record.id, settings.mode)
        victim: RunnerEntry | None = None
        with self._cond:
            runner = self._runners.get(key)
            live = runner is not None and not runner.is_defunct
            current = self.configs.get(record.id, settings.mode) or RunnerSettings(
                mode=settings.mode
            )
            if live and settings.same_process(current):
                assert runner is not None
                self.configs.put(record.id, settings)
                runner.pinned = settings.pinned
                if runner.process is not None:
                    runner.keep_alive = (
                        settings.keep_alive
                        if settings.keep_alive is not None
                        else (-1.0 if runner.default_model else self._config.keep_alive)
                    )
                self._cond.notify_all()
                return
            if live and runner is not None and (runner.refcount or runner.loading):
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

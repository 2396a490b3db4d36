"""What the management routes ask of the runners, answered as typed records.

``/engines/ps`` (:meth:`RunnerManagement.ps`), ``/engines/unload``, ``/engines/_configure``
(:meth:`~RunnerManagement.configure`, :meth:`~RunnerManagement.configurations`),
``GET /models/{ref}``'s ``memory`` and ``POST /models/create``'s can-never-fit warning
(:meth:`~RunnerManagement.memory_for`, :meth:`~RunnerManagement.never_fits`), and
``/metrics`` (:meth:`~RunnerManagement.active_runners`, :meth:`~RunnerManagement.queue_depths`).
The JSON shapes DMR's clients read are built from these records in ``orchestrator.api``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from orchestrator.errors import ConflictError, OrchestratorError
from orchestrator.memory.footprint import Footprint
from orchestrator.runners import gate
from orchestrator.runners.info import RecordLike, RunnerInfo, StoreLike, id_matches
from orchestrator.runners.launch import LaunchPlanner
from orchestrator.runners.memoryplan import MemoryPlan, MemoryPlanner
from orchestrator.runners.persisted import RunnerConfigStore, RunnerSettings
from orchestrator.runners.rpc import Placement
from orchestrator.runners.table import Runner, RunnerTable
from orchestrator.settings import Config
from orchestrator.store.reference import model_label

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunnerMemoryView:
    """What one runner was planned to need and was measured to hold.

    Attributes:
        plan: Its memory plan (estimate, learned footprint, admission figure).
        measured: The latest measurement, ``None`` until measured.
        peak_rss: Largest RSS measured.
        pinned: Never evicted for another model.
    """

    plan: MemoryPlan
    measured: Footprint | None
    peak_rss: int
    pinned: bool


@dataclasses.dataclass(frozen=True)
class RunnerStatus:
    """One runner as ``/engines/ps`` lists it.

    Attributes:
        info: Its public facts (``pid`` is ``None`` until spawned).
        in_use: A request holds it.
        loading: Not ready yet.
        last_used: Wall-clock time of the last lease given back; ``None`` if never.
        keep_alive: Idle seconds before it stops (``-1`` never).
        memory: Its memory view.
        placement: Where its layers went (runners with RPC workers, once ready).
    """

    info: RunnerInfo
    in_use: bool
    loading: bool
    last_used: float | None
    keep_alive: float
    memory: RunnerMemoryView
    placement: Placement | None = None


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """What a runner of a model would need with its current settings.

    Attributes:
        plan: The memory plan.
        never_fits: Why it can never run on this host (``""`` when it can).
    """

    plan: MemoryPlan
    never_fits: str


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One stored ``_configure`` entry of a model still in the store."""

    model: str
    model_id: str
    settings: RunnerSettings


def _status(runner: Runner, now_mono: float, now_wall: float) -> RunnerStatus:
    released = runner.ready_at is not None and runner.leases == 0
    return RunnerStatus(
        info=runner.info(),
        in_use=runner.leases > 0,
        loading=runner.loading,
        # Monotonic clocks order and time-out runners; the wall clock is only for display.
        last_used=now_wall - (now_mono - runner.last_used) if released else None,
        keep_alive=runner.keep_alive,
        memory=RunnerMemoryView(
            plan=runner.plan,
            measured=runner.usage.latest,
            peak_rss=runner.usage.peak_rss,
            pinned=runner.pinned,
        ),
        placement=runner.placement,
    )


class RunnerManagement:
    """The management surface over the runner table.

    Args:
        config: Daemon settings (keep-alive, stop grace).
        store: The model store (to name stored settings' models).
        table: The runner table.
        configs: The persisted ``_configure`` settings.
        planner: Plans runner starts (for memory reports).
        memory: Memory planning (the guard's never-fits verdict).
        stop_runners: Stops runners already out of the table.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: StoreLike,
        table: RunnerTable,
        configs: RunnerConfigStore,
        planner: LaunchPlanner,
        memory: MemoryPlanner,
        stop_runners: Callable[[list[Runner]], None],
    ) -> None:
        self._config = config
        self._store = store
        self._table = table
        self._configs = configs
        self._planner = planner
        self._memory = memory
        self._stop_runners = stop_runners

    def ps(self) -> list[RunnerStatus]:
        """Return every live runner, by model name and mode."""
        now_mono, now_wall = time.monotonic(), time.time()
        with self._table.changed:
            runners = sorted(self._table.runners(), key=lambda r: (r.model_name, r.mode))
            return [_status(runner, now_mono, now_wall) for runner in runners]

    def active_runners(self) -> list[RunnerInfo]:
        """Return the ready runners (for ``/metrics`` aggregation)."""
        with self._table.changed:
            return [r.info() for r in self._table.runners() if r.ready_at is not None]

    def queue_depths(self) -> dict[str, int]:
        """Return how many requests wait now, by model name (for ``/metrics``)."""
        with self._table.changed:
            depths: dict[str, int] = {}
            for key, name, waiters in self._table.queue_keys():
                depth = gate.queue_depth(self._table.get(key), waiters)
                depths[name] = depths.get(name, 0) + depth
            return depths

    def rpc_status(self) -> str:
        """Return what the daemon last learned of its RPC workers, one line (``""``: none)."""
        return self._planner.rpc_status()

    def memory_for(self, record: RecordLike, mode: str = "completion") -> MemoryReport:
        """Return the memory a runner of ``record`` would need with its current settings.

        Raises:
            InvalidRequestError: Its settings name a KV cache type the engine does not know.
        """
        plan = self._planner.plan(record, mode).memory
        name = model_label(record.tags, record.id)
        return MemoryReport(
            plan,
            self._memory.guard.never_fits(
                plan.need, model=name, remote_bytes=plan.remote_capacity
            ),
        )

    def never_fits(self, record: RecordLike) -> str:
        """Return why ``record`` can never run on this host (``""`` when it could).

        For ``POST /models/create``'s warning; never raises (a model whose header cannot be
        read gets ``""``: the engine reports that better when it loads).
        """
        try:
            return self.memory_for(record).never_fits
        except OrchestratorError as ex:
            log.info("no memory verdict for model=%s reason=%s", record.id, ex.message)
            return ""

    def unload(self, *, model_ids: Sequence[str] = (), all: bool = False) -> int:
        """Stop idle runners of the given models (or all); return how many were stopped.

        Runners with leases or still loading are never unloaded (DMR's rule). Settings stored
        by :meth:`configure` are kept. ``model_ids`` are full or short model IDs.
        """
        with self._table.changed:
            victims = [
                runner
                for runner in self._table.all()
                if (all or any(id_matches(runner.model_id, wanted) for wanted in model_ids))
                and runner.leases == 0
                and not runner.loading
            ]
            for runner in victims:
                self._table.remove(runner, "unload", eviction="manual")
        self._stop_runners(victims)
        with self._table.changed:
            self._table.changed.notify_all()
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
        victim: Runner | None = None
        with self._table.changed:
            runner = self._table.get(key)
            live = runner is not None and not runner.is_defunct
            current = self._configs.get(record.id, settings.mode) or RunnerSettings(
                mode=settings.mode
            )
            if runner is not None and live and settings.same_process(current):
                self._configs.put(record.id, settings)
                runner.pinned = settings.pinned
                runner.keep_alive = (
                    settings.keep_alive
                    if settings.keep_alive is not None
                    else (-1.0 if runner.default_model else self._config.keep_alive)
                )
                self._table.changed.notify_all()
                return
            if runner is not None and live and (runner.leases or runner.loading):
                raise ConflictError(
                    f"runner for {runner.label} is active; retry when its requests have finished"
                )
            changed = self._configs.put(record.id, settings)
            if changed and runner is not None and self._table.remove(runner, "configure"):
                victim = runner
        if victim is not None:
            log.info("runner restarts with new settings id=%s", victim.runner_id)
            self._stop_runners([victim])

    def configurations(self, model_id: str | None = None) -> list[Configuration]:
        """Return the stored settings (of ``model_id`` only, when given).

        Entries of models no longer in the store are left out.
        """
        entries = []
        for stored_id, settings in self._configs.items():
            if model_id is not None and not id_matches(stored_id, model_id):
                continue
            record = self._store.find(stored_id)
            if record is None:
                continue
            model = record.tags[0] if record.tags else stored_id
            entries.append(Configuration(model, stored_id, settings))
        return entries

"""The admission gate: may a new runner start now, and which idle runners must go first?

Pure decisions over a snapshot of the runner table (the caller holds the table's lock and acts
on the answer); nothing here starts or stops a process, so every rule is tested without one.

* A runner is *evictable* for another model when it has no lease, is ready, is not pinned, and
  is at least the minimum residency old (``DMR_MIN_RESIDENCY``), so two models alternating on a
  small machine do not thrash. Least recently used goes first.
* :meth:`AdmissionGate.decide` asks the :class:`~orchestrator.memory.guard.MemoryGuard` whether
  the need fits next to every resident runner (loading and stopping ones included), then
  applies the runner-count limit: :class:`Admit` with the victims, or :class:`Refusal` saying
  whether waiting may help.
* A runner with llama.cpp RPC workers needs them to itself (``rpc-server`` serves one client
  at a time): runners holding any of them are stopped first when idle (metrics reason ``rpc``);
  when they are busy the request waits (503 at the end of ``DMR_MAX_WAIT``).
* Memory pressure evicts idle, unpinned runners regardless of age (the host is short now),
  least recently used first, until the deficit is covered.
* A request *waits* when its runner is loading, or serving more requests than it has slots
  (llama-server queues those), or admission is waiting for memory or a runner slot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from orchestrator.errors import OrchestratorError, ServiceUnavailableError
from orchestrator.memory.estimate import MemoryEstimate
from orchestrator.memory.guard import MemoryGuard, ResidentRunner, Verdict
from orchestrator.runners.table import Runner


def resident(runner: Runner, *, stopping: bool = False) -> ResidentRunner:
    """Return the guard's view of ``runner``: what it holds or has reserved.

    RAM and VRAM are the larger of the need it was admitted with and its peak measurement
    (a runner may grow past a measurement, never below its reservation); the part of its
    need placed on RPC workers is not counted (those workers serve only it). A runner being
    stopped counts as loading: its memory is on the way back but not free yet.
    """
    need = runner.plan.local_need
    usage = runner.usage
    ram = max(need.ram_bytes, usage.peak_rss)
    # What sits on llama.cpp RPC workers is not this host's: local_need leaves it out.
    vram = max(need.vram_bytes, usage.peak_vram)
    if usage.latest is not None:
        file_backed = usage.latest.file_bytes
    elif need.source == "estimate":
        # Mapped weights are file pages: the kernel counts them as available already.
        file_backed = need.ram.weights
    else:
        file_backed = 0
    return ResidentRunner(
        runner_id=runner.runner_id,
        model=runner.model_name,
        ram_bytes=ram,
        vram_bytes=vram,
        file_ram_bytes=min(file_backed, ram),
        in_flight=runner.leases,
        loading=runner.loading or stopping,
        pinned=runner.pinned,
        last_used=runner.last_used,
        started=runner.ready_at if runner.ready_at is not None else runner.admitted_at,
    )


def is_evictable(runner: Runner, now: float, min_residency: float) -> bool:
    """Return whether ``runner`` may be stopped to make room for another model."""
    return (
        runner.is_idle
        and not runner.pinned
        and runner.ready_at is not None
        and now - runner.ready_at >= min_residency
    )


def count_victims(
    runners: Iterable[Runner],
    excess: int,
    *,
    exclude: Sequence[Runner],
    now: float,
    min_residency: float,
) -> list[Runner] | None:
    """Return ``excess`` runners to stop for the runner-count limit, LRU first, or ``None``.

    ``None`` means too few are evictable now: the request must wait.
    """
    if excess <= 0:
        return []
    candidates = sorted(
        (r for r in runners if r not in exclude and is_evictable(r, now, min_residency)),
        key=lambda r: r.last_used,
    )
    if len(candidates) < excess:
        return None
    return candidates[:excess]


def pressure_victims(
    runners: Iterable[Runner], ram_deficit: int, vram_deficit: int
) -> list[Runner]:
    """Return idle, unpinned runners to stop, LRU first, until they cover the deficits."""
    chosen: list[Runner] = []
    freed_ram = freed_vram = 0
    for runner in sorted(
        (r for r in runners if r.is_idle and not r.pinned), key=lambda r: r.last_used
    ):
        if freed_ram >= ram_deficit and freed_vram >= vram_deficit:
            break
        view = resident(runner)
        helps_ram = freed_ram < ram_deficit and view.ram_bytes > 0
        helps_vram = freed_vram < vram_deficit and view.vram_bytes > 0
        if helps_ram or helps_vram:
            chosen.append(runner)
            freed_ram += view.ram_bytes
            freed_vram += view.vram_bytes
    return chosen


def queue_depth(runner: Runner | None, admission_waiters: int) -> int:
    """Return how many requests wait for a model: for admission, a load, or a free slot."""
    if runner is None:
        return admission_waiters
    if runner.loading:
        return admission_waiters + runner.leases
    return admission_waiters + max(runner.leases - runner.slots, 0)


def must_wait(runner: Runner) -> bool:
    """Return whether a new request for ``runner`` would wait (loading, or every slot busy)."""
    return runner.loading or runner.leases >= runner.slots


def retry_after_seconds(mean_load_seconds: float | None) -> int:
    """Return the ``Retry-After`` for a full queue: about one load time, 1 s at least."""
    if not mean_load_seconds or mean_load_seconds <= 0:
        return 1
    return max(math.ceil(mean_load_seconds), 1)


@dataclasses.dataclass(frozen=True)
class Admit:
    """Admission said yes: stop ``victims`` (runner, metrics reason) first, then start."""

    victims: tuple[tuple[Runner, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Admission said no, for now or for good.

    Attributes:
        error: What to raise if the request stops waiting.
        may_wait: Whether waiting may help (busy runners, a runner being stopped).
        reason: The metrics reason (``busy``, ``insufficient``, ``too_large``).
    """

    error: OrchestratorError
    may_wait: bool
    reason: str


class AdmissionGate:
    """Decides admission from a table snapshot and a memory need.

    Args:
        guard: The memory budget and its rules.
        runner_limit: The most runners at once (``DMR_MAX_RUNNERS``, resolved).
    """

    def __init__(self, guard: MemoryGuard, runner_limit: int) -> None:
        self.guard = guard
        self.runner_limit = runner_limit

    def decide(
        self,
        need: MemoryEstimate,
        *,
        model: str,
        runners: Sequence[Runner],
        stopping: Sequence[Runner],
        now: float,
        settling: bool = False,
        workers: Sequence[str] = (),
        remote_bytes: int = 0,
    ) -> Admit | Refusal:
        """Return whether a runner needing ``need`` for ``model`` may start now.

        Args:
            need: What the new runner will hold.
            model: Its display name, for messages.
            runners: The live runners in the table.
            stopping: Runners evicted whose processes are not reaped yet.
            now: ``time.monotonic()``.
            settling: Freed GPU memory may not show yet: an insufficient verdict may wait.
            workers: The new runner's llama.cpp RPC workers (``host:port``).
            remote_bytes: Their free memory (reserves kept), for the offloaded side.
        """
        holders = worker_holders(workers, runners, stopping)
        blocked = [r for r in holders if r in stopping or not is_evictable(
            r, now, self.guard.min_residency_seconds)]  # fmt: skip
        if blocked:
            shared = sorted(set(workers) & set(blocked[0].plan.rpc_workers))
            busy = ServiceUnavailableError(
                f"model {model!r} needs the RPC worker {', '.join(shared)}, which serves the "
                f"runner of {blocked[0].model_name!r} (busy, loading, stopping or started less "
                f"than DMR_MIN_RESIDENCY ago); rpc-server serves one runner at a time, so retry "
                f"later or unload it (docker model unload {blocked[0].model_name})"
            )
            return Refusal(busy, may_wait=True, reason="busy")
        resident_now = [resident(r) for r in runners if r not in holders]
        resident_now += [resident(r, stopping=True) for r in stopping]
        decision = self.guard.check(
            need, resident=resident_now, model=model, remote_bytes=remote_bytes
        )
        refused = decision.error()
        if refused is not None:
            may_wait = decision.verdict is Verdict.BUSY or settling
            return Refusal(refused, may_wait=may_wait, reason=decision.verdict.value)
        by_id = {r.runner_id: r for r in runners}
        memory_victims = list(holders) + [by_id[runner_id] for runner_id in decision.evict]
        limit = self.runner_limit
        excess = len(runners) + len(stopping) - len(memory_victims) + 1 - limit
        count = count_victims(
            runners, excess, exclude=memory_victims, now=now,
            min_residency=self.guard.min_residency_seconds,
        )  # fmt: skip
        if count is None:
            full = ServiceUnavailableError(
                f"all {limit} runner slots are busy or just started, so model {model!r} cannot "
                f"start now; retry later, unload a model, or raise DMR_MAX_RUNNERS"
            )
            return Refusal(full, may_wait=True, reason="busy")
        victims = [(v, "rpc" if v in holders else "memory") for v in memory_victims]
        victims += [(v, "count") for v in count]
        return Admit(tuple(victims))


def worker_holders(
    workers: Sequence[str], runners: Sequence[Runner], stopping: Sequence[Runner] = ()
) -> list[Runner]:
    """Return the runners (live or being stopped) connected to any of ``workers``.

    ``rpc-server`` serves one client at a time: a second runner on the same worker would wait
    for the first to disconnect, so the holders must go before the new runner starts.
    """
    wanted = set(workers)
    if not wanted:
        return []
    return [r for r in [*runners, *stopping] if wanted & set(r.plan.rpc_workers)]

"""Admission control: does a runner fit, and which idle runners must go first.

The guard is pure decision logic over injected probes (one function for RAM, one for GPUs),
so every branch is tested without a GPU and without filling the host's memory.

Budget. RAM for runners is ``DMR_MAX_RAM`` when set, else total RAM minus the reserve
(``DMR_MEMORY_RESERVE``, default ``max(10 %, 1 GiB)``). VRAM is, per GPU, ``DMR_MAX_VRAM``
when set, else the GPU's total minus a reserve (512 MiB). What is free now is the smaller of
two readings, because each misses something the other sees:

* *accounting*: the limit minus what our resident runners hold (measured, else estimated) —
  sees runners still loading, whose memory the system does not show as used yet;
* *system*: available RAM (free VRAM) minus the reserve — sees other processes.

Stopping an idle runner returns its footprint to both readings, except the file-backed part of
its RAM (memory-mapped weights), which the kernel already counts as available.

Decisions:

* ``FITS`` — start it.
* ``EVICT`` — start it after stopping these idle runners, least recently used first. Never a
  runner with requests in flight, one still loading, a pinned one, or one younger than the
  minimum residency.
* ``BUSY`` — it would fit if runners that are busy (or too young to evict) were gone: 503, the
  request may wait and retry.
* ``INSUFFICIENT`` — it cannot fit even with every unpinned runner gone (pinned runners or other
  processes hold the memory): 507.
* ``TOO_LARGE`` — the estimate exceeds the whole budget of this host: 507, refused at once.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Sequence

import psutil

from orchestrator.errors import InsufficientMemoryError, MemoryBusyError
from orchestrator.memory.estimate import KV_PAD_CELLS, MemoryEstimate
from orchestrator.memory.nvml import GpuInfo
from orchestrator.memory.sizes import MiB, Reserve, format_bytes, parse_reserve

log = logging.getLogger(__name__)

DEFAULT_VRAM_RESERVE_BYTES = 512 * MiB


@dataclasses.dataclass(frozen=True)
class RamReading:
    """Host memory as the system reports it.

    Attributes:
        total_bytes: Physical memory.
        available_bytes: Memory that can be given to a new process without swapping.
    """

    total_bytes: int
    available_bytes: int


RamProbe = Callable[[], RamReading]
GpuProbe = Callable[[], Sequence[GpuInfo]]


def system_ram() -> RamReading:
    """Read total and available RAM with psutil."""
    memory = psutil.virtual_memory()
    return RamReading(total_bytes=int(memory.total), available_bytes=int(memory.available))


def no_gpus() -> list[GpuInfo]:
    """Return no GPUs: the probe of a CPU-only host."""
    return []


@dataclasses.dataclass(frozen=True)
class ResidentRunner:
    """A running (or loading) runner, as the guard needs to see it.

    Attributes:
        runner_id: Identifier the scheduler uses to stop it.
        model: Name shown in messages (``ai/smollm2``).
        ram_bytes: RAM it holds or will hold (measured when known, else estimated).
        vram_bytes: GPU memory it holds or will hold.
        file_ram_bytes: Part of ``ram_bytes`` that is file-backed (memory-mapped weights).
        in_flight: Requests it is serving now.
        loading: Still starting; its memory is reserved but not yet in use.
        pinned: Configured never to be evicted.
        last_used: ``time.monotonic()`` when its last request ended (or it became ready).
        started: ``time.monotonic()`` when it was started.
    """

    runner_id: str
    model: str
    ram_bytes: int
    vram_bytes: int = 0
    file_ram_bytes: int = 0
    in_flight: int = 0
    loading: bool = False
    pinned: bool = False
    last_used: float = 0.0
    started: float = 0.0


class Verdict(enum.Enum):
    """Outcome of an admission check."""

    FITS = "fits"
    EVICT = "evict"
    BUSY = "busy"
    INSUFFICIENT = "insufficient"
    TOO_LARGE = "too_large"


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """What runners may use on this host right now.

    Attributes:
        ram_limit: RAM runners may use in total (cap, or total minus reserve).
        ram_free: Available RAM minus the reserve (the system reading, may be negative).
        ram_total: Physical RAM.
        ram_reserve: Reserve kept for the rest of the host (0 under a hard cap).
        ram_capped: Whether ``ram_limit`` comes from ``DMR_MAX_RAM``.
        vram_limit: GPU memory runners may use, summed over GPUs.
        vram_free: Free GPU memory minus reserves, summed over GPUs.
        vram_capped: Whether ``vram_limit`` comes from ``DMR_MAX_VRAM``.
        gpus: The GPUs the probe reported.
    """

    ram_limit: int
    ram_free: int
    ram_total: int
    ram_reserve: int
    ram_capped: bool
    vram_limit: int
    vram_free: int
    vram_capped: bool
    gpus: tuple[GpuInfo, ...]


@dataclasses.dataclass(frozen=True)
class Shortfall:
    """Figures behind a decision for one kind of memory ("RAM" or "VRAM").

    Attributes:
        kind: ``"RAM"`` or ``"VRAM"``.
        needed: What the new runner needs.
        free: What is free now.
        evictable: What stopping every idle runner would add.
        busy: What runners with requests in flight, loading or too young hold.
        pinned: What pinned runners hold.
        limit: The whole budget.
        others: How far the system reading falls short of the accounting one: memory that
            processes other than our runners hold beyond the reserve.
    """

    kind: str
    needed: int
    free: int
    evictable: int
    busy: int
    pinned: int
    limit: int
    others: int = 0


@dataclasses.dataclass(frozen=True)
class AdmissionDecision:
    """Result of :meth:`MemoryGuard.check`.

    Attributes:
        verdict: What to do.
        evict: Runner ids to stop first, in order (only for ``EVICT``).
        shortfall: Figures for the memory kind that decided (``None`` when it simply fits).
        message: One sentence for the user (empty when it fits).
    """

    verdict: Verdict
    evict: tuple[str, ...] = ()
    shortfall: Shortfall | None = None
    message: str = ""

    @property
    def admitted(self) -> bool:
        """Return whether the runner may start (now, or after the evictions)."""
        return self.verdict in (Verdict.FITS, Verdict.EVICT)

    def error(self) -> InsufficientMemoryError | None:
        """Return the error to raise for a refusal (503 for ``BUSY``, else 507), or ``None``."""
        if self.admitted:
            return None
        details: dict[str, object] = {"verdict": self.verdict.value}
        if self.shortfall is not None:
            details.update(dataclasses.asdict(self.shortfall))
        if self.verdict is Verdict.BUSY:
            return MemoryBusyError(self.message, details=details)
        return InsufficientMemoryError(self.message, details=details)

    def raise_for_refusal(self) -> None:
        """Raise :meth:`error` when the runner may not start.

        Raises:
            MemoryBusyError: Busy runners hold the memory (503).
            InsufficientMemoryError: It cannot fit now or ever (507).
        """
        error = self.error()
        if error is not None:
            raise error


@dataclasses.dataclass
class _Pool:
    """Free memory of one kind under both readings, as runners are stopped."""

    accounting: int
    system: int

    @property
    def free(self) -> int:
        return min(self.accounting, self.system)

    def release(self, total: int, file_backed: int = 0) -> None:
        self.accounting += total
        self.system += total - file_backed


class MemoryGuard:
    """Decide whether a runner fits, and what must be evicted for it.

    Args:
        reserve: ``DMR_MEMORY_RESERVE`` (size, percentage, or empty for the default).
        max_ram_bytes: ``DMR_MAX_RAM``; 0 means no cap.
        max_vram_bytes: ``DMR_MAX_VRAM``, per GPU; 0 means no cap.
        vram_reserve_bytes: Kept free on each GPU when there is no cap.
        min_residency_seconds: A runner younger than this is not evicted for another model.
        ram_probe: Returns the host's RAM figures (default: psutil).
        gpu_probe: Returns the GPUs (default: none; pass ``NvmlProbe().gpus``).
        clock: Monotonic clock (injected by tests).
    """

    def __init__(
        self,
        *,
        reserve: str | Reserve = "",
        max_ram_bytes: int = 0,
        max_vram_bytes: int = 0,
        vram_reserve_bytes: int = DEFAULT_VRAM_RESERVE_BYTES,
        min_residency_seconds: float = 0.0,
        ram_probe: RamProbe = system_ram,
        gpu_probe: GpuProbe = no_gpus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reserve = parse_reserve(reserve)
        self.max_ram_bytes = max_ram_bytes
        self.max_vram_bytes = max_vram_bytes
        self.vram_reserve_bytes = vram_reserve_bytes
        self.min_residency_seconds = min_residency_seconds
        self._ram_probe = ram_probe
        self._gpu_probe = gpu_probe
        self._clock = clock

    def budget(self) -> MemoryBudget:
        """Read the probes and return what runners may use."""
        ram = self._ram_probe()
        reserve = self.reserve.resolve(ram.total_bytes)
        capped = self.max_ram_bytes > 0
        ram_limit = self.max_ram_bytes if capped else max(ram.total_bytes - reserve, 0)
        gpus = tuple(self._gpu_probe())
        vram_capped = self.max_vram_bytes > 0
        vram_limit = vram_free = 0
        for gpu in gpus:
            if vram_capped:
                vram_limit += self.max_vram_bytes
                vram_free += min(gpu.free_bytes, self.max_vram_bytes)
            else:
                vram_limit += max(gpu.total_bytes - self.vram_reserve_bytes, 0)
                vram_free += max(gpu.free_bytes - self.vram_reserve_bytes, 0)
        return MemoryBudget(
            ram_limit=ram_limit,
            ram_free=ram.available_bytes - reserve,
            ram_total=ram.total_bytes,
            ram_reserve=reserve,
            ram_capped=capped,
            vram_limit=vram_limit,
            vram_free=vram_free,
            vram_capped=vram_capped,
            gpus=gpus,
        )

    def never_fits(self, need: MemoryEstimate, *, model: str = "", remote_bytes: int = 0) -> str:
        """Return why ``need`` can never fit on this host, or ``""`` when it could.

        For ``POST /models/create`` to warn in its progress stream. ``remote_bytes`` is what
        the runner's llama.cpp RPC workers offer (see :meth:`check`).
        """
        decision = self._too_large(
            need, _with_remote(self.budget(), remote_bytes), model, remote=remote_bytes > 0
        )
        return decision.message if decision is not None else ""

    def check(
        self,
        need: MemoryEstimate,
        *,
        resident: Sequence[ResidentRunner],
        model: str = "",
        remote_bytes: int = 0,
    ) -> AdmissionDecision:
        """Decide whether a runner needing ``need`` may start.

        Args:
            need: Estimate (or learned footprint) of the runner to start.
            resident: Every runner the scheduler holds, loading ones included (their VRAM
                without what sits on RPC workers).
            model: Name for messages (``ai/smollm2``).
            remote_bytes: Free memory of the runner's llama.cpp RPC workers, reserves kept:
                the offloaded (VRAM) side of ``need`` may use it besides this host's GPUs.
                A worker serves one runner at a time, so no resident runner holds any of it.
        """
        budget = _with_remote(self.budget(), remote_bytes)
        too_large = self._too_large(need, budget, model, remote=remote_bytes > 0)
        if too_large is not None:
            return too_large

        ram = _Pool(budget.ram_limit - sum(r.ram_bytes for r in resident), budget.ram_free)
        vram = _Pool(budget.vram_limit - sum(r.vram_bytes for r in resident), budget.vram_free)
        if _fits(need, ram, vram):
            return AdmissionDecision(Verdict.FITS)

        now = self._clock()
        idle = sorted(
            (r for r in resident if self._is_evictable(r, now)), key=lambda r: r.last_used
        )
        blocked = [r for r in resident if not r.pinned and not self._is_evictable(r, now)]
        pinned = [r for r in resident if r.pinned]

        chosen: list[str] = []
        for runner in idle:
            if not _helps(runner, need, ram, vram):
                continue
            ram.release(runner.ram_bytes, runner.file_ram_bytes)
            vram.release(runner.vram_bytes)
            chosen.append(runner.runner_id)
            if _fits(need, ram, vram):
                log.info("admission evicts model=%s runners=%s", model, ",".join(chosen))
                return AdmissionDecision(Verdict.EVICT, evict=tuple(chosen))

        # Evict every remaining idle runner too, then see whether busy ones are what blocks.
        for runner in idle:
            if runner.runner_id not in chosen:
                ram.release(runner.ram_bytes, runner.file_ram_bytes)
                vram.release(runner.vram_bytes)
        short_kind = "RAM" if need.ram_bytes > ram.free else "VRAM"
        shortfall = _shortfall(short_kind, need, budget, resident, idle, blocked, pinned)
        for runner in blocked:
            ram.release(runner.ram_bytes, runner.file_ram_bytes)
            vram.release(runner.vram_bytes)
        if blocked and _fits(need, ram, vram):
            return AdmissionDecision(
                Verdict.BUSY, shortfall=shortfall, message=_busy_message(model, shortfall, blocked)
            )
        return AdmissionDecision(
            Verdict.INSUFFICIENT,
            shortfall=shortfall,
            message=_insufficient_message(model, need, shortfall, pinned),
        )

    def _is_evictable(self, runner: ResidentRunner, now: float) -> bool:
        if runner.pinned or runner.loading or runner.in_flight > 0:
            return False
        return now - runner.started >= self.min_residency_seconds

    def _too_large(
        self, need: MemoryEstimate, budget: MemoryBudget, model: str, remote: bool = False
    ) -> AdmissionDecision | None:
        if need.ram_bytes > budget.ram_limit:
            kind, limit = "RAM", budget.ram_limit
            where = (
                "DMR_MAX_RAM"
                if budget.ram_capped
                else f"{format_bytes(budget.ram_total)} total minus the "
                f"{format_bytes(budget.ram_reserve)} reserve"
            )
            needed = need.ram_bytes
        elif need.vram_bytes > budget.vram_limit:
            kind, limit = "VRAM", budget.vram_limit
            where = (
                "the RPC workers' free memory plus this host's GPU memory, minus reserves"
                if remote
                else "no GPU was found"
                if not budget.gpus
                else ("DMR_MAX_VRAM" if budget.vram_capped else "GPU memory minus the reserve")
            )
            needed = need.vram_bytes
        else:
            return None
        shortfall = Shortfall(kind, needed, 0, 0, 0, 0, limit)
        message = (
            f"{_label(model)} needs {format_bytes(needed)} of {kind} ({_breakdown(need, kind)}) "
            f"but this host allows runners {format_bytes(limit)} in all ({where}); "
            f"{_advice(model, need, limit, kind)}"
        )
        return AdmissionDecision(Verdict.TOO_LARGE, shortfall=shortfall, message=message)


# --- decision helpers ------------------------------------------------------------------------


def _with_remote(budget: MemoryBudget, remote_bytes: int) -> MemoryBudget:
    """Return ``budget`` with RPC workers' free memory added to the offload (VRAM) side."""
    if remote_bytes <= 0:
        return budget
    return dataclasses.replace(
        budget,
        vram_limit=budget.vram_limit + remote_bytes,
        vram_free=budget.vram_free + remote_bytes,
    )


def _fits(need: MemoryEstimate, ram: _Pool, vram: _Pool) -> bool:
    return need.ram_bytes <= ram.free and need.vram_bytes <= vram.free


def _helps(runner: ResidentRunner, need: MemoryEstimate, ram: _Pool, vram: _Pool) -> bool:
    """Return whether stopping ``runner`` frees memory of a kind that is short."""
    ram_short = need.ram_bytes > ram.free and runner.ram_bytes > 0
    vram_short = need.vram_bytes > vram.free and runner.vram_bytes > 0
    return ram_short or vram_short


def _shortfall(
    kind: str,
    need: MemoryEstimate,
    budget: MemoryBudget,
    resident: Sequence[ResidentRunner],
    idle: Sequence[ResidentRunner],
    blocked: Sequence[ResidentRunner],
    pinned: Sequence[ResidentRunner],
) -> Shortfall:
    def held(runners: Sequence[ResidentRunner]) -> int:
        return sum(r.ram_bytes if kind == "RAM" else r.vram_bytes for r in runners)

    if kind == "RAM":
        accounting, system = budget.ram_limit - held(resident), budget.ram_free
        needed, limit = need.ram_bytes, budget.ram_limit
    else:
        accounting, system = budget.vram_limit - held(resident), budget.vram_free
        needed, limit = need.vram_bytes, budget.vram_limit
    return Shortfall(
        kind,
        needed,
        max(min(accounting, system), 0),
        held(idle),
        held(blocked),
        held(pinned),
        limit,
        others=max(accounting - system, 0),
    )


def _breakdown(need: MemoryEstimate, kind: str) -> str:
    if need.source == "measured":
        return "measured when it last ran with these settings"
    part = need.ram if kind == "RAM" else need.vram
    pieces = [
        ("weights", part.weights),
        (f"KV cache for {need.context_size} tokens", part.kv_cache),
        ("compute", part.compute_buffer),
        ("projector", part.mmproj),
        ("prompt cache", part.prompt_cache),
        ("overhead", part.overhead),
    ]
    return ", ".join(f"{label} {format_bytes(size)}" for label, size in pieces if size)


def suggest_context_size(need: MemoryEstimate, available: int, kind: str = "RAM") -> int:
    """Return the largest context (a multiple of 256) that would fit in ``available``, or 0."""
    total = need.ram_bytes if kind == "RAM" else need.vram_bytes
    part = need.ram if kind == "RAM" else need.vram
    if need.per_token_bytes <= 0 or part.kv_cache <= 0:
        return 0
    # The part of the total that does not scale with the context.
    share = part.kv_cache / max(need.kv_cache, 1)
    fixed = total - need.per_token_bytes * need.context_size * share
    cells = int((available - fixed) / (need.per_token_bytes * share))
    cells = cells // KV_PAD_CELLS * KV_PAD_CELLS
    return cells if cells >= KV_PAD_CELLS and cells < need.context_size else 0


def _advice(model: str, need: MemoryEstimate, available: int, kind: str) -> str:
    context = suggest_context_size(need, available, kind)
    if context:
        return (
            f"a context of {context} tokens would fit "
            f"(docker model configure --context-size {context} {model or 'MODEL'}), "
            f"or use a smaller quantization"
        )
    if kind == "VRAM":
        return "offload fewer layers (--n-gpu-layers), or use a smaller quantization or model"
    return "use a smaller quantization or a smaller model"


def _label(model: str) -> str:
    return f"model '{model}'" if model else "the model"


def _names(runners: Sequence[ResidentRunner], limit: int = 3) -> str:
    shown = [f"'{r.model}'" for r in runners[:limit]]
    if len(runners) > limit:
        shown.append(f"{len(runners) - limit} more")
    return ", ".join(shown)


def _busy_message(model: str, shortfall: Shortfall, blocked: Sequence[ResidentRunner]) -> str:
    first = blocked[0].model
    return (
        f"{_label(model)} needs {format_bytes(shortfall.needed)} of {shortfall.kind} but only "
        f"{format_bytes(shortfall.free + shortfall.evictable)} can be freed now "
        f"({format_bytes(shortfall.free)} free, {format_bytes(shortfall.evictable)} held by idle "
        f"runners) while busy or just-started runners hold {format_bytes(shortfall.busy)} "
        f"({_names(blocked)}); retry when they finish, or unload one "
        f"(docker model unload {first})"
    )


def _insufficient_message(
    model: str, need: MemoryEstimate, shortfall: Shortfall, pinned: Sequence[ResidentRunner]
) -> str:
    reachable = shortfall.free + shortfall.evictable + shortfall.busy
    freeable = f"{format_bytes(shortfall.free)} free"
    if shortfall.evictable + shortfall.busy:
        freeable += f", {format_bytes(shortfall.evictable + shortfall.busy)} in other runners"
    holders = []
    if pinned:
        holders.append(f"pinned runners hold {format_bytes(shortfall.pinned)} ({_names(pinned)})")
    if shortfall.others:
        holders.append(f"other processes hold {format_bytes(shortfall.others)}")
    who = " and ".join(holders) or "the rest is in use"
    unload = f"unload '{pinned[0].model}', " if pinned else ""
    return (
        f"{_label(model)} needs {format_bytes(shortfall.needed)} of {shortfall.kind} but at most "
        f"{format_bytes(reachable)} can be freed ({freeable}); {who}; "
        f"{unload}{_advice(model, need, reachable, shortfall.kind)}"
    )

"""Eviction and queue policy over the scheduler's table (pure functions; the caller holds the lock).

Which runners may go, in which order, and how many requests wait — kept apart from the
scheduler's process handling so each rule is tested without starting anything:

* A runner is *evictable* for another model when it has no lease, is not loading, is not
  pinned, and is at least the minimum residency old (DMR_MIN_RESIDENCY), so two models
  alternating on a small machine do not thrash. Least recently used goes first.
* Memory pressure evicts idle, unpinned runners regardless of age (the host is short now),
  least recently used first, until the deficit is covered.
* A request *waits* when its runner is loading, or serving more requests than it has slots
  (llama-server queues those), or admission is waiting for memory or a runner slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from orchestrator.memory.guard import ResidentRunner
from orchestrator.runners.lease import RunnerEntry


def resident(entry: RunnerEntry, *, stopping: bool = False) -> ResidentRunner:
    """Return the guard's view of ``entry``: what it holds or has reserved.

    RAM and VRAM are the larger of the need it was admitted with and its peak measurement
    (a runner may grow past a measurement, never below its reservation). A runner being
    stopped counts as loading: its memory is on the way back but not free yet.
    """
    need = entry.plan.need if entry.plan is not None else None
    ram = max(need.ram_bytes if need is not None else 0, entry.peak_rss)
    vram = max(need.vram_bytes if need is not None else 0, entry.peak_vram)
    if entry.measured is not None:
        file_backed = entry.measured.file_bytes
    elif need is not None and need.source == "estimate":
        # Mapped weights are file pages: the kernel counts them as available already.
        file_backed = need.ram.weights
    else:
        file_backed = 0
    return ResidentRunner(
        runner_id=entry.runner_id,
        model=entry.model_name,
        ram_bytes=ram,
        vram_bytes=vram,
        file_ram_bytes=min(file_backed, ram),
        in_flight=entry.refcount,
        loading=entry.loading or stopping,
        pinned=entry.pinned,
        last_used=entry.last_used_mono,
        started=entry.started,
    )


def is_idle(entry: RunnerEntry) -> bool:
    """Return whether ``entry`` is running with no lease (and not loading or gone)."""
    return (
        entry.refcount == 0 and not entry.loading and not entry.removed and not entry.is_defunct
    )


def is_evictable(entry: RunnerEntry, now: float, min_residency: float) -> bool:
    """Return whether ``entry`` may be stopped to make room for another model."""
    return is_idle(entry) and not entry.pinned and now - entry.started >= min_residency


def count_victims(
    entries: Iterable[RunnerEntry],
    excess: int,
    *,
    exclude: Sequence[RunnerEntry],
    now: float,
    min_residency: float,
) -> list[RunnerEntry] | None:
    """Return ``excess`` runners to stop for the runner-count limit, LRU first, or ``None``.

    ``None`` means too few are evictable now: the request must wait.
    """
    if excess <= 0:
        return []
    candidates = sorted(
        (
            entry
            for entry in entries
            if entry not in exclude and is_evictable(entry, now, min_residency)
        ),
        key=lambda entry: entry.last_used_mono,
    )
    if len(candidates) < excess:
        return None
    return candidates[:excess]


def pressure_victims(
    entries: Iterable[RunnerEntry], ram_deficit: int, vram_deficit: int
) -> list[RunnerEntry]:
    """Return idle, unpinned runners to stop, LRU first, until they cover the deficits."""
    chosen: list[RunnerEntry] = []
    freed_ram = freed_vram = 0
    for entry in sorted(
        (e for e in entries if is_idle(e) and not e.pinned), key=lambda e: e.last_used_mono
    ):
        if freed_ram >= ram_deficit and freed_vram >= vram_deficit:
            break
        view = resident(entry)
        helps_ram = freed_ram < ram_deficit and view.ram_bytes > 0
        helps_vram = freed_vram < vram_deficit and view.vram_bytes > 0
        if helps_ram or helps_vram:
            chosen.append(entry)
            freed_ram += view.ram_bytes
            freed_vram += view.vram_bytes
    return chosen


def queue_depth(entry: RunnerEntry | None, admission_waiters: int) -> int:
    """Return how many requests wait for a model: for admission, a load, or a free slot."""
    if entry is None:
        return admission_waiters
    if entry.loading:
        return admission_waiters + entry.refcount
    return admission_waiters + max(entry.refcount - entry.slots, 0)


def must_wait(entry: RunnerEntry) -> bool:
    """Return whether a new request for ``entry`` would wait (loading, or every slot busy)."""
    return entry.loading or entry.refcount >= entry.slots


def retry_after_seconds(mean_load_seconds: float | None) -> int:
    """Return the ``Retry-After`` for a full queue: about one load time, 1 s at least."""
    if not mean_load_seconds or mean_load_seconds <= 0:
        return 1
    return max(math.ceil(mean_load_seconds), 1)

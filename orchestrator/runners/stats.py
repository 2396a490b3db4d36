"""Daemon-side runner counters for ``/metrics``.

The scheduler records events here; the API renders them (:meth:`RunnerStats.to_prometheus`
gives ready-made Prometheus text, or :meth:`RunnerStats.snapshot` the numbers). Everything is
guarded by one lock: the counters are touched a few times per runner start, never per token.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

LOAD_BUCKETS_SECONDS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Upper bounds of the load-duration histogram (spawn to ``/health`` 200)."""

STOP_REASONS: tuple[str, ...] = ("idle", "unload", "crash", "shutdown", "evicted", "configure")
"""Why a runner went away: idle keep-alive, ``/engines/unload``, exited on its own, daemon
shutdown, evicted to make room, ``_configure`` changed its settings."""

START_FAILURES: tuple[str, ...] = ("error", "timeout")
"""Why a start failed: the process exited while loading, or missed the load deadline."""

EVICTION_REASONS: tuple[str, ...] = ("idle", "memory", "count", "pressure", "manual")
"""Why an idle runner was stopped: keep-alive ran out, memory for another model, the runner
count limit, memory pressure on the host, or ``/engines/unload``."""

REFUSAL_REASONS: tuple[str, ...] = ("too_large", "insufficient", "busy", "queue_full")
"""Why a request was refused before any runner started: the model can never fit on this host
(507), it cannot fit now (507), busy runners hold the memory or slots past ``max_wait`` (503),
or too many requests already wait (429)."""


def _label(value: str) -> str:
    """Escape a Prometheus label value (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclasses.dataclass(frozen=True)
class MemoryGauge:
    """Estimated and measured RAM of one runner, for the estimate-versus-measured gap.

    Attributes:
        estimate_bytes: RAM the estimate predicted.
        measured_bytes: Largest RSS measured so far (0 until measured).
    """

    estimate_bytes: int
    measured_bytes: int = 0

    @property
    def error_ratio(self) -> float | None:
        """Return ``(estimate - measured) / measured``, or ``None`` before a measurement."""
        if self.measured_bytes <= 0:
            return None
        return (self.estimate_bytes - self.measured_bytes) / self.measured_bytes


@dataclasses.dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of the counters.

    Attributes:
        starts: Runner processes spawned.
        start_failures: Failed starts by reason (:data:`START_FAILURES`).
        load_buckets: ``(upper bound, cumulative count)`` per bucket, then ``(inf, count)``.
        load_sum_seconds: Sum of all load durations.
        load_count: Number of successful loads.
        stops: Runners gone by reason (:data:`STOP_REASONS`).
        evictions: Runners evicted by reason (:data:`EVICTION_REASONS`).
        refusals: Requests refused by admission control, by reason (:data:`REFUSAL_REASONS`).
        queue_depth: Requests waiting now, by model.
        queue_wait: ``(sum of seconds, count)`` of finished waits, by model.
        memory: Estimated and measured RAM by ``(model, mode)`` of the runners loaded now.
    """

    starts: int
    start_failures: dict[str, int]
    load_buckets: tuple[tuple[float, int], ...]
    load_sum_seconds: float
    load_count: int
    stops: dict[str, int]
    evictions: dict[str, int] = dataclasses.field(default_factory=dict)
    refusals: dict[str, int] = dataclasses.field(default_factory=dict)
    queue_depth: dict[str, int] = dataclasses.field(default_factory=dict)
    queue_wait: dict[str, tuple[float, int]] = dataclasses.field(default_factory=dict)
    memory: dict[tuple[str, str], MemoryGauge] = dataclasses.field(default_factory=dict)


class RunnerStats:
    """Thread-safe counters of runner starts, load durations and stops."""

    def __init__(self) -> None:
        """Start with every counter at zero."""
        self._lock = threading.Lock()
        self._starts = 0
        self._start_failures = dict.fromkeys(START_FAILURES, 0)
        self._bucket_counts = [0] * len(LOAD_BUCKETS_SECONDS)
        self._load_sum = 0.0
        self._load_count = 0
        self._stops = dict.fromkeys(STOP_REASONS, 0)
        self._evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self._refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        self._queue_depth: dict[str, int] = {}
        self._queue_source: Callable[[], dict[str, int]] | None = None
        self._queue_wait: dict[str, tuple[float, int]] = {}
        self._memory: dict[tuple[str, str], MemoryGauge] = {}

    def record_start(self) -> None:
        """Count one spawned runner process."""
        with self._lock:
            self._starts += 1

    def record_start_failure(self, reason: str) -> None:
        """Count one failed start (``error`` or ``timeout``)."""
        if reason not in self._start_failures:
            raise ValueError(f"unknown start failure reason {reason!r}")
        with self._lock:
            self._start_failures[reason] += 1

    def observe_load(self, seconds: float) -> None:
        """Record how long a runner took from spawn to ready."""
        with self._lock:
            self._load_sum += seconds
            self._load_count += 1
            for index, bound in enumerate(LOAD_BUCKETS_SECONDS):
                if seconds <= bound:
                    self._bucket_counts[index] += 1
                    break

    def record_stop(self, reason: str) -> None:
        """Count one runner gone for ``reason`` (one of :data:`STOP_REASONS`)."""
        if reason not in self._stops:
            raise ValueError(f"unknown stop reason {reason!r}")
        with self._lock:
            self._stops[reason] += 1

    def record_eviction(self, reason: str) -> None:
        """Count one runner evicted for ``reason`` (one of :data:`EVICTION_REASONS`)."""
        if reason not in self._evictions:
            raise ValueError(f"unknown eviction reason {reason!r}")
        with self._lock:
            self._evictions[reason] += 1

    def record_refusal(self, reason: str) -> None:
        """Count one request refused for ``reason`` (one of :data:`REFUSAL_REASONS`)."""
        if reason not in self._refusals:
            raise ValueError(f"unknown refusal reason {reason!r}")
        with self._lock:
            self._refusals[reason] += 1

    def watch_queue(self, source: Callable[[], dict[str, int]]) -> None:
        """Read queue depths by model from ``source`` at every snapshot (the scheduler's).

        A model seen once keeps its gauge, at 0 when nothing waits for it any more.
        """
        self._queue_source = source

    def mean_load_seconds(self) -> float | None:
        """Return the mean spawn-to-ready time so far, or ``None`` before the first load."""
        with self._lock:
            return self._load_sum / self._load_count if self._load_count else None

    def observe_wait(self, model: str, seconds: float) -> None:
        """Record one finished wait for ``model`` (admitted or not)."""
        with self._lock:
            total, count = self._queue_wait.get(model, (0.0, 0))
            self._queue_wait[model] = (total + max(seconds, 0.0), count + 1)

    def set_memory(
        self, model: str, mode: str, estimate_bytes: int, measured_bytes: int = 0
    ) -> None:
        """Record the estimated and measured RAM of the runner of ``model`` in ``mode``."""
        with self._lock:
            self._memory[(model, mode)] = MemoryGauge(estimate_bytes, measured_bytes)

    def clear_memory(self, model: str, mode: str) -> None:
        """Forget the memory figures of a runner that went away."""
        with self._lock:
            self._memory.pop((model, mode), None)

    def snapshot(self) -> StatsSnapshot:
        """Return a consistent copy of every counter."""
        # Read outside our lock: the source takes the scheduler's.
        depths = self._queue_source() if self._queue_source is not None else {}
        with self._lock:
            for model in self._queue_depth:
                self._queue_depth[model] = 0
            self._queue_depth.update(depths)
            cumulative: list[tuple[float, int]] = []
            running = 0
            for bound, count in zip(LOAD_BUCKETS_SECONDS, self._bucket_counts):
                running += count
                cumulative.append((bound, running))
            cumulative.append((float("inf"), self._load_count))
            return StatsSnapshot(
                starts=self._starts,
                start_failures=dict(self._start_failures),
                load_buckets=tuple(cumulative),
                load_sum_seconds=self._load_sum,
                load_count=self._load_count,
                stops=dict(self._stops),
                evictions=dict(self._evictions),
                refusals=dict(self._refusals),
                queue_depth=dict(self._queue_depth),
                queue_wait=dict(self._queue_wait),
                memory=dict(self._memory),
            )

    def to_prometheus(self, prefix: str = "dmr_") -> str:
        """Return the counters as Prometheus text exposition (ends with a newline)."""
        snap = self.snapshot()
        out = [
            f"# HELP {prefix}runner_starts_total Runner processes spawned.",
            f"# TYPE {prefix}runner_starts_total counter",
            f"{prefix}runner_starts_total {snap.starts}",
            f"# HELP {prefix}runner_start_failures_total Runner starts that failed, by reason.",
            f"# TYPE {prefix}runner_start_failures_total counter",
        ]
        out += [
            f'{prefix}runner_start_failures_total{{reason="{reason}"}} {count}'
            for reason, count in snap.start_failures.items()
        ]
        out += [
            f"# HELP {prefix}runner_load_seconds Time from spawn to a healthy runner.",
            f"# TYPE {prefix}runner_load_seconds histogram",
        ]
        for bound, count in snap.load_buckets:
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{prefix}runner_load_seconds_bucket{{le="{label}"}} {count}')
        out += [
            f"{prefix}runner_load_seconds_sum {snap.load_sum_seconds:.6f}",
            f"{prefix}runner_load_seconds_count {snap.load_count}",
            f"# HELP {prefix}runner_stops_total Runners stopped or gone, by reason.",
            f"# TYPE {prefix}runner_stops_total counter",
        ]
        out += [
            f'{prefix}runner_stops_total{{reason="{reason}"}} {count}'
            for reason, count in snap.stops.items()
        ]
        out += _memory_lines(snap, prefix)
        return "\n".join(out) + "\n"


def _memory_lines(snap: StatsSnapshot, prefix: str) -> list[str]:
    """Return the admission, queue and memory metrics of ``snap``."""
    out = [
        f"# HELP {prefix}runner_evictions_total Idle runners stopped, by reason.",
        f"# TYPE {prefix}runner_evictions_total counter",
    ]
    out += [
        f'{prefix}runner_evictions_total{{reason="{reason}"}} {count}'
        for reason, count in snap.evictions.items()
    ]
    out += [
        f"# HELP {prefix}admissions_refused_total Requests refused before a runner started, "
        f"by reason.",
        f"# TYPE {prefix}admissions_refused_total counter",
    ]
    out += [
        f'{prefix}admissions_refused_total{{reason="{reason}"}} {count}'
        for reason, count in snap.refusals.items()
    ]
    out += [
        f"# HELP {prefix}queue_depth Requests waiting for memory, a runner slot or a loading "
        f"runner, by model.",
        f"# TYPE {prefix}queue_depth gauge",
    ]
    out += [
        f'{prefix}queue_depth{{model="{_label(model)}"}} {depth}'
        for model, depth in sorted(snap.queue_depth.items())
    ]
    out += [
        f"# HELP {prefix}queue_wait_seconds Time requests waited before they were served a "
        f"runner or refused, by model.",
        f"# TYPE {prefix}queue_wait_seconds summary",
    ]
    for model, (total, count) in sorted(snap.queue_wait.items()):
        out.append(f'{prefix}queue_wait_seconds_sum{{model="{_label(model)}"}} {total:.6f}')
        out.append(f'{prefix}queue_wait_seconds_count{{model="{_label(model)}"}} {count}')
    gauges = sorted(snap.memory.items())
    out += [
        f"# HELP {prefix}runner_memory_estimate_bytes RAM the estimate predicted for a loaded "
        f"runner.",
        f"# TYPE {prefix}runner_memory_estimate_bytes gauge",
    ]
    out += [
        f'{prefix}runner_memory_estimate_bytes{{model="{_label(model)}",mode="{mode}"}} '
        f"{gauge.estimate_bytes}"
        for (model, mode), gauge in gauges
    ]
    out += [
        f"# HELP {prefix}runner_memory_measured_bytes Largest RSS measured for a loaded runner.",
        f"# TYPE {prefix}runner_memory_measured_bytes gauge",
    ]
    out += [
        f'{prefix}runner_memory_measured_bytes{{model="{_label(model)}",mode="{mode}"}} '
        f"{gauge.measured_bytes}"
        for (model, mode), gauge in gauges
        if gauge.measured_bytes > 0
    ]
    out += [
        f"# HELP {prefix}runner_memory_estimate_error_ratio (estimate - measured) / measured "
        f"RAM of a loaded runner; positive when the estimate is larger.",
        f"# TYPE {prefix}runner_memory_estimate_error_ratio gauge",
    ]
    out += [
        f'{prefix}runner_memory_estimate_error_ratio{{model="{_label(model)}",mode="{mode}"}} '
        f"{gauge.error_ratio:.4f}"
        for (model, mode), gauge in gauges
        if gauge.error_ratio is not None
    ]
    return out

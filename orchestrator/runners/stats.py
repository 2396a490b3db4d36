"""Daemon-side runner counters for ``/metrics``.

The scheduler records events here; the API renders them (:meth:`RunnerStats.to_prometheus`
gives ready-made Prometheus text, or :meth:`RunnerStats.snapshot` the numbers). Everything is
guarded by one lock: the counters are touched a few times per runner start, never per token.
"""

from __future__ import annotations

import dataclasses
import threading

LOAD_BUCKETS_SECONDS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Upper bounds of the load-duration histogram (spawn to ``/health`` 200)."""

STOP_REASONS: tuple[str, ...] = ("idle", "unload", "crash", "shutdown", "evicted", "configure")
"""Why a runner went away: idle keep-alive, ``/engines/unload``, exited on its own, daemon
shutdown, evicted to make room, ``_configure`` changed its settings."""

START_FAILURES: tuple[str, ...] = ("error", "timeout")
"""Why a start failed: the process exited while loading, or missed the load deadline."""


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
    """

    starts: int
    start_failures: dict[str, int]
    load_buckets: tuple[tuple[float, int], ...]
    load_sum_seconds: float
    load_count: int
    stops: dict[str, int]


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

    def snapshot(self) -> StatsSnapshot:
        """Return a consistent copy of every counter."""
        with self._lock:
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
        return "\n".join(out) + "\n"

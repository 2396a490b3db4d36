"""Daemon-side runner metrics for ``/metrics``.

The scheduler records events here through :class:`RunnerStats`'s methods; the numbers live in
``prometheus_client`` metric objects, and the queue depths and memory gauges are read when
scraped. A :class:`RunnerStats` is a collector: the API registers it in its app's
``CollectorRegistry``, which renders the text. :meth:`RunnerStats.snapshot` gives the numbers
to code and tests. One lock keeps a snapshot consistent; the counters are touched a few times
per runner start, never per token.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import Counter, Histogram, Summary
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LOAD_BUCKETS_SECONDS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0
)
"""Upper bounds of the load-duration histogram (spawn to ``/health`` 200)."""

STOP_REASONS: tuple[str, ...] = ("idle", "unload", "crash", "shutdown", "evicted", "configure")
"""Why a runner went away: idle keep-alive, ``/engines/unload``, exited on its own, daemon
shutdown, evicted to make room, ``_configure`` changed its settings."""

START_FAILURES: tuple[str, ...] = ("error", "timeout")
"""Why a start failed: the process exited while loading, or missed the load deadline."""

EVICTION_REASONS: tuple[str, ...] = ("idle", "memory", "count", "pressure", "manual", "rpc")
"""Why an idle runner was stopped: keep-alive ran out, memory for another model, the runner
count limit, memory pressure on the host, ``/engines/unload``, or another model needing its
llama.cpp RPC workers (each serves one runner at a time)."""

REFUSAL_REASONS: tuple[str, ...] = (
    "too_large", "insufficient", "busy", "queue_full", "rpc_unreachable"
)
"""Why a request was refused before any runner started: the model can never fit on this host
(507), it cannot fit now (507), busy runners hold the memory or slots past ``max_wait`` (503),
too many requests already wait (429), or an RPC worker of the model did not answer (503)."""


def without_created(metric: MetricWrapperBase) -> list[Metric]:
    """Return the families of ``metric`` without their ``_created`` samples.

    ``prometheus_client`` adds a ``<name>_created`` gauge (the creation time) to every counter,
    histogram and summary; ``/metrics`` never had one. ``disable_created_metrics()`` only
    exists from 0.18 on (Debian 12 has 0.16) and flips a process-wide switch; 0.16's
    ``PROMETHEUS_DISABLE_CREATED_SERIES`` is read once, at import. So the samples go here.
    """
    families = []
    for family in metric.collect():
        kept = Metric(family.name, family.documentation, family.type, family.unit)
        created = family.name + "_created"
        kept.samples = [sample for sample in family.samples if sample.name != created]
        families.append(kept)
    return families


def _sample_values(metric: MetricWrapperBase, suffix: str) -> list[tuple[dict[str, str], float]]:
    """Return ``(labels, value)`` of each ``<name><suffix>`` sample of ``metric``."""
    return [
        (sample.labels, sample.value)
        for family in metric.collect()
        for sample in family.samples
        if sample.name == family.name + suffix
    ]


def _by_label(metric: MetricWrapperBase, suffix: str, label: str) -> dict[str, float]:
    """Return the ``<name><suffix>`` values of ``metric`` by the value of ``label``."""
    return {labels[label]: value for labels, value in _sample_values(metric, suffix)}


def _reason_counter(name: str, documentation: str, reasons: Sequence[str]) -> Counter:
    """Return an unregistered counter by ``reason`` with every reason at zero."""
    counter = Counter(name, documentation, ["reason"], registry=None)
    # Every reason is exposed from the start, so a rate over a fresh series has a zero to
    # start from.
    for reason in reasons:
        counter.labels(reason)
    return counter


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


class RunnerStats(Collector):
    """Thread-safe runner metrics: starts, loads, stops, admission, queues and memory.

    A ``prometheus_client`` collector; its metric objects are registered nowhere else (never
    in the library's global registry: several apps share a test process).
    """

    def __init__(self) -> None:
        """Start with every counter at zero."""
        self._lock = threading.Lock()
        # Counters are named as exposed; the library keeps "_total" out of the family name.
        self._starts = Counter(
            "dmr_runner_starts_total", "Runner processes spawned.", registry=None
        )
        self._start_failures = _reason_counter(
            "dmr_runner_start_failures_total",
            "Runner starts that failed, by reason.",
            START_FAILURES,
        )
        self._load = Histogram(
            "dmr_runner_load_seconds",
            "Time from spawn to a healthy runner.",
            buckets=LOAD_BUCKETS_SECONDS,
            registry=None,
        )
        self._stops = _reason_counter(
            "dmr_runner_stops_total", "Runners stopped or gone, by reason.", STOP_REASONS
        )
        self._evictions = _reason_counter(
            "dmr_runner_evictions_total", "Idle runners stopped, by reason.", EVICTION_REASONS
        )
        self._refusals = _reason_counter(
            "dmr_admissions_refused_total",
            "Requests refused before a runner started, by reason.",
            REFUSAL_REASONS,
        )
        self._queue_wait = Summary(
            "dmr_queue_wait_seconds",
            "Time requests waited before they were served a runner or refused, by model.",
            ["model"],
            registry=None,
        )
        self._queue_depth: dict[str, int] = {}
        self._queue_source: Callable[[], dict[str, int]] | None = None
        self._memory: dict[tuple[str, str], MemoryGauge] = {}

    def record_start(self) -> None:
        """Count one spawned runner process."""
        with self._lock:
            self._starts.inc()

    def record_start_failure(self, reason: str) -> None:
        """Count one failed start (``error`` or ``timeout``)."""
        self._count(self._start_failures, START_FAILURES, "start failure", reason)

    def observe_load(self, seconds: float) -> None:
        """Record how long a runner took from spawn to ready."""
        with self._lock:
            self._load.observe(seconds)

    def record_stop(self, reason: str) -> None:
        """Count one runner gone for ``reason`` (one of :data:`STOP_REASONS`)."""
        self._count(self._stops, STOP_REASONS, "stop", reason)

    def record_eviction(self, reason: str) -> None:
        """Count one runner evicted for ``reason`` (one of :data:`EVICTION_REASONS`)."""
        self._count(self._evictions, EVICTION_REASONS, "eviction", reason)

    def record_refusal(self, reason: str) -> None:
        """Count one request refused for ``reason`` (one of :data:`REFUSAL_REASONS`)."""
        self._count(self._refusals, REFUSAL_REASONS, "refusal", reason)

    def _count(self, counter: Counter, reasons: Sequence[str], what: str, reason: str) -> None:
        """Add one to ``counter``'s ``reason`` series, a reason ``reasons`` lists.

        Raises:
            ValueError: ``reason`` is not one of ``reasons`` (a typo would open a new series).
        """
        if reason not in reasons:
            raise ValueError(f"unknown {what} reason {reason!r}")
        with self._lock:
            counter.labels(reason).inc()

    def watch_queue(self, source: Callable[[], dict[str, int]]) -> None:
        """Read queue depths by model from ``source`` (the scheduler's) at each snapshot and scrape.

        A model seen once keeps its gauge, at 0 when nothing waits for it any more.
        """
        self._queue_source = source

    def mean_load_seconds(self) -> float | None:
        """Return the mean spawn-to-ready time so far, or ``None`` before the first load."""
        with self._lock:
            total, count = self._load_totals()
        return total / count if count else None

    def observe_wait(self, model: str, seconds: float) -> None:
        """Record one finished wait for ``model`` (admitted or not)."""
        with self._lock:
            self._queue_wait.labels(model).observe(max(seconds, 0.0))

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
        depths = self._read_queue()
        with self._lock:
            load_sum, load_count = self._load_totals()
            wait_sums = _by_label(self._queue_wait, "_sum", "model")
            wait_counts = _by_label(self._queue_wait, "_count", "model")
            return StatsSnapshot(
                starts=int(_sample_values(self._starts, "_total")[0][1]),
                start_failures=_counts(self._start_failures),
                load_buckets=tuple(
                    (float(labels["le"]), int(value))
                    for labels, value in _sample_values(self._load, "_bucket")
                ),
                load_sum_seconds=load_sum,
                load_count=load_count,
                stops=_counts(self._stops),
                evictions=_counts(self._evictions),
                refusals=_counts(self._refusals),
                queue_depth=self._update_depths(depths),
                queue_wait={
                    model: (total, int(wait_counts[model])) for model, total in wait_sums.items()
                },
                memory=dict(self._memory),
            )

    def collect(self) -> Iterable[Metric]:
        """Return the metric families for a scrape, queue depths and memory read now."""
        depths = self._read_queue()
        with self._lock:
            return [
                *without_created(self._starts),
                *without_created(self._start_failures),
                *without_created(self._load),
                *without_created(self._stops),
                *without_created(self._evictions),
                *without_created(self._refusals),
                _queue_depth_family(self._update_depths(depths)),
                *without_created(self._queue_wait),
                *_memory_families(self._memory),
            ]

    def _read_queue(self) -> dict[str, int]:
        """Return the queue depths by model from the watched source (empty without one)."""
        # Called outside our lock: the source takes the scheduler's, whose holders record here.
        return self._queue_source() if self._queue_source is not None else {}

    def _update_depths(self, depths: dict[str, int]) -> dict[str, int]:
        """Merge ``depths`` into the gauges (models not waiting now go to 0); return a copy."""
        for model in self._queue_depth:
            self._queue_depth[model] = 0
        self._queue_depth.update(depths)
        return dict(self._queue_depth)

    def _load_totals(self) -> tuple[float, int]:
        """Return the sum of the load durations and their count."""
        total = _sample_values(self._load, "_sum")[0][1]
        count = _sample_values(self._load, "_count")[0][1]
        return total, int(count)


def _counts(counter: Counter) -> dict[str, int]:
    """Return a counter's values by ``reason``."""
    return {reason: int(value) for reason, value in _by_label(counter, "_total", "reason").items()}


def _queue_depth_family(depths: dict[str, int]) -> GaugeMetricFamily:
    """Return the queue-depth gauge of every model seen, sorted by model."""
    family = GaugeMetricFamily(
        "dmr_queue_depth",
        "Requests waiting for memory, a runner slot or a loading runner, by model.",
        labels=["model"],
    )
    for model, depth in sorted(depths.items()):
        family.add_metric([model], depth)
    return family


def _memory_families(memory: dict[tuple[str, str], MemoryGauge]) -> list[GaugeMetricFamily]:
    """Return the estimated, measured and error-ratio gauges of the runners loaded now."""
    labels = ["model", "mode"]
    estimate = GaugeMetricFamily(
        "dmr_runner_memory_estimate_bytes",
        "RAM the estimate predicted for a loaded runner.",
        labels=labels,
    )
    measured = GaugeMetricFamily(
        "dmr_runner_memory_measured_bytes",
        "Largest RSS measured for a loaded runner.",
        labels=labels,
    )
    error = GaugeMetricFamily(
        "dmr_runner_memory_estimate_error_ratio",
        "(estimate - measured) / measured RAM of a loaded runner; positive when the estimate "
        "is larger.",
        labels=labels,
    )
    for (model, mode), gauge in sorted(memory.items()):
        estimate.add_metric([model, mode], gauge.estimate_bytes)
        if gauge.measured_bytes > 0:
            measured.add_metric([model, mode], gauge.measured_bytes)
        if gauge.error_ratio is not None:
            # Four decimals, as /metrics has always given it: the estimate is no finer.
            error.add_metric([model, mode], round(gauge.error_ratio, 4))
    return [estimate, measured, error]

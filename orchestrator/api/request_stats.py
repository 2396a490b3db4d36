"""Request-side metrics of the daemon: in-flight requests, duration and time to first byte.

One :class:`RequestStats` per app. Each inference request takes a :class:`RequestTimer` from
:meth:`RequestStats.begin` before the runner is acquired (so a cold start shows in the
numbers); the proxy stream calls :meth:`RequestTimer.first_byte` on the first body chunk and
:meth:`RequestTimer.finish` when the stream ends. Metrics are touched per request, never per
chunk.

The numbers live in ``prometheus_client`` metric objects; a :class:`RequestStats` is a
collector that the app's registry renders (:mod:`orchestrator.api.metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from orchestrator.runners.stats import without_created

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FIRST_BYTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[str, str]
"""The label values of one request's series: ``(model, mode)``."""

_LABEL_NAMES = ("model", "mode")


class RequestTimer:
    """Timing of one request; :meth:`finish` is idempotent."""

    __slots__ = (
        "_face",
        "_finished",
        "_first_byte_done",
        "_labels",
        "_started",
        "_stats",
        "status",
    )

    def __init__(self, stats: RequestStats, labels: Labels, face: str = "openai") -> None:
        self._stats = stats
        self._labels = labels
        self._face = face
        self._started = time.monotonic()
        self._first_byte_done = False
        self._finished = False
        self.status = 0

    def first_byte(self) -> None:
        """Record the time to the first body byte (once)."""
        if self._first_byte_done:
            return
        self._first_byte_done = True
        self._stats.observe_first_byte(self._labels, time.monotonic() - self._started)

    def finish(self) -> None:
        """Record the request's end: duration, count by status, in-flight minus one."""
        if self._finished:
            return
        self._finished = True
        self._stats.observe_finish(
            self._labels, time.monotonic() - self._started, self.status, self._face
        )


class RequestStats(Collector):
    """Thread-safe request metrics of the inference routes, per model and mode.

    A ``prometheus_client`` collector; its metric objects are registered nowhere else (never
    in the library's global registry: several apps share a test process).
    """

    def __init__(self) -> None:
        self._in_flight = Gauge(
            "dmr_requests_in_flight",
            "Inference requests being served, per model and mode.",
            _LABEL_NAMES,
            registry=None,
        )
        self._totals = Counter(
            "dmr_requests_total",
            "Finished inference requests, per model, mode and HTTP status.",
            (*_LABEL_NAMES, "status"),
            registry=None,
        )
        self._duration = Histogram(
            "dmr_request_duration_seconds",
            "Inference request duration including runner start, per model and mode.",
            _LABEL_NAMES,
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self._by_face = Counter(
            "dmr_api_requests_total",
            "Finished inference requests, per API face (openai, ollama, anthropic, responses), "
            "model and HTTP status.",
            ("face", "model", "status"),
            registry=None,
        )
        self._first_byte = Histogram(
            "dmr_request_time_to_first_byte_seconds",
            "Time from request arrival to the first body byte from the engine.",
            _LABEL_NAMES,
            buckets=FIRST_BYTE_BUCKETS,
            registry=None,
        )
        # PERF: the label children by label values. prometheus_client's labels() validates and
        # locks on every call: six calls were ~2 % of a small request's CPU (issue 18). A child,
        # once made, is the same object for the life of its metric (none is ever removed).
        self._series: dict[Labels, tuple[Gauge, Histogram, Histogram]] = {}
        self._outcomes: dict[tuple[Labels, str, str], tuple[Counter, Counter]] = {}

    def _series_of(self, labels: Labels) -> tuple[Gauge, Histogram, Histogram]:
        series = self._series.get(labels)
        if series is None:
            series = (
                self._in_flight.labels(*labels),
                self._duration.labels(*labels),
                self._first_byte.labels(*labels),
            )
            self._series[labels] = series
        return series

    def begin(self, model: str, mode: str, face: str = "openai") -> RequestTimer:
        """Count a request in flight and return its timer (``face``: the API it came by)."""
        labels: Labels = (model, mode)
        self._series_of(labels)[0].inc()
        return RequestTimer(self, labels, face)

    def observe_first_byte(self, labels: Labels, seconds: float) -> None:
        """Record one time to first byte (called by :class:`RequestTimer`)."""
        self._series_of(labels)[2].observe(seconds)

    def observe_finish(
        self, labels: Labels, seconds: float, status: int, face: str = "openai"
    ) -> None:
        """Record one finished request (called by :class:`RequestTimer`)."""
        # Each timer finishes once after its begin(), so the gauge never goes below zero.
        in_flight, duration, _ = self._series_of(labels)
        in_flight.dec()
        duration.observe(seconds)
        code = str(status or 0)
        key = (labels, code, face)
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = (
                self._totals.labels(*labels, code),
                self._by_face.labels(face, labels[0], code),
            )
            self._outcomes[key] = outcome
        outcome[0].inc()
        outcome[1].inc()

    def in_flight(self, model: str, mode: str) -> int:
        """Return how many requests for ``model`` in ``mode`` are being served."""
        wanted = {"model": model, "mode": mode}
        for family in self._in_flight.collect():
            for sample in family.samples:
                if sample.labels == wanted:
                    return int(sample.value)
        return 0

    def collect(self) -> Iterable[Metric]:
        """Return the request metric families for a scrape."""
        return [
            *self._in_flight.collect(),
            *without_created(self._totals),
            *without_created(self._by_face),
            *without_created(self._duration),
            *without_created(self._first_byte),
        ]

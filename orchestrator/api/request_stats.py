"""Request-side metrics of the daemon: in-flight requests, duration and time to first byte.

One :class:`RequestStats` per app. Each inference request takes a :class:`RequestTimer` from
:meth:`RequestStats.begin` before the runner is acquired (so a cold start shows in the
numbers); the proxy stream calls :meth:`RequestTimer.first_byte` on the first body chunk and
:meth:`RequestTimer.finish` when the stream ends. Locks are taken per request, never per chunk.

The text form is Prometheus 0.0.4 exposition, rendered by :func:`render_family`.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import threading
import time
from collections.abc import Iterable, Sequence

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FIRST_BYTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def escape_label_value(value: str) -> str:
    """Escape a label value for the text exposition format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_labels(labels: Iterable[tuple[str, str]]) -> str:
    """Return ``{a="b",c="d"}`` (empty string when there are no labels)."""
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels)
    return "{" + inner + "}" if inner else ""


def format_value(value: float) -> str:
    """Return a sample value as Prometheus writes it (``+Inf``, integers without ``.0``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render_family(name: str, kind: str, help_text: str, samples: Sequence[str]) -> str:
    """Return one metric family: ``# HELP``, ``# TYPE`` and its sample lines."""
    head = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
    return head + "".join(line + "\n" for line in samples)


@dataclasses.dataclass
class _HistogramSeries:
    counts: list[int]
    total: float = 0.0
    count: int = 0


class Histogram:
    """A labelled histogram with fixed buckets (not thread-safe; the owner locks).

    Args:
        buckets: Upper bounds in ascending order (``+Inf`` is implied).
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.series: dict[Labels, _HistogramSeries] = {}

    def observe(self, labels: Labels, value: float) -> None:
        """Add one observation."""
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _HistogramSeries(counts=[0] * len(self.buckets))
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.buckets):
            series.counts[index] += 1
        series.total += value
        series.count += 1

    def samples(self, name: str) -> list[str]:
        """Return the ``_bucket``, ``_sum`` and ``_count`` lines of every series."""
        lines = []
        for labels, series in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip(self.buckets, series.counts):
                cumulative += count
                bucket_labels = format_labels((*labels, ("le", format_value(bound))))
                lines.append(f"{name}_bucket{bucket_labels} {cumulative}")
            lines.append(f"{name}_bucket{format_labels((*labels, ('le', '+Inf')))} {series.count}")
            lines.append(f"{name}_sum{format_labels(labels)} {format_value(series.total)}")
            lines.append(f"{name}_count{format_labels(labels)} {series.count}")
        return lines


class RequestTimer:
    """Timing of one request; :meth:`finish` is idempotent."""

    __slots__ = ("_finished", "_first_byte_done", "_labels", "_started", "_stats", "status")

    def __init__(self, stats: RequestStats, labels: Labels) -> None:
        self._stats = stats
        self._labels = labels
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
        self._stats.observe_finish(self._labels, time.monotonic() - self._started, self.status)


class RequestStats:
    """Thread-safe request counters of the inference routes, per model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[Labels, int] = {}
        self._totals: dict[tuple[Labels, str], int] = {}
        self._duration = Histogram(DURATION_BUCKETS)
        self._first_byte = Histogram(FIRST_BYTE_BUCKETS)

    def begin(self, model: str, mode: str) -> RequestTimer:
        """Count a request in flight and return its timer."""
        labels: Labels = (("model", model), ("mode", mode))
        with self._lock:
            self._in_flight[labels] = self._in_flight.get(labels, 0) + 1
        return RequestTimer(self, labels)

    def observe_first_byte(self, labels: Labels, seconds: float) -> None:
        """Record one time to first byte (called by :class:`RequestTimer`)."""
        with self._lock:
            self._first_byte.observe(labels, seconds)

    def observe_finish(self, labels: Labels, seconds: float, status: int) -> None:
        """Record one finished request (called by :class:`RequestTimer`)."""
        with self._lock:
            self._in_flight[labels] = max(0, self._in_flight.get(labels, 0) - 1)
            self._duration.observe(labels, seconds)
            key = (labels, str(status or 0))
            self._totals[key] = self._totals.get(key, 0) + 1

    def in_flight(self, model: str, mode: str) -> int:
        """Return how many requests for ``model`` in ``mode`` are being served."""
        with self._lock:
            return self._in_flight.get((("model", model), ("mode", mode)), 0)

    def render(self) -> str:
        """Return the request families in Prometheus text format."""
        with self._lock:
            in_flight = [
                f"dmr_requests_in_flight{format_labels(labels)} {count}"
                for labels, count in sorted(self._in_flight.items())
            ]
            totals = [
                f"dmr_requests_total{format_labels((*labels, ('status', status)))} {count}"
                for (labels, status), count in sorted(self._totals.items())
            ]
            duration = self._duration.samples("dmr_request_duration_seconds")
            first_byte = self._first_byte.samples("dmr_request_time_to_first_byte_seconds")
        return "".join(
            [
                render_family(
                    "dmr_requests_in_flight",
                    "gauge",
                    "Inference requests being served, per model and mode.",
                    in_flight,
                ),
                render_family(
                    "dmr_requests_total",
                    "counter",
                    "Finished inference requests, per model, mode and HTTP status.",
                    totals,
                ),
                render_family(
                    "dmr_request_duration_seconds",
                    "histogram",
                    "Inference request duration including runner start, per model and mode.",
                    duration,
                ),
                render_family(
                    "dmr_request_time_to_first_byte_seconds",
                    "histogram",
                    "Time from request arrival to the first body byte from the engine.",
                    first_byte,
                ),
            ]
        )

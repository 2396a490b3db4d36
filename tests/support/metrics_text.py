"""Render and read Prometheus text in tests, with the library the daemon uses."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


def exposition(*collectors: Collector) -> str:
    """Return the text ``/metrics`` would give for ``collectors`` alone, in that order."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry).decode()


def sample_value(text: str, name: str, **labels: str) -> float | None:
    """Return the value of the sample ``name`` with exactly ``labels`` in ``text``, if any.

    Parsed, so the assertion holds whatever order the library writes labels in.
    """
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None

"""The scheduler's typed records as the API renders them, for assertions in tests."""

from __future__ import annotations

from typing import Any

from orchestrator.api.runner_shapes import configuration_entry, memory_report, ps_entry
from orchestrator.runners.info import RecordLike
from orchestrator.runners.scheduler import Scheduler


def ps(scheduler: Scheduler) -> list[dict[str, Any]]:
    """Return ``GET /engines/ps`` as the API would answer it."""
    return [ps_entry(status) for status in scheduler.management.ps()]


def configurations(scheduler: Scheduler, model_id: str | None = None) -> list[dict[str, Any]]:
    """Return ``GET /engines/_configure`` as the API would answer it."""
    return [configuration_entry(c) for c in scheduler.management.configurations(model_id)]


def memory_for(scheduler: Scheduler, record: RecordLike) -> dict[str, Any]:
    """Return the ``memory`` object of ``GET /models/{ref}``."""
    return memory_report(scheduler.management.memory_for(record))

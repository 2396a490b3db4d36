"""The JSON DMR's clients read about runners, built from the scheduler's typed records.

``GET /engines/ps`` entries (:func:`ps_entry`), the ``memory`` object of a ps entry and of
``GET /models/{ref}`` (:func:`memory_entry`, :func:`memory_report`), and
``GET /engines/_configure`` entries (:func:`configuration_entry`).
"""

from __future__ import annotations

from typing import Any

from orchestrator import logfiles
from orchestrator.runners.info import BACKEND
from orchestrator.runners.management import (
    Configuration,
    MemoryReport,
    RunnerMemoryView,
    RunnerStatus,
)
from orchestrator.settings import format_duration


def ps_entry(status: RunnerStatus) -> dict[str, Any]:
    """Return one ``GET /engines/ps`` entry.

    DMR's shape: ``in_use``/``loading`` only when true; ``last_used`` (RFC3339) is the zero
    time while in use or loading. Ours always shows the effective ``keep_alive`` and adds
    ``pid`` (``None`` until spawned), ``context_size``, ``socket``, ``memory`` and, for a
    runner with speculative decoding, ``draft_model``.
    """
    info = status.info
    entry: dict[str, Any] = {
        "backend_name": BACKEND,
        "model_name": info.model_name,
        "mode": info.mode,
        "last_used": (
            logfiles.ZERO_TIME
            if status.in_use or status.loading or status.last_used is None
            else logfiles.format_rfc3339(status.last_used)
        ),
    }
    if status.in_use:
        entry["in_use"] = True
    if status.loading:
        entry["loading"] = True
    entry["keep_alive"] = format_duration(status.keep_alive)
    entry["pid"] = info.pid
    entry["context_size"] = info.context_size
    entry["socket"] = info.socket_path
    if info.draft_model is not None:
        entry["draft_model"] = info.draft_model
    entry["memory"] = memory_entry(status.memory)
    rpc = rpc_entry(status)
    if rpc is not None:
        entry["rpc"] = rpc
    return entry


def rpc_entry(status: RunnerStatus) -> dict[str, Any] | None:
    """Return the ``rpc`` object of a ps entry, ``None`` for a runner without RPC workers.

    ``workers``: each worker as probed when the runner was planned (``endpoint``,
    ``reachable``, ``total_bytes``/``free_bytes`` or ``error``); ``placement``: what each
    device holds (``device`` is ``CPU`` for this host, else the worker's ``host:port``;
    ``layers``, ``model_bytes``, ``kv_bytes``, ``compute_bytes``), read from the runner's log
    once it is ready (``None`` before); ``offloaded_layers`` of ``total_layers``.
    """
    workers = status.memory.plan.workers
    if workers is None:
        return None
    placement = status.placement
    return {
        "workers": workers.to_json(),
        "placement": (
            [device.to_json() for device in placement.devices] if placement is not None else None
        ),
        "offloaded_layers": placement.offloaded_layers if placement is not None else None,
        "total_layers": placement.total_layers if placement is not None else None,
    }


def memory_entry(view: RunnerMemoryView) -> dict[str, Any]:
    """Return the ``memory`` object of a ps entry (bytes).

    ``estimate``: the breakdown predicted from the GGUF header for this runner's arguments;
    ``measured``: the latest measurement (``rss``, ``file``, ``anon``, ``vram``) and the peak
    RSS, ``None`` until measured; ``admitted_with``: what admission counted (``source`` is
    ``measured`` when an earlier run's footprint replaced the estimate); ``pinned``.
    """
    plan = view.plan
    measured = view.measured
    return {
        "estimate": plan.estimate.to_dict(),
        "measured": (
            {**measured.to_dict(), "peak_rss": max(view.peak_rss, measured.rss_bytes)}
            if measured is not None
            else None
        ),
        "admitted_with": {
            "ram": plan.need.ram_bytes,
            "vram": plan.need.vram_bytes,
            "source": plan.need.source,
        },
        "pinned": view.pinned,
    }


def memory_report(report: MemoryReport) -> dict[str, Any]:
    """Return the ``memory`` object of ``GET /models/{ref}``.

    The estimate breakdown and ``admitted_with`` as for a runner, the learned footprint if
    any, and ``never_fits``: why it can never run on this host (``""`` when it can).
    """
    body = memory_entry(RunnerMemoryView(report.plan, None, 0, False))
    del body["measured"], body["pinned"]
    learned = report.plan.learned
    body["learned"] = learned.to_json() if learned is not None else None
    body["never_fits"] = report.never_fits
    return body


def configuration_entry(configuration: Configuration) -> dict[str, Any]:
    """Return one ``GET /engines/_configure`` entry (capitalised keys, as DMR's)."""
    return {
        "Backend": BACKEND,
        "Model": configuration.model,
        "ModelID": configuration.model_id,
        "Mode": configuration.settings.mode,
        "Config": configuration.settings.to_api(),
    }

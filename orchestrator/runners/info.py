"""Public types of the runners package: what the scheduler reads and what it hands out.

The scheduler depends on the store only through :class:`StoreLike` and :class:`RecordLike`
(``orchestrator.store``'s ``Store`` and ``ModelRecord`` satisfy them), so runner tests can use a
small stand-in and the store can change without touching this package.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator import logs
from orchestrator.config import format_duration
from orchestrator.runners.llamacpp import BundleLike

if TYPE_CHECKING:
    from orchestrator.memory.footprint import Footprint
    from orchestrator.runners.admission import RunnerPlan
    from orchestrator.runners.configs import RunnerSettings

BACKEND_NAME = "llama.cpp"
_HEX = re.compile(r"[0-9a-f]+")


class RecordLike(Protocol):
    """What the scheduler reads from a ``ModelRecord`` (a frozen dataclass: read-only)."""

    @property
    def id(self) -> str:
        """Return ``sha256:<hex>``."""

    @property
    def tags(self) -> tuple[str, ...]:
        """Return the tag identities, first one is the display name."""


class StoreLike(Protocol):
    """What the scheduler needs from the ``Store``."""

    @property
    def root(self) -> Path:
        """Return the store directory (``runner-configs.json`` lives there)."""

    def bundle(self, record: Any) -> BundleLike:
        """Return the runtime bundle of ``record``."""

    def find(self, ref: str) -> Any:
        """Return the record for ``ref`` or ``None``."""


@dataclasses.dataclass(frozen=True)
class RunnerInfo:
    """Public facts about one runner (for leases, ``/metrics`` and ``/engines/ps``).

    Attributes:
        runner_id: Short unique name (socket and pid file names).
        model_id: ``sha256:<hex>`` of the model.
        model_name: First tag in familiar form, else the model ID.
        mode: ``completion``, ``embedding`` or ``reranking``.
        socket_path: Unix socket of the runner's llama-server.
        pid: Process ID (``None`` until spawned).
        context_size: ``--ctx-size`` it was started with (``0`` = the model's own).
        log_path: Its engine log file.
        backend: Always ``llama.cpp``.
    """

    runner_id: str
    model_id: str
    model_name: str
    mode: str
    socket_path: str
    pid: int | None
    context_size: int
    log_path: str
    backend: str = BACKEND_NAME


def short_id(model_id: str) -> str:
    """Return the 12-hex short form of ``sha256:<hex>``."""
    return model_id.rpartition(":")[2][:12]


def id_matches(model_id: str, wanted: str) -> bool:
    """Return whether ``wanted`` (full ID, bare hex, or a prefix of 12+ hex) names ``model_id``."""
    text = wanted.strip().lower()
    hex_part = text.rpartition(":")[2] if text.startswith("sha256:") else text
    if not _HEX.fullmatch(hex_part) or len(hex_part) < 12:
        return model_id == wanted
    return model_id.rpartition(":")[2].startswith(hex_part)


def ps_entry(
    *,
    model_name: str,
    mode: str,
    in_use: bool,
    loading: bool,
    last_used: float | None,
    keep_alive: float,
    info: RunnerInfo | None,
    memory: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return one ``GET /engines/ps`` entry.

    DMR's shape: ``in_use``/``loading`` only when true; ``last_used`` (RFC3339) is the zero
    time while in use or loading. Ours always shows the effective ``keep_alive`` and adds
    ``pid``, ``context_size`` and ``socket`` (``None`` while the process is being created),
    and ``memory`` (:func:`memory_entry`) when given.
    """
    entry: dict[str, Any] = {
        "backend_name": BACKEND_NAME,
        "model_name": model_name,
        "mode": mode,
        "last_used": (
            logs.ZERO_TIME
            if in_use or loading or last_used is None
            else logs.format_rfc3339(last_used)
        ),
    }
    if in_use:
        entry["in_use"] = True
    if loading:
        entry["loading"] = True
    entry["keep_alive"] = format_duration(keep_alive)
    entry["pid"] = info.pid if info is not None else None
    entry["context_size"] = info.context_size if info is not None else None
    entry["socket"] = info.socket_path if info is not None else None
    if memory is not None:
        entry["memory"] = memory
    return entry


def memory_entry(
    plan: RunnerPlan | None, measured: Footprint | None, peak_rss: int, pinned: bool
) -> dict[str, Any]:
    """Return the ``memory`` object of a ps entry or a model inspect (bytes).

    ``estimate``: the breakdown predicted from the GGUF header for this runner's arguments;
    ``measured``: the latest measurement (``rss``, ``file``, ``anon``, ``vram``) and the peak
    RSS, ``None`` until measured; ``admitted_with``: what admission counted (``source`` is
    ``measured`` when an earlier run's footprint replaced the estimate); ``pinned``.
    """
    body: dict[str, Any] = {
        "estimate": plan.estimate.to_dict() if plan is not None else None,
        "measured": None,
        "admitted_with": None,
        "pinned": pinned,
    }
    if measured is not None:
        body["measured"] = {**measured.to_dict(), "peak_rss": max(peak_rss, measured.rss_bytes)}
    if plan is not None:
        body["admitted_with"] = {
            "ram": plan.need.ram_bytes,
            "vram": plan.need.vram_bytes,
            "source": plan.need.source,
        }
    return body


def configuration_entry(model: str, model_id: str, settings: RunnerSettings) -> dict[str, Any]:
    """Return one ``GET /engines/_configure`` entry (capitalised keys, as DMR's)."""
    return {
        "Backend": BACKEND_NAME,
        "Model": model,
        "ModelID": model_id,
        "Mode": settings.mode,
        "Config": settings.to_api(),
    }

"""Public types of the runners package: what the scheduler reads and what it hands out.

The scheduler depends on the store only through :class:`StoreLike` and :class:`RecordLike`
(``orchestrator.store``'s ``Store`` and ``ModelRecord`` satisfy them), so runner tests can use a
small stand-in and the store can change without touching this package.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Protocol

from orchestrator.runners.llamacpp import BundleLike

BACKEND = "llama.cpp"
"""The one inference backend of this daemon (DMR's ``backend_name``)."""
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
        draft_model: Its speculative-decoding draft model as configured, if any.
    """

    runner_id: str
    model_id: str
    model_name: str
    mode: str
    socket_path: str
    pid: int | None
    context_size: int
    log_path: str
    backend: str = BACKEND
    draft_model: str | None = None


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

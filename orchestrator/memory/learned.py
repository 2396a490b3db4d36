"""Footprints learned from running runners, kept per (model ID, argv) in the store directory.

An estimate is a prediction; what a runner really held the last time it ran with the same
command line is a fact. The scheduler records every measurement here and the next admission of
the same model with the same arguments uses the learned figure instead of the estimate.

``<store root>/footprints.json`` holds, per model ID and argv key (a hash of the runner's
arguments with its socket and file paths left out), the RSS right after the runner became ready,
the largest RSS and VRAM seen, and how many samples were taken. Only growth is kept (the largest
seen): a footprint taken later is larger, as the prompt cache fills and more compute-buffer pages
are touched. The file is rewritten atomically, and only when a figure grows by at least
:data:`PERSIST_STEP_BYTES`, so steady serving does not write to disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.atomicfile import write_atomic
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate
from orchestrator.memory.footprint import Footprint
from orchestrator.memory.sizes import MiB

log = logging.getLogger(__name__)

FILE_NAME = "footprints.json"
PERSIST_STEP_BYTES = 1 * MiB
_FILE_VERSION = 1


def argv_key(argv: Sequence[str], *, replace: Mapping[str, str] | None = None) -> str:
    """Return a stable key for a runner's command line (16 hex digits).

    The executable (``argv[0]``) is left out and every occurrence of a ``replace`` key in an
    argument (the socket path, the bundle directory) is replaced by its value, so the key does
    not change when the runner gets another socket or the store another path.
    """
    words = []
    for word in list(argv)[1:]:
        for old, new in (replace or {}).items():
            if old:
                word = word.replace(old, new)
        words.append(word)
    return hashlib.sha256(json.dumps(words).encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LearnedFootprint:
    """What runners of one model with one command line were measured to hold.

    Attributes:
        ready_rss: Largest RSS measured right after a runner became ready.
        max_rss: Largest RSS measured at any time (after serving it includes the prompt cache).
        file_bytes: File-backed part (mapped weights) of the latest measurement.
        max_vram: Largest GPU memory measured (0 without NVML).
        samples: Number of measurements.
        updated: Wall-clock time of the latest measurement that changed a figure.
    """

    ready_rss: int = 0
    max_rss: int = 0
    file_bytes: int = 0
    max_vram: int = 0
    samples: int = 0
    updated: float = 0.0

    def merge(self, footprint: Footprint, *, ready: bool) -> LearnedFootprint:
        """Return this learned footprint with one more measurement folded in."""
        return LearnedFootprint(
            ready_rss=max(self.ready_rss, footprint.rss_bytes) if ready else self.ready_rss,
            max_rss=max(self.max_rss, footprint.rss_bytes),
            file_bytes=footprint.file_bytes,
            max_vram=max(self.max_vram, footprint.vram_bytes),
            samples=self.samples + 1,
            updated=time.time(),
        )

    def grew_from(self, older: LearnedFootprint | None) -> bool:
        """Return whether a figure grew by :data:`PERSIST_STEP_BYTES` or more since ``older``."""
        if older is None:
            return True
        return (
            self.ready_rss - older.ready_rss >= PERSIST_STEP_BYTES
            or self.max_rss - older.max_rss >= PERSIST_STEP_BYTES
            or self.max_vram - older.max_vram >= PERSIST_STEP_BYTES
        )

    def to_json(self) -> dict[str, Any]:
        """Return the stored form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LearnedFootprint:
        """Rebuild a stored footprint.

        Raises:
            ValueError, TypeError: The entry is malformed.
        """
        values = {f.name: data.get(f.name, f.default) for f in dataclasses.fields(cls)}
        learned = cls(
            ready_rss=int(values["ready_rss"]),
            max_rss=int(values["max_rss"]),
            file_bytes=int(values["file_bytes"]),
            max_vram=int(values["max_vram"]),
            samples=int(values["samples"]),
            updated=float(values["updated"]),
        )
        if min(learned.ready_rss, learned.max_rss, learned.file_bytes, learned.max_vram) < 0:
            raise ValueError("negative size in a learned footprint")
        return learned


def learned_need(estimate: MemoryEstimate, learned: LearnedFootprint | None) -> MemoryEstimate:
    """Return what admission should count for a runner: the learned footprint, else the estimate.

    RAM is the largest RSS seen, or the RSS at ready plus the prompt-cache allowance of the
    estimate, whichever is larger: a runner measured before it served anything still grows by
    its prompt cache. VRAM is the largest measured when NVML attributed any, else the estimate's.
    The result's ``source`` is ``"measured"``; without a learned RSS the estimate is returned.
    """
    if learned is None or learned.max_rss <= 0:
        return estimate
    cache = estimate.ram.prompt_cache
    ram_total = max(learned.max_rss, learned.ready_rss + cache)
    vram = (
        DeviceMemory(overhead=learned.max_vram) if learned.max_vram > 0 else estimate.vram
    )
    return dataclasses.replace(
        estimate,
        ram=DeviceMemory(overhead=max(ram_total - cache, 0), prompt_cache=cache),
        vram=vram,
        source="measured",
    )


class FootprintStore:
    """Learned footprints by (model ID, argv key), persisted in one JSON file.

    Thread-safe. A file that cannot be parsed is ignored with a warning (it is rebuilt from the
    next measurements); a file that cannot be written is logged, never raised: learning is an
    optimisation, and the estimate stays in use without it.
    """

    def __init__(self, path: Path) -> None:
        """Use ``path`` (read lazily on first access)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], LearnedFootprint] | None = None

    def _load(self) -> dict[tuple[str, str], LearnedFootprint]:
        if self._entries is not None:
            return self._entries
        entries: dict[tuple[str, str], LearnedFootprint] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            for item in data["footprints"]:
                key = (str(item["model_id"]), str(item["argv_key"]))
                entries[key] = LearnedFootprint.from_json(item)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as ex:
            log.warning(
                "learned footprints unreadable, starting afresh path=%s error=%s", self.path, ex
            )
            entries = {}
        self._entries = entries
        return entries

    def _save(self, entries: dict[tuple[str, str], LearnedFootprint]) -> None:
        body = {
            "version": _FILE_VERSION,
            "footprints": [
                {"model_id": model_id, "argv_key": key, **learned.to_json()}
                for (model_id, key), learned in sorted(entries.items())
            ],
        }
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(self.path, (json.dumps(body, indent=2) + "\n").encode("utf-8"))
        except OSError as ex:
            log.warning("cannot save learned footprints path=%s error=%s", self.path, ex)

    def get(self, model_id: str, key: str) -> LearnedFootprint | None:
        """Return the learned footprint of ``model_id`` run with argv ``key``, or ``None``."""
        with self._lock:
            return self._load().get((model_id, key))

    def record(
        self, model_id: str, key: str, footprint: Footprint, *, ready: bool = False
    ) -> LearnedFootprint:
        """Fold one measurement in; persist when a figure grew. Return the learned footprint.

        Args:
            model_id: The model's ID.
            key: :func:`argv_key` of the runner's command line.
            footprint: The measurement.
            ready: Whether it was taken right after the runner became ready.
        """
        with self._lock:
            entries = self._load()
            older = entries.get((model_id, key))
            learned = (older or LearnedFootprint()).merge(footprint, ready=ready)
            entries[(model_id, key)] = learned
            if learned.grew_from(older):
                self._save(entries)
            return learned

    def recent_models(self) -> list[str]:
        """Return the IDs of every model with a learned footprint, most recently measured first."""
        with self._lock:
            latest: dict[str, float] = {}
            for (model_id, _key), learned in self._load().items():
                latest[model_id] = max(latest.get(model_id, 0.0), learned.updated)
        return sorted(latest, key=lambda model_id: -latest[model_id])

    def forget(self, model_id: str) -> int:
        """Drop every footprint of ``model_id`` (deleted from the store); return how many."""
        with self._lock:
            entries = self._load()
            doomed = [key for key in entries if key[0] == model_id]
            for key in doomed:
                del entries[key]
            if doomed:
                self._save(entries)
            return len(doomed)

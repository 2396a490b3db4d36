"""A minimal stand-in for ``orchestrator.store.Store``: records and bundles the scheduler reads.

The scheduler needs only ``root``, ``bundle(record)`` and ``find(ref)``, and records with
``id`` and ``tags``; this keeps runner tests independent of the store's own development.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class StubRecord:
    """The fields of ``ModelRecord`` the scheduler reads."""

    id: str
    tags: tuple[str, ...]
    model_config: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def short_id(self) -> str:
        """Return the 12-hex short ID."""
        return self.id.removeprefix("sha256:")[:12]


@dataclasses.dataclass(frozen=True)
class StubBundle:
    """The fields of ``Bundle`` that ``build_argv`` reads."""

    root: Path
    gguf_path: Path
    mmproj_path: Path | None = None
    chat_template_path: Path | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


class StubStore:
    """Records added by :meth:`add`, each pointing at a GGUF path given by the test."""

    def __init__(self, root: Path) -> None:
        """Use ``root`` as the store root (the scheduler keeps runner-configs.json there)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._bundles: dict[str, StubBundle] = {}
        self._records: dict[str, StubRecord] = {}

    def add(
        self,
        gguf_path: Path,
        *,
        tags: tuple[str, ...] = (),
        config: dict[str, Any] | None = None,
        chat_template_path: Path | None = None,
        mmproj_path: Path | None = None,
    ) -> StubRecord:
        """Register a model; its ID is derived from the path and tags."""
        digest = hashlib.sha256(f"{gguf_path}|{tags}".encode()).hexdigest()
        record = StubRecord(id=f"sha256:{digest}", tags=tags, model_config=dict(config or {}))
        self._records[record.id] = record
        self._bundles[record.id] = StubBundle(
            root=Path(gguf_path).parent,
            gguf_path=Path(gguf_path),
            mmproj_path=mmproj_path,
            chat_template_path=chat_template_path,
            config=dict(config or {}),
        )
        return record

    def remove(self, record: StubRecord) -> None:
        """Forget a model (as ``Store.delete`` would)."""
        self._records.pop(record.id, None)
        self._bundles.pop(record.id, None)

    def bundle(self, record: StubRecord) -> StubBundle:
        """Return the bundle of ``record``."""
        return self._bundles[record.id]

    def find(self, ref: str) -> StubRecord | None:
        """Return the record whose ID is ``ref`` (full ID only), else ``None``."""
        return self._records.get(ref)

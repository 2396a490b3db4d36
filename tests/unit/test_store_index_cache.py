"""The store reads models.json again only when it changed (lookups on every request)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.errors import ModelNotFoundError
from orchestrator.store import index
from orchestrator.store.store import Store
from tests.support.store_models import add_model


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    seen: list[Path] = []
    real = index.read_index

    def counting(path: Path) -> list[index.IndexEntry]:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(index, "read_index", counting)
    return seen


def test_repeated_lookups_read_the_index_once(tmp_path: Path, reads: list[Path]) -> None:
    store = Store(tmp_path / "models")
    record = add_model(store, "first", tags=["ai/first:latest"])
    reads.clear()
    for _ in range(5):
        assert store.resolve("ai/first").id == record.id
        assert [r.id for r in store.list_models()] == [record.id]
    assert len(reads) == 1


def test_a_change_by_another_process_is_seen_at_once(tmp_path: Path) -> None:
    ours = Store(tmp_path / "models")
    add_model(ours, "first", tags=["ai/first:latest"])
    assert ours.resolve("ai/first")
    # The CLI's `model-runner package` is another Store on the same directory.
    theirs = Store(tmp_path / "models")
    second = add_model(theirs, "second", tags=["ai/second:latest"])
    assert ours.resolve("ai/second").id == second.id
    theirs.tag("ai/second", "ai/renamed:v1")
    assert ours.resolve("ai/renamed:v1").id == second.id


def test_a_hand_edit_in_place_is_seen(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "first", tags=["ai/first:latest"])
    assert store.resolve("ai/first")
    path = store.layout.index_file
    document = json.loads(path.read_text())
    document["models"][0]["tags"] = ["ai/edited:latest"]
    before = path.stat()
    # Same inode, written in place (an editor without atomic save).
    with path.open("r+") as handle:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(document))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    with pytest.raises(ModelNotFoundError):
        store.resolve("ai/first")
    assert store.resolve("ai/edited")

"""Fixtures of the component tests that drive the Scheduler with the fake engine."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.store_stub import StubRecord, StubStore
from tests.support.processes import is_gone


@pytest.fixture
def workdir() -> Iterator[Path]:
    # NOTE: under /tmp, not pytest's tmp_path: runner socket paths must stay under 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="dmr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def started_pids(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[int]]]:
    """Make every fake engine record its pid; kill any still alive at the end (safety net)."""
    log = workdir / "starts.log"
    monkeypatch.setenv("FAKE_LLAMA_START_LOG", str(log))
    monkeypatch.setenv("FAKE_LLAMA_LOAD_SECONDS", "0.1")

    def read() -> list[int]:
        return [int(line) for line in log.read_text().split()] if log.exists() else []

    yield read
    for pid in read():
        if not is_gone(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def store(workdir: Path) -> StubStore:
    return StubStore(workdir / "store")


def add_stub_model(store: StubStore, gguf: Path, name: str) -> StubRecord:
    """Add ``docker.io/ai/<name>:latest`` to ``store``, written as a 4-byte stand-in at ``gguf``."""
    gguf.write_bytes(b"GGUF")
    return store.add(gguf, tags=(f"docker.io/ai/{name}:latest",), config={"context_size": 2048})


@pytest.fixture
def record(store: StubStore, workdir: Path) -> StubRecord:
    return add_stub_model(store, workdir / "model.gguf", "smollm2")

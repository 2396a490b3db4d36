"""A runner killed by SIGILL/SIGBUS/SIGSEGV while loading: explained once, not retried in a loop.

The fake engine dies by the signal during its warm-up, as a llama-server whose CPU traps an
instruction does (``FAKE_LLAMA_BEHAVIOUR=signal:SIGILL``).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.errors import EngineCrashedError
from orchestrator.runners.scheduler import Scheduler
from orchestrator.settings import Config
from tests.component.conftest import add_stub_model
from tests.fakes.store_stub import StubRecord, StubStore
from tests.support.api_app import (
    FAKE_ENGINE,
    TINY_TAG,
    assert_error_shape,
    build_harness,
)


@pytest.fixture
def engine_copy(workdir: Path) -> Path:
    """A copy of the fake engine the test may replace, as a rebuild does."""
    copy = workdir / "engine" / "llama-server"
    copy.parent.mkdir()
    shutil.copy2(FAKE_ENGINE, copy)
    return copy


@pytest.fixture
def other_record(store: StubStore, workdir: Path) -> StubRecord:
    return add_stub_model(store, workdir / "other.gguf", "other")


@pytest.fixture
def scheduler(
    store: StubStore, workdir: Path, engine_copy: Path, started_pids: Callable[[], list[int]]
) -> Iterator[Scheduler]:
    made = Scheduler(
        config=Config(load_timeout_seconds=10.0, stop_grace_seconds=2.0, max_runners=8),
        store=store,
        engine_path=engine_copy,
        runtime_dir=workdir / "run",
        log_dir=workdir / "logs",
    )
    made.start()
    yield made
    made.shutdown(grace_seconds=1.0)


def _acquire_error(scheduler: Scheduler, record: StubRecord) -> EngineCrashedError:
    with pytest.raises(EngineCrashedError) as caught:
        scheduler.acquire(record, "completion")
    return caught.value


def test_sigill_at_load_is_explained_and_not_retried(
    scheduler: Scheduler,
    record: StubRecord,
    other_record: StubRecord,
    started_pids: Callable[[], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "signal:SIGILL")
    first = _acquire_error(scheduler, record)
    assert first.status == 500 and first.code == "engine_crashed"
    assert "SIGILL (illegal instruction)" in first.message
    assert "make engine" in first.message and "LLAMA_ARG_REPACK=0" in first.message
    assert first.details["signal"] == signal.SIGILL
    assert len(started_pids()) == 1
    # Every model, not only this one: the engine cannot run on this CPU.
    again = _acquire_error(scheduler, other_record)
    assert "not retried" in again.message and "SIGILL" in again.message
    assert len(started_pids()) == 1  # no second spawn
    assert scheduler.crashes.engine_crash() is not None


def test_a_replaced_engine_binary_is_tried_again(
    scheduler: Scheduler,
    record: StubRecord,
    engine_copy: Path,
    started_pids: Callable[[], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "signal:SIGILL")
    _acquire_error(scheduler, record)
    # A rebuild renames a new file into place: new inode.
    replacement = engine_copy.with_name("llama-server.new")
    shutil.copy2(FAKE_ENGINE, replacement)
    os.replace(replacement, engine_copy)
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "serve")
    assert scheduler.crashes.engine_crash() is None
    scheduler.acquire(record, "completion").release()
    assert len(started_pids()) == 2


def test_sigsegv_holds_back_only_that_model(
    scheduler: Scheduler,
    record: StubRecord,
    other_record: StubRecord,
    started_pids: Callable[[], list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "signal:SIGSEGV")
    first = _acquire_error(scheduler, record)
    assert "SIGSEGV (segmentation fault)" in first.message
    _acquire_error(scheduler, record)
    assert len(started_pids()) == 1  # held back, not respawned
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "serve")
    scheduler.acquire(other_record, "completion").release()  # another model still loads
    assert len(started_pids()) == 2
    assert scheduler.crashes.engine_crash() is None


def test_engines_status_shows_the_crash(
    started_pids: Callable[[], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "signal:SIGILL")
    harness = build_harness()
    try:
        status = harness.client.simulate_get("/engines/status").json["llama.cpp"]
        assert status.startswith("Running: llama.cpp 0.0.0-fake")
        assert "CPU engine configured (LLAMA_SERVER_PATH) on CPU: " in status
        body = {"model": TINY_TAG, "messages": [{"role": "user", "content": "hi"}]}
        answer = harness.client.simulate_post("/engines/v1/chat/completions", json=body)
        error = assert_error_shape(answer, 500, "engine_crashed")
        assert "SIGILL" in error["message"] and "make engine" in error["message"]
        status = harness.client.simulate_get("/engines/status").json["llama.cpp"]
        assert status.startswith("Error: llama-server was killed by SIGILL (illegal instruction)")
    finally:
        harness.close()

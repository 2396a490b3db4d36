"""The engine proof against the fake engine: tokens, death by a signal, other failures, hangs.

The real engine's proof is in tests/functional/test_engine_proof.py; these are the failures a real
build cannot produce on cue here.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.enginebuild.proof import prove
from tests.support.api_app import FAKE_ENGINE
from tests.support.processes import is_gone


@pytest.fixture
def model(workdir: Path) -> Path:
    path = workdir / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


def _all_gone(started_pids: Callable[[], list[int]]) -> bool:
    pids = started_pids()
    return bool(pids) and all(is_gone(pid) for pid in pids)


def test_tokens_prove_the_build(model: Path, started_pids: Callable[[], list[int]]) -> None:
    result = prove(FAKE_ENGINE, model)
    assert result.ok and result.tokens_per_second == 123.0
    assert result.detail.startswith("8 tokens at 123.0 tokens/s")
    assert _all_gone(started_pids)


@pytest.mark.parametrize(
    ("behaviour", "signum", "when"),
    [
        ("signal:SIGILL", signal.SIGILL, "while loading the model"),
        ("signal:SIGSEGV", signal.SIGSEGV, "while loading the model"),
        ("signal-on-generate:SIGBUS", signal.SIGBUS, "while generating"),
    ],
)
def test_death_by_a_cpu_signal_is_a_trap(
    model: Path,
    started_pids: Callable[[], list[int]],
    monkeypatch: pytest.MonkeyPatch,
    behaviour: str,
    signum: int,
    when: str,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", behaviour)
    monkeypatch.setenv("LLAMA_ARG_REPACK", "0")  # must not reach the engine (and hide the trap)
    result = prove(FAKE_ENGINE, model)
    assert not result.ok and result.cpu_trap and result.signal == signum
    assert result.detail == f"killed by {signal.Signals(signum).name} {when}"
    assert _all_gone(started_pids)


def test_a_load_error_is_not_a_trap_and_keeps_the_output(
    model: Path, started_pids: Callable[[], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "crash")
    result = prove(FAKE_ENGINE, model)
    assert not result.ok and not result.cpu_trap
    assert result.detail == "exited with status 1 while loading the model"
    assert any("error loading model" in line for line in result.log_tail)


def test_a_server_that_never_gets_ready_is_stopped_at_the_deadline(
    model: Path, started_pids: Callable[[], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "hang")
    result = prove(FAKE_ENGINE, model, ready_timeout=1.0)
    assert not result.ok and not result.cpu_trap and result.detail == "not ready within 1 s"
    assert _all_gone(started_pids)

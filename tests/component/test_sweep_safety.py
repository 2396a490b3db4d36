"""The start-up sweep acts only on pid files we wrote and on runners we started.

A pid file in the runtime directory is evidence, not an order: one planted by someone else (a
file of another user, a symlink) or naming a process that is not one of our runners (another
user's process, a program that merely mentions llama-server) must not get anything killed.
Each case is checked against a control: the same stand-in process, described honestly, is
killed, so a refusal is not an accident of the stand-in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.runners.sweep import sweep_leftovers
from tests.support.processes import is_gone, stop_process

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
SLEEP_CODE = "import time; time.sleep(60)"

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def runners_dir(workdir: Path) -> Path:
    path = workdir / "run" / "runners"
    path.mkdir(parents=True, mode=0o700)
    return path


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", **kwargs,  # type: ignore[call-overload]
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc, grace_seconds=1.0)


@pytest.fixture
def sweep_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # setup_logging() in another test may have cut the orchestrator loggers off from the root.
    monkeypatch.setattr(logging.getLogger("orchestrator"), "propagate", True)
    caplog.set_level(logging.INFO, logger="orchestrator.runners.sweep")
    return caplog


def runner_argv(runners_dir: Path, runner_id: str, python: str = sys.executable) -> list[str]:
    """A stand-in runner: a sleeper whose command line is shaped like our llama-server argv."""
    socket_path = runners_dir / f"{runner_id}.sock"
    return [python, "-c", SLEEP_CODE, "--model", "m.gguf", "--host", str(socket_path)]


def record_for(proc: subprocess.Popen[bytes], argv: list[str]) -> str:
    create_time = psutil.Process(proc.pid).create_time()
    return json.dumps({"pid": proc.pid, "create_time": create_time, "argv": argv})


def test_control_a_leftover_runner_of_ours_is_killed(runners_dir: Path, spawn: Spawn) -> None:
    argv = runner_argv(runners_dir, "c1-aaaa")
    proc = spawn(argv)
    (runners_dir / "c1-aaaa.pid").write_text(record_for(proc, argv))
    assert sweep_leftovers(runners_dir, grace_seconds=2.0) == 1
    assert proc.wait(timeout=5.0) is not None
    assert list(runners_dir.iterdir()) == []


def test_pid_file_naming_another_program_is_not_acted_on(
    runners_dir: Path, spawn: Spawn, sweep_log: pytest.LogCaptureFixture
) -> None:
    bystander = spawn(["sleep", "60"])
    (runners_dir / "c1-aaaa.pid").write_text(record_for(bystander, ["sleep", "60"]))
    assert sweep_leftovers(runners_dir, grace_seconds=1.0) == 0
    assert bystander.poll() is None
    assert "c1-aaaa.pid" in sweep_log.text and str(bystander.pid) in sweep_log.text


def test_process_that_only_mentions_llama_server_is_not_acted_on(
    runners_dir: Path, spawn: Spawn
) -> None:
    # Someone's `tail -f llama-server.log`: not a runner, whatever a pid file claims.
    bystander = spawn([sys.executable, "-c", SLEEP_CODE, "llama-server.log"])
    claimed = ["/usr/bin/llama-server", "--host", str(runners_dir / "c1-aaaa.sock")]
    (runners_dir / "c1-aaaa.pid").write_text(record_for(bystander, claimed))
    assert sweep_leftovers(runners_dir, grace_seconds=1.0) == 0
    assert bystander.poll() is None


def test_runner_shaped_process_of_a_pid_file_for_another_id_is_not_acted_on(
    runners_dir: Path, spawn: Spawn
) -> None:
    argv = runner_argv(runners_dir, "c1-aaaa")
    proc = spawn(argv)
    (runners_dir / "c2-bbbb.pid").write_text(record_for(proc, argv))
    assert sweep_leftovers(runners_dir, grace_seconds=1.0) == 0
    assert proc.poll() is None


@as_root
def test_pid_file_of_another_user_is_left_alone(
    runners_dir: Path, spawn: Spawn, sweep_log: pytest.LogCaptureFixture
) -> None:
    argv = runner_argv(runners_dir, "c1-aaaa")
    proc = spawn(argv)
    pid_file = runners_dir / "c1-aaaa.pid"
    pid_file.write_text(record_for(proc, argv))
    os.chown(pid_file, NOBODY, NOBODY)
    assert sweep_leftovers(runners_dir, grace_seconds=1.0) == 0
    assert proc.poll() is None
    assert pid_file.exists()  # not ours to delete either
    assert "c1-aaaa.pid" in sweep_log.text and str(NOBODY) in sweep_log.text


def test_symlinked_pid_file_is_not_followed(
    runners_dir: Path, workdir: Path, spawn: Spawn, sweep_log: pytest.LogCaptureFixture
) -> None:
    argv = runner_argv(runners_dir, "c1-aaaa")
    proc = spawn(argv)
    elsewhere = workdir / "elsewhere.json"
    elsewhere.write_text(record_for(proc, argv))
    (runners_dir / "c1-aaaa.pid").symlink_to(elsewhere)
    assert sweep_leftovers(runners_dir, grace_seconds=1.0) == 0
    assert proc.poll() is None
    assert elsewhere.exists()
    assert "c1-aaaa.pid" in sweep_log.text


@as_root
def test_process_of_another_user_is_not_acted_on(
    runners_dir: Path, spawn: Spawn, sweep_log: pytest.LogCaptureFixture
) -> None:
    # The system Python: nobody may not be able to reach the test environment's interpreter.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for a process of another user")
    argv = runner_argv(runners_dir, "c1-aaaa", python)
    proc = spawn(argv, user=NOBODY, group=NOBODY, extra_groups=[])
    (runners_dir / "c1-aaaa.pid").write_text(record_for(proc, argv))
    assert sweep_leftovers(runners_dir, grace_seconds=1.0) == 0
    assert proc.poll() is None and not is_gone(proc.pid)
    assert str(proc.pid) in sweep_log.text


@as_root
def test_only_our_own_sockets_are_removed(runners_dir: Path) -> None:
    import socket

    ours, theirs = runners_dir / "c1-aaaa.sock", runners_dir / "c2-bbbb.sock"
    for path in (ours, theirs):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    os.chown(theirs, NOBODY, NOBODY, follow_symlinks=False)
    sweep_leftovers(runners_dir, grace_seconds=1.0)
    assert not ours.exists() and theirs.exists()

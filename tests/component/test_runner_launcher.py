"""The launcher's spare wrapper and the readiness probe, with real processes and sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import ServiceUnavailableError
from orchestrator.runners.launcher import WRAPPER, Launcher
from orchestrator.runners.readiness import probe_health
from tests.support.processes import wait_until


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    made = Launcher()
    yield made
    made.close()


def ready_spare(launcher: Launcher) -> subprocess.Popen[bytes]:
    launcher.prepare()
    assert wait_until(lambda: launcher._spare is not None, timeout=10)
    spare = launcher._spare
    assert spare is not None
    return spare


def test_the_spare_execs_the_command_with_its_log_cwd_and_environment(
    launcher: Launcher, workdir: Path
) -> None:
    spare = ready_spare(launcher)
    log = workdir / "engine.log"
    log.write_text("starting\n")
    script = 'echo "out $FOO $(pwd)"; readlink /proc/self/fd/0; echo err >&2'
    popen = launcher.start_prepared(
        ["/bin/sh", "-c", script], log_path=log, cwd=workdir, env={"FOO": "bar", "PATH": "/bin"}
    )
    assert popen is spare
    assert popen.wait(10) == 0
    assert log.read_text() == f"starting\nout bar {workdir}\n/dev/null\nerr\n"
    # Used: the next start has no spare until one is prepared again.
    assert launcher.start_prepared(["/bin/true"], log_path=log, cwd=workdir) is None


def test_a_spare_killed_while_waiting_is_not_used(launcher: Launcher, workdir: Path) -> None:
    spare = ready_spare(launcher)
    spare.kill()
    spare.wait(10)
    assert launcher.start_prepared(["/bin/true"], log_path=workdir / "x.log", cwd=workdir) is None


def test_close_ends_the_unused_spare_and_refuses_starts(workdir: Path) -> None:
    launcher = Launcher()
    spare = ready_spare(launcher)
    launcher.close()
    assert spare.returncode == 0  # end of input: it left by itself
    with pytest.raises(ServiceUnavailableError):
        launcher.start_prepared(["/bin/true"], log_path=workdir / "x.log", cwd=workdir)
    launcher.prepare()  # no-op once closed
    assert launcher._spare is None


def test_the_waiting_wrapper_refuses_a_wrong_parent_and_leaves_on_end_of_input() -> None:
    def wait_mode(parent: int) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-I", "-S", str(WRAPPER), str(parent), "--wait"]
        return subprocess.run(argv, input=b"", capture_output=True, timeout=30, check=False)

    assert wait_mode(os.getpid()).returncode == 0
    gone = wait_mode(1)
    assert gone.returncode == 3 and b"parent 1 is gone" in gone.stderr


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                request = conn.recv(4096)
                assert request.startswith(b"GET /health HTTP/1.1\r\n")
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}', 200),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", 503),
        (b"nonsense", None),
    ],
)
def test_probe_health_reads_the_status(workdir: Path, answer: bytes, status: int | None) -> None:
    path = workdir / "h.sock"
    thread = serve_once(path, answer)
    assert probe_health(str(path), 5.0) == status
    thread.join(5)


def test_probe_health_of_a_missing_or_silent_socket(workdir: Path) -> None:
    assert probe_health(str(workdir / "none.sock")) is None
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(workdir / "silent.sock"))
    silent.listen(1)
    with silent:
        start = time.monotonic()
        assert probe_health(str(workdir / "silent.sock"), 0.2) is None
        assert time.monotonic() - start < 2.0


def test_the_spare_runs_with_the_environment_of_the_start_not_of_its_own_start(
    launcher: Launcher, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMR_TEST_SPARE", "before")
    ready_spare(launcher)
    monkeypatch.setenv("DMR_TEST_SPARE", "after")
    log = workdir / "env.log"
    popen = launcher.start_prepared(
        ["/bin/sh", "-c", "echo $DMR_TEST_SPARE"], log_path=log, cwd=workdir
    )
    assert popen is not None and popen.wait(10) == 0
    assert log.read_text() == "after\n"

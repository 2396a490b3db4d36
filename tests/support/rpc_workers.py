"""llama.cpp ``rpc-server`` workers on 127.0.0.1 for tests and the bench.

:class:`RpcWorker` starts the ``rpc-server`` that ``bin/provision-engine`` builds next to
``llama-server`` on a free loopback port and waits until it listens; :meth:`RpcWorker.stop` is
TERM, a bounded wait, then KILL. The ``rpc_workers`` fixture (``tests/conftest.py`` does not
need to know it: import it into the test module) stops every worker it started.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import free_port, stop_process

START_TIMEOUT_SECONDS = 15.0


class RpcWorker:
    """One ``rpc-server`` process on ``127.0.0.1:<port>``.

    Args:
        binary: The ``rpc-server`` executable.
        log_path: Where its output goes (appended across restarts).
        port: The port; a free one when ``None``.
        threads: CPU threads it computes with.
    """

    def __init__(
        self, binary: Path, log_path: Path, *, port: int | None = None, threads: int = 1
    ) -> None:
        self.binary = binary
        self.log_path = log_path
        self.port = port if port is not None else free_port()
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """Return ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> RpcWorker:
        """Start it (again, on the same port) and wait until it accepts connections."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "-H", "127.0.0.1", "-p", str(self.port),
                 "-t", str(self.threads)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpc-server exited with {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rpc-server did not listen within {START_TIMEOUT_SECONDS}s")
            time.sleep(0.05)
        return self

    def _listening(self) -> bool:
        # A probe connection is served and closed at once (the worker reads EOF, no hello).
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL it (a worker lost mid-request) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """TERM, wait, KILL (bounded)."""
        if self.proc is not None:
            stop_process(self.proc, grace_seconds=5.0)

    def log(self) -> str:
        """Return what it printed."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def rpc_server_binary(llama_server_bin: Path) -> Path:
    """Return the ``rpc-server`` beside ``llama_server_bin``, or skip when the build has none."""
    binary = llama_server_bin.parent / "rpc-server"
    if not binary.is_file():
        pytest.skip(f"no rpc-server beside {llama_server_bin} (an engine built without GGML_RPC)")
    return binary


@pytest.fixture
def rpc_workers(
    llama_server_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[int], list[RpcWorker]]]:
    """Yield ``start(count) -> workers``: that many rpc-servers on free loopback ports."""
    binary = rpc_server_binary(llama_server_bin)
    started: list[RpcWorker] = []

    def start(count: int) -> list[RpcWorker]:
        base = tmp_path_factory.mktemp("rpc")
        workers = [RpcWorker(binary, base / f"rpc-{i}.log") for i in range(count)]
        for worker in workers:
            started.append(worker)
            worker.start()
        return workers

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()

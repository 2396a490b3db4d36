"""Fixtures that start the real daemon under gunicorn on loopback.

* ``seeded_store_template`` (session): a store holding the real SmolLM2 model, tagged
  ``ai/smollm2:135M-Q4_1`` and ``ai/smollm2:latest``; daemons get a hard-linked copy.
* ``daemon_factory`` (module): ``start(**env)`` runs ``python -m orchestrator serve`` on a free
  127.0.0.1 port plus a Unix socket, with its own store, runtime and log folders, and waits
  until ``GET /version`` answers. Teardown stops every daemon it started (TERM, wait, KILL) and
  fails the test module if a llama-server of those daemons is still alive.
* ``daemon`` (module): one daemon with the defaults, shared by a test module.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.support.processes import free_port, stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_TAGS = ("ai/smollm2:135M-Q4_1", "ai/smollm2:latest")
MODEL = "ai/smollm2"
START_TIMEOUT_SECONDS = 60.0
# How long runners may outlive a stopped daemon (the parent-death signal, the sweep).
RUNNER_EXIT_TIMEOUT_SECONDS = 15.0


@dataclasses.dataclass
class Daemon:
    """One running daemon started by :func:`daemon_factory`.

    Attributes:
        proc: The gunicorn master process.
        port: Its TCP port on 127.0.0.1.
        socket_path: Its Unix socket.
        models_path: Its store.
        runtime_dir: Runner sockets and pid files.
        log_dir: ``inference.log`` and engine logs.
        env: The environment it was started with.
        output_path: Its stdout and stderr.
    """

    proc: subprocess.Popen[bytes]
    port: int
    socket_path: Path
    models_path: Path
    runtime_dir: Path
    log_dir: Path
    env: dict[str, str]
    output_path: Path

    @property
    def base_url(self) -> str:
        """Return ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """Return the URL of ``path`` on the TCP listener."""
        return self.base_url + path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        """``GET`` over TCP (10 s timeout unless given)."""
        kwargs.setdefault("timeout", 10)
        return requests.get(self.url(path), **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        """``POST`` over TCP (60 s timeout unless given)."""
        kwargs.setdefault("timeout", 60)
        return requests.post(self.url(path), **kwargs)

    def runner_processes(self) -> list[psutil.Process]:
        """Return the live llama-server processes this daemon started (found by their paths)."""
        marker = str(self.runtime_dir)
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if cmdline and "llama-server" in cmdline[0] and any(marker in arg for arg in cmdline):
                found.append(proc)
        return found

    def worker_pid(self) -> int | None:
        """Return the pid of the gunicorn worker (the child of the master), if any."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        return children[0].pid if children else None

    def output(self) -> str:
        """Return what the daemon printed so far."""
        return self.output_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        """Return whether ``GET /version`` answers 200."""
        try:
            return requests.get(self.url("/version"), timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self) -> None:
        """Wait until the daemon answers; fail with its output if it exits or is too slow."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.is_ready():
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"daemon not ready after {START_TIMEOUT_SECONDS}s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 60.0) -> int:
        """Send ``sig`` to the master and wait (bounded) for it to exit; return its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
        return int(self.proc.returncode)


def _serve_command() -> list[str]:
    if (REPO_ROOT / "orchestrator" / "cli.py").is_file():
        return [sys.executable, "-m", "orchestrator", "serve"]
    return [
        sys.executable,
        "-c",
        (
            "from orchestrator.settings import load; from orchestrator.server import run; "
            "raise SystemExit(run(load()))"
        ),
    ]


def _link_tree(source: Path, target: Path) -> None:
    # Hard links: blobs are immutable and the store replaces its index files by rename.
    shutil.copytree(source, target, copy_function=os.link)


def spawn_daemon(
    base: Path, models_path: Path, llama_server_bin: Path, env_overrides: dict[str, str]
) -> Daemon:
    """Start a daemon whose folders live under ``base`` (the store must exist)."""
    runtime_dir = base / "run"
    log_dir = base / "logs"
    socket_path = base / "dmr.sock"
    config_file = base / "config.yaml"
    config_file.write_text("")
    docker_config = base / "docker-config"
    docker_config.mkdir(exist_ok=True)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DMR_", "MODEL_RUNNER_", "NOTIFY_SOCKET"))
    }
    env.update(
        {
            "DMR_CONFIG": str(config_file),
            # No stray registry credentials from the user running the tests.
            "DOCKER_CONFIG": str(docker_config),
            "DMR_RUNNER_PORT": str(port),
            "DMR_RUNNER_HOST": "127.0.0.1",
            "MODEL_RUNNER_SOCK": str(socket_path),
            "MODELS_PATH": str(models_path),
            "LLAMA_SERVER_PATH": str(llama_server_bin.parent),
            "DMR_RUNTIME_DIR": str(runtime_dir),
            "MODEL_RUNNER_LOG_DIR": str(log_dir),
            "DMR_KEEP_ALIVE": "5m",
            "DMR_STOP_GRACE_SECONDS": "3",
            "DMR_MAX_CONCURRENT_REQUESTS": "16",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(env_overrides)
    output_path = base / "daemon.out"
    with open(output_path, "ab") as output:
        proc = subprocess.Popen(
            _serve_command(),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Daemon(
        proc=proc,
        port=port,
        socket_path=socket_path,
        models_path=models_path,
        runtime_dir=runtime_dir,
        log_dir=log_dir,
        env=env,
        output_path=output_path,
    )
    try:
        daemon.wait_ready()
    except BaseException:
        stop_process(proc)
        raise
    return daemon


def assert_no_runners_left(daemons: list[Daemon]) -> None:
    """Fail if a llama-server of ``daemons`` outlives them (killing it first)."""
    leftovers: list[psutil.Process] = []

    def none_left() -> bool:
        leftovers[:] = [proc for daemon in daemons for proc in daemon.runner_processes()]
        return not leftovers

    if wait_until(none_left, timeout=RUNNER_EXIT_TIMEOUT_SECONDS, interval=0.2):
        return
    described = [f"pid={proc.pid} cmdline={' '.join(proc.cmdline())}" for proc in leftovers]
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    pytest.fail("llama-server processes outlived their daemon:\n" + "\n".join(described))


@pytest.fixture(scope="session")
def seeded_store_template(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """Return a store holding the real SmolLM2 model under its two tags (do not modify)."""
    from orchestrator.store.builder import build_gguf_artifact, store_artifact
    from orchestrator.store.store import Store

    root = tmp_path_factory.mktemp("seed") / "models"
    artifact = build_gguf_artifact(smollm2_gguf, created=datetime(2025, 1, 1, tzinfo=UTC))
    store_artifact(Store(root), artifact, MODEL_TAGS)
    return root


@pytest.fixture(scope="module")
def daemon_factory(
    tmp_path_factory: pytest.TempPathFactory,
    seeded_store_template: Path,
    llama_server_bin: Path,
) -> Iterator[Callable[..., Daemon]]:
    """Yield ``start(models_path=None, **env) -> Daemon``; stop them all at module end.

    ``models_path`` reuses an existing store (a restart); otherwise the daemon gets a fresh
    copy of the seeded store. Extra keyword arguments are environment variables.
    """
    started: list[Daemon] = []

    def start(models_path: Path | None = None, **env: str) -> Daemon:
        base = tmp_path_factory.mktemp("dmr")
        if models_path is None:
            models_path = base / "models"
            _link_tree(seeded_store_template, models_path)
        daemon = spawn_daemon(base, models_path, llama_server_bin, env)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            stop_process(daemon.proc, grace_seconds=30.0)
        assert_no_runners_left(started)


@pytest.fixture(scope="module")
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """Return one daemon with the seeded store, shared by the test module."""
    return daemon_factory()

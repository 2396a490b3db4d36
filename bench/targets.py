"""The three subjects of the benchmark and how they are started.

* **A direct**: ``llama-server`` started by the benchmark with exactly the argv the daemon's
  scheduler builds (:func:`orchestrator.runners.llamacpp.build_argv` on the same store bundle),
  on a Unix socket of its own.
* **B daemon**: ``model-runner serve`` (gunicorn, one gthread worker), as ``make run`` starts
  it, on a free 127.0.0.1 port with a scratch store provisioned by ``model-runner package``.
* **C router**: ``llama-server --models-dir`` (no ``-m``) over a folder holding a hard link to
  the same GGUF file, with the same engine flags; it spawns its own child ``llama-server``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Target
from bench.procs import (
    BenchError,
    ProcessSet,
    engine_children,
    free_port,
    wait_http_ready,
)

MODEL_TAGS = ("ai/smollm2:135M-Q4_1", "ai/smollm2:latest")
DAEMON_MODEL = "ai/smollm2"
READY_TIMEOUT_SECONDS = 90.0
# Options that carry a value and that the router sets itself for each child.
_PER_CHILD_OPTIONS = ("--model", "--host")


@dataclass
class Workspace:
    """Paths and processes shared by every section.

    Attributes:
        scratch: Short temporary folder (Unix socket paths must stay under 108 bytes).
        engine: The ``llama-server`` executable.
        model_gguf: The SmolLM2 GGUF file.
        procs: Every process started so far.
        daemon_source: Another checkout of the repository whose ``orchestrator`` package the
            daemons run (``--daemon-source``), for before/after comparisons with this harness;
            ``None``: this checkout's, through the venv's console script.
    """

    scratch: Path
    engine: Path
    model_gguf: Path
    procs: ProcessSet = field(default_factory=ProcessSet)
    daemon_source: Path | None = None

    def model_runner_command(self) -> list[str]:
        """Return the ``model-runner`` console script of this venv (module form as fallback).

        With :attr:`daemon_source`, ``python -P -m orchestrator`` of this venv: the environment
        (:meth:`base_environment`) puts that checkout first on ``PYTHONPATH``.
        """
        if self.daemon_source is not None:
            # -P: "python -m" would put the working directory (this checkout) first.
            return [sys.executable, "-P", "-m", "orchestrator"]
        script = Path(sys.executable).parent / "model-runner"
        if script.is_file():
            return [str(script)]
        return [sys.executable, "-m", "orchestrator"]

    def base_environment(self, base: Path) -> dict[str, str]:
        """Return an environment without the user's daemon settings or credentials."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DMR_", "MODEL_RUNNER_", "MODELS_PATH", "NOTIFY_SOCKET"))
        }
        base.mkdir(parents=True, exist_ok=True)
        config_file = base / "config.yaml"
        config_file.write_text("")
        docker_config = base / "docker-config"
        docker_config.mkdir(exist_ok=True)
        env.update(
            {
                "DMR_CONFIG": str(config_file),
                "DOCKER_CONFIG": str(docker_config),
                "LLAMA_SERVER_PATH": str(self.engine.parent),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.daemon_source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                part for part in (str(self.daemon_source), env.get("PYTHONPATH", "")) if part
            )
        return env


@dataclass
class Daemon:
    """One ``model-runner serve`` started by the benchmark."""

    proc: subprocess.Popen[bytes]
    port: int
    base: Path
    models_path: Path
    log_path: Path

    @property
    def address(self) -> str:
        """Return ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def worker_pid(self) -> int | None:
        """Return the pid of the gunicorn worker (the master's only child)."""
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return None
        return children[0].pid if children else None

    def runner_pid(self) -> int | None:
        """Return the pid of the daemon's (first) llama-server runner, if one runs."""
        pids = engine_children(self.worker_pid())
        return pids[0] if pids else None


def package_model(ws: Workspace, models_path: Path, tags: tuple[str, ...] = MODEL_TAGS) -> None:
    """Import the GGUF into ``models_path`` with ``model-runner package`` (as ``make run``)."""
    base = models_path.parent
    env = ws.base_environment(base)
    argv = [*ws.model_runner_command(), "package", "--gguf", str(ws.model_gguf)]
    argv += ["--models-path", str(models_path), *tags]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        raise BenchError(f"model-runner package failed: {done.stderr.decode(errors='replace')}")


def start_daemon(
    ws: Workspace, name: str, models_path: Path, *, ready_interval: float = 0.05
) -> Daemon:
    """Start ``model-runner serve`` on a free loopback port with ``models_path`` as its store.

    Returns once ``GET /version`` answers, polled every ``ready_interval`` seconds.
    """
    base = ws.scratch / name
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = ws.base_environment(base)
    env.update(
        {
            "DMR_RUNNER_PORT": str(port),
            "DMR_RUNNER_HOST": "127.0.0.1",
            "MODELS_PATH": str(models_path),
            "DMR_RUNTIME_DIR": str(base / "run"),
            "MODEL_RUNNER_LOG_DIR": str(base / "logs"),
        }
    )
    log_path = base / f"{name}.log"
    proc = ws.procs.spawn([*ws.model_runner_command(), "serve"], log_path=log_path, env=env)
    daemon = Daemon(proc, port, base, models_path, log_path)
    wait_http_ready(
        proc,
        daemon.address,
        "/version",
        timeout=READY_TIMEOUT_SECONDS,
        log_path=log_path,
        interval=ready_interval,
    )
    return daemon


def direct_argv(
    ws: Workspace, models_path: Path, socket_path: Path, mode: str = "completion"
) -> list[str]:
    """Return the argv the daemon's scheduler would use for the model, on ``socket_path``.

    Args:
        mode: ``completion`` (chat) or ``embedding`` (``/v1/embeddings``; the scheduler adds
            ``--embeddings --pooling <model's or mean>``).
    """
    from orchestrator.runners.llamacpp import build_argv
    from orchestrator.settings import Config
    from orchestrator.store.store import Store

    store = Store(models_path)
    record = store.resolve(DAEMON_MODEL)
    config = Config()
    # The same keyword arguments as Scheduler's call; bench.inference.argv_matches checks the
    # result against the daemon's live runner.
    return build_argv(
        engine_path=ws.engine,
        bundle=store.bundle(record),
        mode=mode,
        socket_path=socket_path,
        settings=None,
        default_context_size=config.default_context_size,
        prompt_cache_mib=config.prompt_cache_mib,
    )


def live_argv(runner_pid: int | None, socket_path: Path) -> list[str] | None:
    """Return the command line of a daemon's running runner with ``--host socket_path``.

    The scheduler sizes some flags from its memory estimate (``--cache-ram`` from the KV cache
    size), which :func:`direct_argv` does not redo; copying the live runner's argv gives A
    exactly what the daemon runs. ``None`` when there is no such process.
    """
    if runner_pid is None:
        return None
    try:
        raw = Path(f"/proc/{runner_pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [part.decode() for part in raw.split(b"\0") if part]
    if "--host" not in argv:
        return None
    argv[argv.index("--host") + 1] = str(socket_path)
    return argv


def spawn_direct(ws: Workspace, argv: list[str], name: str) -> subprocess.Popen[bytes]:
    """Start llama-server with ``argv`` (its ``--host`` socket removed first) without waiting."""
    socket_path = Path(argv[argv.index("--host") + 1])
    socket_path.unlink(missing_ok=True)
    return ws.procs.spawn(argv, log_path=ws.scratch / "logs" / f"{name}.log")


def start_direct(
    ws: Workspace, argv: list[str], name: str = "direct"
) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama-server with ``argv`` and wait for ``/health``; return it and its socket."""
    proc = spawn_direct(ws, argv, name)
    address = argv[argv.index("--host") + 1]
    wait_http_ready(
        proc,
        address,
        "/health",
        timeout=READY_TIMEOUT_SECONDS,
        log_path=ws.scratch / "logs" / f"{name}.log",
    )
    return proc, address


def start_bare_relay(ws: Workspace, upstream_socket: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start :mod:`bench.bare_relay` in front of ``upstream_socket``; return it and its address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = ws.scratch / "logs" / "bare-relay.log"
    argv = [sys.executable, "-m", "bench.bare_relay", "--listen", address]
    argv += ["--upstream", upstream_socket]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = ws.procs.spawn(argv, log_path=log_path, env=env)
    # The relay forwards /health like any request: ready means the engine answers through it.
    wait_http_ready(proc, address, "/health", timeout=READY_TIMEOUT_SECONDS, log_path=log_path)
    return proc, address


def router_argv(ws: Workspace, daemon_argv: list[str], models_dir: Path, port: int) -> list[str]:
    """Return the router's argv: the daemon's engine flags without the per-model ones."""
    flags: list[str] = []
    skip = False
    for arg in daemon_argv[1:]:
        if skip:
            skip = False
            continue
        if arg in _PER_CHILD_OPTIONS:
            skip = True
            continue
        flags.append(arg)
    return [
        str(ws.engine),
        "--models-dir",
        str(models_dir),
        "--models-max",
        "1",
        *flags,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def start_router(
    ws: Workspace, gguf: Path, daemon_argv: list[str]
) -> tuple[subprocess.Popen[bytes], str, str, list[str]]:
    """Start the router over a folder with ``gguf`` hard-linked in.

    Returns:
        The process, its ``127.0.0.1:<port>``, the model id it lists and its argv.
    """
    models_dir = ws.scratch / "router-models"
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / ws.model_gguf.name
    if not link.exists():
        try:
            os.link(gguf, link)
        except OSError:
            shutil.copyfile(gguf, link)
    port = free_port()
    argv = router_argv(ws, daemon_argv, models_dir, port)
    log_path = ws.scratch / "logs" / "router.log"
    proc = ws.procs.spawn(argv, log_path=log_path)
    address = f"127.0.0.1:{port}"
    wait_http_ready(proc, address, "/health", timeout=READY_TIMEOUT_SECONDS, log_path=log_path)
    return proc, address, link.stem, argv


@dataclass(frozen=True)
class Subject:
    """A target plus the processes whose CPU is metered while it serves.

    Attributes:
        target: How to reach it.
        proxy_pid: The process between the client and the engine (``None`` for A).
        engine_pid: The llama-server process that generates.
        process: The process the bench started for it (checked before each block).
    """

    target: Target
    proxy_pid: Callable[[], int | None]
    engine_pid: Callable[[], int | None]
    process: subprocess.Popen[bytes]

    def check_alive(self) -> None:
        """Raise when the subject's process has exited (a failed run must not look like data).

        Raises:
            BenchError: It exited; the message gives its status (-15: someone sent SIGTERM).
        """
        status = self.process.poll()
        if status is not None:
            raise BenchError(
                f"{self.target.name} (pid {self.process.pid}) exited with status {status} during "
                "the run; a negative status is the signal that stopped it (was it killed from "
                "outside, e.g. by a pkill -f pattern?)"
            )


def engine_version(engine: Path) -> str:
    """Return the first line of ``llama-server --version``."""
    try:
        done = subprocess.run(
            [str(engine), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        return f"unknown ({ex})"
    text = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
    return next((line for line in text if line.startswith("version")), text[0] if text else "")

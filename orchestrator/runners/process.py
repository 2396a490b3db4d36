"""One llama-server child: spawn, readiness, reaping, stopping.

The rules (house style 3.7, gunicorn's arbiter and supervisor's ``process.py``):

- Spawn without ``preexec_fn`` (unsafe in a threaded process): ``start_new_session=True`` makes
  the child its own process group leader (pgid == pid, away from terminal signals aimed at the
  daemon), and ``pdeathsig.py`` sets the parent-death signal then ``exec``'s llama-server, so the
  kernel kills the runner if the daemon is SIGKILLed. Output goes to a per-runner log file in
  append mode, never a pipe.
- Linux sends the parent-death signal when the *thread* that forked the child ends, so every
  spawn runs on one long-lived ``launcher.Launcher`` thread, never on a request thread. The
  launcher keeps a wrapper started ahead; a spawn hands it the argv and it ``exec``'s at once.
- One reaper thread per runner blocks in ``waitid(WNOWAIT)`` (which does not reap), takes the
  signal lock, and only then reaps: signals go to the group only while the status has not been
  collected, so a recycled pid is never signalled.
- A pid file ``<runtime>/runners/<id>.pid`` (pid, create time, argv) lets the next daemon kill a
  runner this one left behind (``sweep.sweep_leftovers``).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from orchestrator import logfiles
from orchestrator.atomicfile import write_atomic
from orchestrator.errors import (
    EngineCrashedError,
    RunnerStartError,
    RunnerTimeoutError,
    ServiceUnavailableError,
)
from orchestrator.runners.crashes import explain_crash
from orchestrator.runners.launcher import Launcher, wrapped
from orchestrator.runners.readiness import HEALTH_REQUEST_TIMEOUT_SECONDS, probe_health
from orchestrator.runners.state import RunnerState, transition

log = logging.getLogger(__name__)

KILL_WAIT_SECONDS = 5.0
"""How long to wait for the reap after SIGKILL before logging that the process is stuck."""
HEALTH_POLL_SECONDS = 0.05
"""Readiness poll interval after the first seconds of loading."""
FAST_POLL_SECONDS = 0.005
"""Readiness poll interval while a small model is likely to become ready (cold-start latency).

Half of it is what readiness detection adds to a cold start on average; a probe costs the
daemon and the engine a few tens of microseconds (``readiness.probe_health``)."""
FAST_POLL_WINDOW_SECONDS = 2.0
"""How long after spawn the fast interval is used; large models then poll at the slow one."""
LOG_TAIL_LINES = 40
MAX_SOCKET_PATH_BYTES = 107
"""``sun_path`` holds 108 bytes including the terminating NUL."""

# Substrings of llama-server's output -> the one-line explanation we lead with (DMR's error
# transformer, llamacpp/errors.go, plus the failures this build prints).
FAILURE_HINTS: tuple[tuple[str, str], ...] = (
    ("cudaMalloc failed: out of memory", "not enough GPU memory to load the model (CUDA)"),
    ("failed to allocate buffer", "not enough memory to load the model"),
    ("couldn't bind HTTP server socket", "the runner could not listen on its socket"),
    ("unknown model architecture", "llama-server does not support this model's architecture"),
    ("exiting due to model loading error", "failed to load model"),
    ("failed to load model", "failed to load model"),
    ("error loading model", "failed to load model"),
    ("invalid argument:", "llama-server rejected its command line"),
)


def explain_failure(lines: Sequence[str]) -> str | None:
    """Return a friendly reason for a failed start from the engine's output, if one matches."""
    text = "\n".join(lines)
    for needle, hint in FAILURE_HINTS:
        if needle in text:
            return hint
    return None


def describe_exit(returncode: int, *, killed_by_us: bool = False) -> str:
    """Describe an exit status the way gunicorn's arbiter logs it.

    A negative status is a signal, named via :class:`signal.Signals`; a SIGKILL the daemon did
    not send points at the kernel's out-of-memory killer.
    """
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode == signal.SIGKILL and not killed_by_us:
        return (
            f"was killed by {name}, which the daemon did not send; the kernel's out-of-memory "
            f"killer is the usual cause"
        )
    return f"was killed by {name}"


class RunnerProcess:
    """One llama-server process and its lifecycle (see :mod:`orchestrator.runners.state`).

    Attributes:
        runner_id: Short unique name; names the socket and pid files.
        label: What the runner serves, for messages (``"smollm2 (completion)"``).
        argv: The llama-server command line (from ``llamacpp.build_argv``).
        socket_path: Unix socket the runner serves HTTP on.
        log_path: Engine log file (append mode).
        pid_path: Pid file for the start-up sweep.
        ready: Set when ``/health`` answered 200.
        exited: Set once the process is reaped (or was never spawned and is stopped).
    """

    def __init__(
        self,
        *,
        runner_id: str,
        label: str,
        argv: Sequence[str],
        socket_path: Path,
        log_path: Path,
        runtime_dir: Path,
        launcher: Launcher | None = None,
        on_exit: Callable[[RunnerProcess], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Prepare a runner; nothing starts until :meth:`spawn`.

        Args:
            runner_id: Short unique name (socket ``<id>.sock``, pid file ``<id>.pid``).
            label: Model and mode, for messages.
            argv: llama-server argv; ``argv[0]`` is the executable.
            socket_path: Where llama-server listens (must be inside ``runtime_dir``).
            log_path: Engine log file.
            runtime_dir: Directory for the pid file (``<runtime_dir>/<id>.pid``) and cwd.
            launcher: Thread to spawn from; ``None`` spawns on the calling thread, which must
                then outlive the child (parent-death signal).
            on_exit: Called from the reaper thread after the process is reaped.
            env: Environment for the child (default: the daemon's).
        """
        self.runner_id = runner_id
        self.label = label
        self.argv = list(argv)
        self.socket_path = Path(socket_path)
        self.log_path = Path(log_path)
        self.runtime_dir = Path(runtime_dir)
        self.pid_path = self.runtime_dir / f"{runner_id}.pid"
        self.ready = threading.Event()
        self.exited = threading.Event()
        self.pid: int | None = None
        self.returncode: int | None = None
        self.exit_description: str | None = None
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self._launcher = launcher
        self._on_exit = on_exit
        self._env = env
        self._state = RunnerState.STARTING
        self._lock = threading.Lock()  # shared with the reaper: guards state, signals, reaping
        self._popen: subprocess.Popen[bytes] | None = None
        self._reaped = False
        self._killed_by_us = False
        self._log_offset = 0

    @property
    def state(self) -> RunnerState:
        """Return the current lifecycle state."""
        return self._state

    def _set_state(self, new: RunnerState) -> None:
        self._state = transition(self._state, new)

    # --- spawn -----------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start llama-server (through ``pdeathsig.py``) and its reaper thread.

        Raises:
            RunnerStartError: The process could not be started, or the runner was stopped
                before it started.
        """
        if len(os.fsencode(str(self.socket_path))) > MAX_SOCKET_PATH_BYTES:
            with self._lock:
                self._set_state(RunnerState.FAILED)  # STARTING -> FAILED
                self.exited.set()
            raise RunnerStartError(
                f"the runner socket path {str(self.socket_path)!r} is longer than "
                f"{MAX_SOCKET_PATH_BYTES} bytes; set runtime_dir to a shorter directory"
            )
        with self._lock:
            if self._state is not RunnerState.STARTING:
                raise RunnerStartError(
                    f"runner for {self.label} was stopped before it started; retry the request"
                )
            try:
                self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                # A stale socket file makes llama-server exit at once ("couldn't bind").
                self.socket_path.unlink(missing_ok=True)
                with open(self.log_path, "ab") as log_file:
                    self._log_offset = log_file.tell()
                    log_file.write(
                        f"[{logfiles.format_timestamp()}] runner {self.runner_id} starting "
                        f"{self.label}: {shlex.join(self.argv)}\n".encode()
                    )
                    log_file.flush()
                    popen = self._start_prepared() or self._popen_wrapped(log_file)
            except OSError as ex:
                self._set_state(RunnerState.FAILED)  # STARTING -> FAILED
                self.exited.set()
                raise RunnerStartError(
                    f"cannot start llama-server for {self.label}: {ex.strerror or ex}; check "
                    f"that {self.argv[0]!r} is executable and the runtime directory is writable",
                    details={"argv": self.argv},
                ) from ex
            except ServiceUnavailableError:
                self._set_state(RunnerState.FAILED)  # STARTING -> FAILED
                self.exited.set()
                raise
            self._popen = popen
            self.pid = popen.pid
            self.spawned_at = time.monotonic()
            self._set_state(RunnerState.LOADING)  # STARTING -> LOADING
        self._write_pid_file()
        threading.Thread(
            target=self._reap, name=f"runner-reaper-{self.runner_id}", daemon=True
        ).start()
        log.info("runner spawned id=%s runner=%s pid=%d", self.runner_id, self.label, self.pid)

    def _start_prepared(self) -> subprocess.Popen[bytes] | None:
        """Start on the launcher's spare wrapper (already started); ``None`` without one."""
        if self._launcher is None:
            return None
        return self._launcher.start_prepared(
            self.argv, log_path=self.log_path, cwd=self.runtime_dir, env=self._env
        )

    def _popen_wrapped(self, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the wrapper with the argv (an interpreter start before llama-server's exec)."""
        kwargs: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": log_file,
            "stderr": subprocess.STDOUT,
            "start_new_session": True,
            "close_fds": True,
            "cwd": str(self.runtime_dir),
            "env": self._env,
        }
        if self._launcher is not None:
            return self._launcher.popen(wrapped(self.argv), **kwargs)
        return subprocess.Popen(wrapped(self.argv), **kwargs)

    def _write_pid_file(self) -> None:
        try:
            create_time = psutil.Process(self.pid).create_time()
        except psutil.Error:
            return  # already gone; the reaper will report it
        body = {"pid": self.pid, "create_time": create_time, "argv": self.argv}
        try:
            # 0600: the argv names model files, and only this user's daemon acts on pid files
            # (sweep.py skips any it does not own). write_atomic never writes through a symlink.
            write_atomic(self.pid_path, json.dumps(body).encode("utf-8"), mode=0o600)
        except OSError as ex:
            log.warning("cannot write runner pid file path=%s error=%s", self.pid_path, ex)

    # --- reaping ---------------------------------------------------------------------------

    def _reap(self) -> None:
        assert self._popen is not None and self.pid is not None
        while hasattr(os, "waitid"):  # Linux; elsewhere Popen.wait() below blocks instead
            try:
                # WNOWAIT leaves the zombie in place: the pid cannot be reused until we reap
                # below, under the lock that every signal is sent under.
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
                break
            except ChildProcessError:
                break  # someone else reaped it; Popen.wait() below copes
            except InterruptedError:
                continue
        with self._lock:
            returncode = self._popen.wait()
            self._reaped = True
            self.returncode = returncode
            self.exit_description = describe_exit(returncode, killed_by_us=self._killed_by_us)
            asked = self._state is RunnerState.STOPPING
            if asked:
                self._set_state(RunnerState.STOPPED)  # STOPPING -> STOPPED
            else:
                self._set_state(RunnerState.FAILED)  # LOADING/READY -> FAILED
        self.pid_path.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        logfiles.append_line(self.log_path, f"runner {self.runner_id} {self.exit_description}")
        if asked:
            log.info(
                "runner exited id=%s runner=%s pid=%d how=%r",
                self.runner_id, self.label, self.pid, self.exit_description,
            )
        elif returncode < 0 and -returncode == signal.SIGKILL:
            log.error(
                "runner killed id=%s runner=%s pid=%d how=%r log=%s",
                self.runner_id, self.label, self.pid, self.exit_description, self.log_path,
            )
        else:
            log.error(
                "runner exited unexpectedly id=%s runner=%s pid=%d how=%r log=%s tail=%r",
                self.runner_id, self.label, self.pid, self.exit_description, self.log_path,
                self.log_tail(5),
            )
        self.exited.set()
        if self._on_exit is not None:
            try:
                self._on_exit(self)
            except Exception:  # a callback bug must not kill the reaper silently
                log.exception("runner exit callback failed id=%s", self.runner_id)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """Return the last ``lines`` lines this run wrote to its engine log."""
        return logfiles.tail(self.log_path, lines, start=self._log_offset)

    # --- readiness -------------------------------------------------------------------------

    def _start_error(self) -> RunnerStartError:
        tail = self.log_tail()
        hint = explain_failure(tail)
        how = self.exit_description or "exited"
        details: dict[str, object] = {
            "exit_status": self.returncode,
            "exit": how,
            "log_tail": tail,
            "log_file": str(self.log_path),
            "argv": self.argv,
        }
        # Death by a signal we did not send, before ready: SIGILL & co get their own error.
        signum = -self.returncode if self.returncode is not None and self.returncode < 0 else 0
        crash = (
            explain_crash(signum, self.label)
            if signum and self._state is not RunnerState.STOPPED and not self._killed_by_us
            else None
        )
        if crash is not None:
            details["signal"] = signum
            return EngineCrashedError(
                f"{crash}; engine log {str(self.log_path)!r}", details=details
            )
        if self._state is RunnerState.STOPPED:
            message = f"runner for {self.label} was stopped while loading; retry the request"
        else:
            reason = f"{hint} (llama-server {how})" if hint else f"llama-server {how}"
            message = (
                f"cannot start the runner for {self.label}: {reason}; see the engine log "
                f"{str(self.log_path)!r}"
            )
        return RunnerStartError(message, details=details)

    def wait_ready(
        self,
        deadline: float,
        *,
        grace_seconds: float = 5.0,
        poll_seconds: float = HEALTH_POLL_SECONDS,
    ) -> float:
        """Poll ``GET /health`` until it answers 200; return seconds since spawn.

        Args:
            deadline: ``time.monotonic()`` value after which loading has failed.
            grace_seconds: SIGTERM-to-SIGKILL grace when stopping a runner that timed out.
            poll_seconds: Interval between polls.

        Raises:
            RunnerStartError: The process exited first (exit status and log tail in details).
            RunnerTimeoutError: Not ready at ``deadline``; the process group is stopped.
        """
        if self.spawned_at is None:
            raise RunnerStartError(f"runner for {self.label} was never started; retry the request")
        socket_path = str(self.socket_path)
        while True:
            if self.exited.is_set():
                raise self._start_error()
            remaining = deadline - time.monotonic()
            probe_timeout = min(HEALTH_REQUEST_TIMEOUT_SECONDS, max(remaining, 0.05))
            status = probe_health(socket_path, probe_timeout)
            if status == 200:
                with self._lock:
                    became_ready = self._state is RunnerState.LOADING
                    if became_ready:
                        self._set_state(RunnerState.READY)  # LOADING -> READY
                        self.ready_at = time.monotonic()
                if not became_ready or self.ready_at is None:
                    # Stopped while the probe was in flight: report how it ended.
                    self.exited.wait(KILL_WAIT_SECONDS)
                    raise self._start_error()
                self.ready.set()
                elapsed = self.ready_at - self.spawned_at
                log.info(
                    "runner ready id=%s runner=%s pid=%s after=%.3fs",
                    self.runner_id, self.label, self.pid, elapsed,
                )
                return elapsed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # PERF: small models are ready in well under a second; polling fast at first keeps
            # detection from adding up to a whole slow interval to every cold start.
            loading_for = time.monotonic() - self.spawned_at
            interval = (
                min(FAST_POLL_SECONDS, poll_seconds)
                if loading_for < FAST_POLL_WINDOW_SECONDS
                else poll_seconds
            )
            self.exited.wait(min(interval, remaining))
        self.stop(grace_seconds)
        if self.returncode is not None and self._state is RunnerState.FAILED:
            raise self._start_error()
        tail = self.log_tail()
        raise RunnerTimeoutError(
            f"runner for {self.label} was not ready within "
            f"{time.monotonic() - self.spawned_at:.0f}s and was stopped; raise "
            f"load_timeout_seconds for large models or see the engine log {str(self.log_path)!r}",
            details={"log_tail": tail, "log_file": str(self.log_path), "argv": self.argv},
        )

    # --- stopping --------------------------------------------------------------------------

    def _signal(self, signum: signal.Signals) -> bool:
        """Send ``signum`` to the group if not reaped yet; return whether it was sent.

        Callers hold ``self._lock``.
        """
        if self._reaped or self.pid is None:
            return False
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False  # exited on its own a moment ago; the reaper will record it
        except PermissionError as ex:
            log.error("cannot signal runner id=%s pid=%d error=%s", self.runner_id, self.pid, ex)
            return False
        if signum == signal.SIGKILL:
            self._killed_by_us = True
        return True

    def terminate(self) -> None:
        """Ask the runner to stop: SIGTERM to its group, once (idempotent, non-blocking).

        Only the first call signals: llama-server treats a second SIGTERM as "terminate
        immediately" and exits 1 without finishing its shutdown.
        """
        with self._lock:
            if self._state not in (RunnerState.STARTING, RunnerState.LOADING, RunnerState.READY):
                return
            self._set_state(RunnerState.STOPPING)  # STARTING/LOADING/READY -> STOPPING
            if self.pid is None:
                # Never spawned: nothing to signal or reap.
                self._set_state(RunnerState.STOPPED)  # STOPPING -> STOPPED
                self.exited.set()
                return
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Force the runner to stop: SIGKILL to its group (idempotent, non-blocking)."""
        with self._lock:
            if self._state in (RunnerState.STARTING, RunnerState.LOADING, RunnerState.READY):
                self._set_state(RunnerState.STOPPING)  # STARTING/LOADING/READY -> STOPPING
            if self._state is RunnerState.STOPPING:
                if self.pid is None:
                    self._set_state(RunnerState.STOPPED)  # STOPPING -> STOPPED
                    self.exited.set()
                    return
                self._signal(signal.SIGKILL)

    def stop(self, grace_seconds: float) -> bool:
        """Stop the runner: SIGTERM, wait up to ``grace_seconds``, SIGKILL, bounded wait.

        Idempotent and safe from any thread; a runner that already exited is left alone.

        Returns:
            Whether the process is reaped when this returns.
        """
        self.terminate()
        if self.exited.wait(grace_seconds):
            return True
        log.warning(
            "runner ignored SIGTERM, sending SIGKILL id=%s runner=%s pid=%s grace=%.1fs",
            self.runner_id, self.label, self.pid, grace_seconds,
        )
        self.kill()
        if self.exited.wait(KILL_WAIT_SECONDS):
            return True
        log.critical(
            "runner not reaped after SIGKILL id=%s pid=%s; it may be stuck in the kernel",
            self.runner_id, self.pid,
        )
        return False


def stop_processes(processes: Sequence[RunnerProcess], grace_seconds: float) -> None:
    """Stop several runners under one deadline: SIGTERM all, shared grace, SIGKILL, wait.

    Shutdown uses this so that N runners take one grace period, not N.
    """
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_seconds
    survivors = [
        process
        for process in processes
        if not process.exited.wait(max(0.0, deadline - time.monotonic()))
    ]
    for process in survivors:
        log.warning(
            "runner ignored SIGTERM, sending SIGKILL id=%s pid=%s grace=%.1fs",
            process.runner_id, process.pid, grace_seconds,
        )
        process.kill()
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    for process in survivors:
        if not process.exited.wait(max(0.0, deadline - time.monotonic())):
            log.critical(
                "runner not reaped after SIGKILL id=%s pid=%s", process.runner_id, process.pid
            )

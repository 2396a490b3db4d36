"""Start and stop the processes the benchmark measures; read their CPU and memory from /proc.

Every process is started in its own session (its own process group) and registered with a
:class:`ProcessSet`, whose :meth:`ProcessSet.stop_all` runs in the entry point's ``finally``:
SIGTERM to the group, a bounded wait, SIGKILL, a bounded wait. Engine processes that another
process spawned (the daemon's runner, the router's child) are remembered by pid and get the
same treatment if they outlive their parent.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from orchestrator.unixhttp import open_connection

# The same loopback helpers the test suite uses (re-exported for the bench modules).
from tests.support.processes import free_port, is_gone, wait_until  # noqa: F401

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HTTP_PROBE_TIMEOUT_SECONDS = 1.0
STOP_GRACE_SECONDS = 15.0
KILL_WAIT_SECONDS = 10.0


class BenchError(Exception):
    """The benchmark cannot go on (a process did not start, a request failed hard)."""


# --- /proc readings ------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """Return user + system CPU seconds of ``pid`` (all its threads, dead ones included)."""
    if pid is None:
        return 0.0
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds(pid: int | None) -> float:
    """Return the CPU time of ``pid``'s live threads from ``schedstat`` (nanosecond precision).

    ``/proc/<pid>/stat`` counts in clock ticks (10 ms), too coarse for a few hundred tokens;
    the scheduler's own run time of each thread is exact but forgets threads that ended, which
    gunicorn's thread pool and the daemon's long-lived threads do not do while we measure.
    """
    if pid is None:
        return 0.0
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def process_cpu_seconds(pid: int | None) -> float:
    """Return the CPU time of the whole process ``pid`` in nanosecond precision, ended threads too.

    Linux's per-process CPU clock (``clock_getcpuclockid(pid)``: ``(~pid << 3) | 2``) sums the
    scheduler's run time of every thread the process has had; a relay that starts a thread per
    connection needs it, since ``schedstat`` forgets threads that ended. Falls back to
    :func:`cpu_seconds` (10 ms ticks) where the clock cannot be read.
    """
    if pid is None:
        return 0.0
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        return cpu_seconds(pid)


def _status_kib(pid: int | None, key: str) -> int:
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def rss_bytes(pid: int | None) -> int:
    """Return the resident set size of ``pid`` (0 when it is gone)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int | None) -> int:
    """Return the high-water mark of the resident set of ``pid`` (``VmHWM``)."""
    return _status_kib(pid, "VmHWM") * 1024


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    return [float(value) for value in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_pressure() -> dict[str, float]:
    """Return ``/proc/pressure/cpu`` "some" averages (share of time tasks waited for a CPU)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return {}
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return {key: float(fields[key]) for key in ("avg10", "avg60", "avg300") if key in fields}


def machine_state() -> dict[str, object]:
    """Return the load average and CPU pressure now (how busy the shared machine is)."""
    return {"load": load_average(), "cpu_pressure_some": cpu_pressure()}


def engine_children(pid: int | None) -> list[int]:
    """Return the pids of live ``llama-server`` processes below ``pid``."""
    if pid is None:
        return []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "llama-server" in " ".join(
                child.cmdline()[:1]
            ):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


# --- HTTP probes over TCP or a Unix socket ---------------------------------------------------


def http_status(address: str, path: str, timeout: float = HTTP_PROBE_TIMEOUT_SECONDS) -> int | None:
    """Return the status of ``GET path`` at ``address``, or ``None`` when unreachable."""
    conn = open_connection(address, timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --- process lifetimes -----------------------------------------------------------------------


def stop_process(
    proc: subprocess.Popen[bytes], *, grace_seconds: float = STOP_GRACE_SECONDS
) -> None:
    """Stop ``proc`` and its process group: SIGTERM, bounded wait, SIGKILL, bounded wait."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_seconds)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=KILL_WAIT_SECONDS)


def stop_pid(pid: int, *, grace_seconds: float = 5.0) -> None:
    """Stop a process the benchmark caused but did not spawn itself (TERM, wait, KILL)."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout=grace_seconds)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        try:
            proc.kill()
            proc.wait(timeout=KILL_WAIT_SECONDS)
        except psutil.Error:
            return


@dataclass
class ProcessSet:
    """Every process the benchmark started, stopped together at the end.

    Attributes:
        started: Processes in start order.
        adopted: Pids of engines spawned by a started process (checked after it stops).
    """

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    adopted: set[int] = field(default_factory=set)

    def spawn(
        self, argv: Sequence[str], *, log_path: Path, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **kwargs,  # type: ignore[arg-type]
            )
        self.started.append(proc)
        return proc

    def adopt(self, pids: Sequence[int]) -> None:
        """Remember engine pids so they are stopped even if their parent leaves them behind."""
        self.adopted.update(pids)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one started process now and forget it."""
        stop_process(proc)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> list[str]:
        """Stop everything, newest first; return a note per engine that outlived its parent."""
        notes = []
        for proc in reversed(self.started):
            try:
                stop_process(proc)
            except (OSError, subprocess.TimeoutExpired) as ex:
                notes.append(f"pid {proc.pid} did not stop: {ex!r}")
        self.started.clear()
        for pid in sorted(self.adopted):
            if psutil.pid_exists(pid):
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        notes.append(f"engine pid {pid} outlived its parent; stopped it")
                        stop_pid(pid)
                except psutil.NoSuchProcess:
                    pass
        self.adopted.clear()
        return notes


def wait_http_ready(
    proc: subprocess.Popen[bytes],
    address: str,
    path: str,
    *,
    timeout: float,
    log_path: Path,
    interval: float = 0.05,
) -> None:
    """Wait until ``GET path`` answers 200; raise with the log tail if the process exits first."""
    exited = False

    def ready() -> bool:
        nonlocal exited
        if proc.poll() is not None:
            exited = True
            return True
        return http_status(address, path) == 200

    if not wait_until(ready, timeout=timeout, interval=interval) or exited:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        raise BenchError(f"{log_path.stem} did not become ready at {address}:\n{tail}")

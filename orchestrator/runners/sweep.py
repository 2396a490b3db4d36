"""Start-up sweep: kill runners a previous daemon left behind.

Gunicorn's ``_cleanup_orphaned_dirty_arbiter`` idea. Each runner writes
``<runtime>/runners/<id>.pid`` with its pid, create time and argv. If the daemon died without
stopping it (and the parent-death signal did not fire, e.g. the daemon was not SIGKILLed but
hung and was restarted), the next daemon finds the file: a process with the same pid, the same
create time and a llama-server command line is the runner, and is stopped (SIGTERM to its
group, grace, SIGKILL). A pid reused by another program never matches the create time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import psutil

from orchestrator.runners.process import KILL_WAIT_SECONDS

log = logging.getLogger(__name__)


def _matches_leftover(process: psutil.Process, record: dict[str, Any]) -> bool:
    try:
        if abs(process.create_time() - float(record["create_time"])) > 0.01:
            return False
        cmdline = process.cmdline()
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False
    argv = record.get("argv") or []
    engine = str(argv[0]) if argv else ""
    return bool(engine) and (engine in cmdline or any("llama-server" in part for part in cmdline))


def sweep_leftovers(runtime_dir: Path, grace_seconds: float) -> int:
    """Kill runners a previous daemon left behind; return how many were killed.

    For each ``<runtime_dir>/*.pid`` whose process still exists with the recorded create time
    and a llama-server command line, stop its group (SIGTERM, ``grace_seconds``, SIGKILL), then
    delete the pid file and any socket. Files that match nothing are just deleted.
    """
    runtime_dir = Path(runtime_dir)
    victims: list[psutil.Process] = []
    for pid_file in sorted(runtime_dir.glob("*.pid")):
        try:
            record = json.loads(pid_file.read_text(encoding="utf-8"))
            pid = int(record["pid"])
            process = psutil.Process(pid)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            process = None
            record = {}
        if process is not None and _matches_leftover(process, record):
            log.warning("killing leftover runner pid=%d pid_file=%s", process.pid, pid_file)
            _signal_leftover(process, signal.SIGTERM)
            victims.append(process)
        pid_file.unlink(missing_ok=True)
    if victims:
        _gone, alive = psutil.wait_procs(victims, timeout=grace_seconds)
        for process in alive:
            _signal_leftover(process, signal.SIGKILL)
        _gone, alive = psutil.wait_procs(alive, timeout=KILL_WAIT_SECONDS)
        for process in alive:
            log.critical("leftover runner survived SIGKILL pid=%d", process.pid)
    for stale in runtime_dir.glob("*.sock"):
        stale.unlink(missing_ok=True)
    return len(victims)


def _signal_leftover(process: psutil.Process, signum: signal.Signals) -> None:
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    except (PermissionError, psutil.AccessDenied) as ex:
        log.error("cannot signal leftover runner pid=%d error=%s", process.pid, ex)

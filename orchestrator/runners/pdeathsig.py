"""Exec a program that dies with its parent: ``pdeathsig.py <ppid> -- program args...``.

Why a wrapper: the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) must be
set inside the child, and the only place Python offers for that, ``preexec_fn``, is unsafe in a
threaded process (gunicorn's gthread worker is). So the daemon spawns this script with
``sys.executable -I -S``; it sets the signal, checks that its parent is still the daemon (the
daemon may have died between fork and ``prctl``, leaving us re-parented with no signal to come),
and then ``execv``'s llama-server. ``exec`` keeps the pid, the process group, the session, the
open log file and the death signal, so llama-server is SIGKILLed by the kernel if the daemon is
SIGKILLed.

Linux delivers the signal when the *thread* that forked the child exits, not the process; the
scheduler therefore spawns every runner from one long-lived thread (``process.Launcher``).

Started ahead (``pdeathsig.py <ppid> --wait``), it does all of that, then waits for its
command: one JSON line on stdin, ``{"argv": [...], "cwd": ..., "log": ..., "env": {...} or
null}``. It appends its output to the log file, reads ``/dev/null`` as stdin, and ``exec``'s the
command. The launcher keeps one such process ready, so the ~20 ms an interpreter takes to start
is not spent between a request and its runner's ``exec``. End of input without a command: it
exits 0 (the daemon no longer needs it).

This file is run by path, not imported by the daemon: it must stay standard-library only and
must not import the ``orchestrator`` package.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
EXIT_USAGE = 2
EXIT_PARENT_GONE = 3
EXIT_CANNOT_EXEC = 127


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        # CDLL(None) is the running program, which links libc; find_library would fork
        # ldconfig and cost tens of milliseconds on every runner start.
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError) as ex:
        print(f"pdeathsig: prctl unavailable ({ex}); runner will not die with the daemon",
              file=sys.stderr)
        return False
    if result != 0:
        error = ctypes.get_errno()
        print(f"pdeathsig: prctl failed ({os.strerror(error)}); runner will not die with the "
              f"daemon", file=sys.stderr)
        return False
    return True


def _read_command() -> tuple[list[str], dict[str, str] | None] | None:
    """Wait for the command on stdin and set up the process for it.

    Returns:
        The argv and environment (``None``: inherit ours), or ``None`` at end of input.
    """
    line = sys.stdin.buffer.readline()
    if not line:
        return None
    command = json.loads(line)
    # The log first: anything printed from here on belongs to the runner's log.
    log_fd = os.open(command["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)  # also closes the pipe the command came through
    os.close(null_fd)
    os.chdir(command["cwd"])
    env = command.get("env")
    return [str(word) for word in command["argv"]], env


def main(argv: list[str]) -> int:
    """Set the parent-death signal, check the parent, exec the program; return on failure."""
    waits = len(argv) == 2 and argv[1] == "--wait"
    if not (waits or (len(argv) >= 3 and argv[1] == "--")) or not argv[0].isdigit():
        print("usage: pdeathsig.py <expected parent pid> (-- program [args...] | --wait)",
              file=sys.stderr)
        return EXIT_USAGE
    expected_parent = int(argv[0])
    _set_parent_death_signal()
    if os.getppid() != expected_parent:
        print(f"pdeathsig: parent {expected_parent} is gone; not starting the runner",
              file=sys.stderr)
        return EXIT_PARENT_GONE
    env: dict[str, str] | None = None
    if waits:
        try:
            command = _read_command()
        except (OSError, ValueError, KeyError, TypeError) as ex:
            print(f"pdeathsig: unusable command ({ex!r})", file=sys.stderr)
            return EXIT_USAGE
        if command is None:
            return 0
        program, env = command
    else:
        program = argv[2:]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if env is None:
            os.execv(program[0], program)
        else:
            os.execve(program[0], program, env)
    except OSError as ex:
        print(f"pdeathsig: cannot execute {program[0]!r}: {ex.strerror}", file=sys.stderr)
    return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

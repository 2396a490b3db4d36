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

This file is run by path, not imported by the daemon: it must stay standard-library only and
must not import the ``orchestrator`` package.
"""

from __future__ import annotations

import ctypes
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


def main(argv: list[str]) -> int:
    """Set the parent-death signal, check the parent, exec ``argv[2:]``; return on failure."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print("usage: pdeathsig.py <expected parent pid> -- program [args...]", file=sys.stderr)
        return EXIT_USAGE
    expected_parent = int(argv[0])
    program = argv[2:]
    _set_parent_death_signal()
    if os.getppid() != expected_parent:
        print(f"pdeathsig: parent {expected_parent} is gone; not starting {program[0]}",
              file=sys.stderr)
        return EXIT_PARENT_GONE
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(program[0], program)
    except OSError as ex:
        print(f"pdeathsig: cannot execute {program[0]!r}: {ex.strerror}", file=sys.stderr)
    return EXIT_CANNOT_EXEC


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

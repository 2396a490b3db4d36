"""Drive the packaged ``docker-model-runner.service`` with ``systemctl`` (``*-runner`` commands).

DMR's ``install-runner`` family creates, starts and removes a Docker container; here the daemon
is a systemd service the package installs, so each command becomes ``systemctl`` calls:

==================  ===============================================================
install-runner      ``systemctl enable --now docker-model-runner.service``
start-runner        ``systemctl start docker-model-runner.service``
stop-runner         ``systemctl stop docker-model-runner.service``
restart-runner      ``systemctl restart docker-model-runner.service``
reinstall-runner    ``systemctl daemon-reload``, ``reenable``, ``restart`` (after a package
                    upgrade: new unit file read, enablement links recreated, new code running)
uninstall-runner    ``systemctl disable --now docker-model-runner.service``
==================  ===============================================================

The unit is ``Type=notify``: ``systemctl start``/``restart`` return once the daemon listens,
which replaces DMR's polling of the new container. systemd must be the running init system
(``/run/systemd/system`` exists, sd_booted(3)'s test) and ``systemctl`` on ``PATH``; otherwise
:class:`~orchestrator.errors.NotSupportedError` says how to run the daemon without it. The
command runner is injectable (tests put a recording ``systemctl`` first on ``PATH``); systemctl
keeps the terminal, so its own messages (and a polkit password prompt) reach the user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from orchestrator.errors import NotSupportedError, OrchestratorError

UNIT = "docker-model-runner.service"
BOOTED_MARKER = Path("/run/systemd/system")
# A start waits for READY=1 (TimeoutStartSec, 90 s by default) and a stop for TimeoutStopSec
# (60 s in our unit); reinstall does both. Beyond this, systemctl itself is stuck.
SYSTEMCTL_TIMEOUT_SECONDS = 300.0
# systemctl's LSB exit status for "unit not found / not installed".
_EXIT_NOT_INSTALLED = 5
NO_SYSTEMD_HINT = (
    "run the daemon in a terminal instead with 'model-runner serve' (it listens on "
    "http://localhost:12434 by default), or point MODEL_RUNNER_HOST at one that runs elsewhere"
)

# argv -> exit status; the process inherits our terminal.
CommandRunner = Callable[[Sequence[str], Mapping[str, str]], int]


def run_inheriting(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run ``argv`` with our stdin/stdout/stderr and a deadline; return its exit status.

    Raises:
        OrchestratorError: It did not finish within :data:`SYSTEMCTL_TIMEOUT_SECONDS`.
    """
    try:
        return subprocess.run(
            list(argv), env=dict(environ), timeout=SYSTEMCTL_TIMEOUT_SECONDS, check=False
        ).returncode
    except subprocess.TimeoutExpired as ex:
        # subprocess.run has killed it by now.
        raise OrchestratorError(
            f"'{' '.join(argv)}' did not finish within {SYSTEMCTL_TIMEOUT_SECONDS:.0f} s; "
            f"see 'journalctl -u {UNIT}'"
        ) from ex


class ServiceManager:
    """Start, stop, enable and disable the daemon's systemd unit.

    Args:
        environ: Environment of systemctl (its ``PATH`` is where systemctl is looked up).
        runner: Runs one command and returns its exit status.
        booted_marker: Exists only when systemd is the running init system.
        geteuid: Our effective user ID (a failure as non-root gets a sudo hint).
        retry: The command line the user ran, for the sudo hint (``docker model start-runner``).
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        runner: CommandRunner = run_inheriting,
        booted_marker: Path = BOOTED_MARKER,
        geteuid: Callable[[], int] = os.geteuid,
        retry: str = "docker model",
    ) -> None:
        self.environ = environ
        self.runner = runner
        self.booted_marker = booted_marker
        self.geteuid = geteuid
        self.retry = retry

    def systemctl(self) -> str:
        """Return the path of ``systemctl``.

        Raises:
            NotSupportedError: No systemctl, or systemd is not the init system.
        """
        found = shutil.which("systemctl", path=self.environ.get("PATH", os.defpath))
        if found is None:
            raise NotSupportedError(
                f"systemd's systemctl was not found, so {UNIT} cannot be managed; {NO_SYSTEMD_HINT}"
            )
        if not self.booted_marker.is_dir():
            raise NotSupportedError(
                f"systemd is not running on this system ({self.booted_marker} is missing), so "
                f"{UNIT} cannot be managed; {NO_SYSTEMD_HINT}"
            )
        return found

    def run(self, command: str, *arguments: str) -> None:
        """Run ``systemctl COMMAND ARGUMENTS...``.

        Raises:
            NotSupportedError: systemd is not available.
            OrchestratorError: systemctl failed (its own message is already on the terminal).
        """
        argv = [self.systemctl(), command, *arguments]
        status = self.runner(argv, self.environ)
        if status == 0:
            return
        shown = " ".join(["systemctl", command, *arguments])
        hints = []
        if status == _EXIT_NOT_INSTALLED:
            hints.append(f"is the docker-model-runner package (which installs {UNIT}) installed?")
        if self.geteuid() != 0:
            hints.append(f"managing a system service needs root: run 'sudo {self.retry}'")
        hints.append(f"see 'journalctl -u {UNIT}'")
        raise OrchestratorError(
            f"'{shown}' failed with exit status {status}; " + "; ".join(hints),
            details={"argv": argv, "exit_status": status},
        )

    def install(self) -> None:
        """Enable the unit at boot and start it now."""
        self.run("enable", "--now", UNIT)

    def start(self) -> None:
        """Start the unit (returns once the daemon listens)."""
        self.run("start", UNIT)

    def stop(self) -> None:
        """Stop the unit (the daemon stops every llama-server first)."""
        self.run("stop", UNIT)

    def restart(self) -> None:
        """Restart the unit."""
        self.run("restart", UNIT)

    def reinstall(self) -> None:
        """Read unit files again, recreate the enablement links, restart."""
        self.run("daemon-reload")
        self.run("reenable", UNIT)
        self.run("restart", UNIT)

    def uninstall(self) -> None:
        """Stop the unit and no longer start it at boot (the package and models stay)."""
        self.run("disable", "--now", UNIT)

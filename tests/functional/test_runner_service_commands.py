"""``install-runner`` and friends drive ``systemctl`` for ``docker-model-runner.service``.

systemd is not PID 1 on test machines, so a recording ``systemctl`` script is put first on
``PATH`` (a legitimate fake: it stands in for the one thing that cannot run here) and the
"systemd is running" marker folder is a temporary one, injected through the command's manager
factory. The refusals where systemd is absent run the real CLI as a process on this machine.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.modelcli import main as cli
from orchestrator.modelcli import systemd_service
from orchestrator.modelcli.commands import runner_service
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.systemd_service import UNIT, ServiceManager
from tests.support.docker_cli import module_cli

CLI_TIMEOUT_SECONDS = 60

FAKE_SYSTEMCTL = """#!/bin/sh
# Record the arguments, one call per line; answer with the configured status.
printf '%s\\n' "$*" >> "$FAKE_SYSTEMCTL_LOG"
# exec: the sleep is the process the CLI kills on its deadline (nothing left behind).
if [ -n "$FAKE_SYSTEMCTL_SLEEP" ]; then exec sleep "$FAKE_SYSTEMCTL_SLEEP"; fi
exit "${FAKE_SYSTEMCTL_EXIT:-0}"
"""


class Harness:
    """A fake systemctl on PATH, a systemd marker, and the CLI run in this process."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        script = self.bin / "systemctl"
        script.write_text(FAKE_SYSTEMCTL)
        script.chmod(0o755)
        self.log = tmp_path / "systemctl.log"
        self.marker = tmp_path / "run-systemd-system"
        self.marker.mkdir()
        self.euid = 0
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "FAKE_SYSTEMCTL_LOG": str(self.log),
            "MODEL_RUNNER_HOST": "unix:///nonexistent/dmr.sock",
        }

        def factory(ctx: CliContext, command_line: str) -> ServiceManager:
            return ServiceManager(
                ctx.environ,
                booted_marker=self.marker,
                geteuid=lambda: self.euid,
                retry=command_line,
            )

        # The seam the command reads at parser build time (main() builds it per call).
        monkeypatch.setattr(runner_service, "default_manager", factory)

    def run(self, *argv: str, **env: str) -> tuple[int, str, str]:
        ctx = CliContext(stdout=io.StringIO(), stderr=io.StringIO(), environ={**self.env, **env})
        status = cli.main(list(argv), ctx)
        return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("command", "calls", "done"),
    [
        ("install-runner", [f"enable --now {UNIT}"], "enabled and started"),
        ("start-runner", [f"start {UNIT}"], "started"),
        ("stop-runner", [f"stop {UNIT}"], "stopped"),
        ("restart-runner", [f"restart {UNIT}"], "restarted"),
        (
            "reinstall-runner",
            ["daemon-reload", f"reenable {UNIT}", f"restart {UNIT}"],
            "reloaded, re-enabled and restarted",
        ),
        ("uninstall-runner", [f"disable --now {UNIT}"], "stopped and disabled"),
    ],
)
def test_each_command_runs_its_systemctl_calls(
    harness: Harness, command: str, calls: list[str], done: str
) -> None:
    status, out, err = harness.run(command)
    assert (status, err) == (0, "")
    assert harness.calls() == calls
    assert out.startswith(f"Docker Model Runner ({UNIT}) {done}") and out.endswith(".\n")


def test_plugin_form_works_too(harness: Harness) -> None:
    status, _, _ = harness.run("model", "start-runner")
    assert status == 0 and harness.calls() == [f"start {UNIT}"]


def test_dmr_flags_are_accepted_and_each_says_it_has_no_effect(harness: Harness) -> None:
    status, _, err = harness.run(
        "install-runner",
        "--port", "12500", "--host", "0.0.0.0", "--gpu", "cuda", "--do-not-track", "--debug",
        "--llama-server-version", "b4000", "--proxy-cert", "/x.pem", "--tls", "--tls-port", "1",
        "--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--backend", "llama.cpp",
    )  # fmt: skip
    assert status == 0
    notes = err.splitlines()
    assert len(notes) == 11 and all(n.startswith("Note: --") for n in notes)
    assert "DMR_RUNNER_PORT" in notes[0] and "config.yaml" in notes[0]
    assert any("--tls-cert" in n and "MODEL_RUNNER_TLS_CERT" in n for n in notes)
    assert harness.calls() == [f"enable --now {UNIT}"]


def test_stop_and_uninstall_keep_models(harness: Harness) -> None:
    status, _, err = harness.run("uninstall-runner", "--models", "--images")
    assert status == 0
    assert "docker model purge" in err and "--images has no effect" in err
    assert harness.calls() == [f"disable --now {UNIT}"]


@pytest.mark.parametrize(
    "argv",
    [["install-runner", "--backend", "vllm"], ["uninstall-runner", "--backend", "diffusers"]],
)
def test_other_backends_are_refused_before_systemctl(harness: Harness, argv: list[str]) -> None:
    status, _, err = harness.run(*argv)
    assert status == 1
    assert "llama.cpp" in err
    assert harness.calls() == []


def test_a_failing_systemctl_fails_the_command_with_hints(harness: Harness) -> None:
    harness.euid = 1000
    status, out, err = harness.run("start-runner", FAKE_SYSTEMCTL_EXIT="5")
    assert (status, out) == (1, "")
    assert f"'systemctl start {UNIT}' failed with exit status 5" in err
    assert "docker-model-runner package" in err
    assert "needs root: run 'sudo docker-model start-runner'" in err


def test_reinstall_stops_at_the_first_failure(harness: Harness) -> None:
    status, _, err = harness.run("reinstall-runner", FAKE_SYSTEMCTL_EXIT="1")
    assert status == 1 and "daemon-reload" in err
    assert harness.calls() == ["daemon-reload"]
    assert "sudo" not in err  # we are "root" here: no sudo hint


def test_without_the_systemd_marker_nothing_is_run(harness: Harness) -> None:
    harness.marker.rmdir()
    status, _, err = harness.run("restart-runner")
    assert status == 1
    assert "systemd is not running" in err and "model-runner serve" in err
    assert harness.calls() == []


def test_a_systemctl_that_hangs_is_cut(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(systemd_service, "SYSTEMCTL_TIMEOUT_SECONDS", 0.5)
    started = time.monotonic()
    status, _, err = harness.run("stop-runner", FAKE_SYSTEMCTL_SLEEP="30")
    assert status == 1 and "did not finish" in err
    assert time.monotonic() - started < 10


def _process_env(path: str, log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER_")}
    env.update({"PATH": path, "FAKE_SYSTEMCTL_LOG": str(log)})
    return env


def _cli_process(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return module_cli(env, *argv, timeout=CLI_TIMEOUT_SECONDS)


@pytest.mark.skipif(
    Path("/run/systemd/system").is_dir(), reason="systemd runs here: the refusal cannot happen"
)
def test_real_cli_without_systemd_says_how_to_run_the_daemon(harness: Harness) -> None:
    done = _cli_process(_process_env(harness.env["PATH"], harness.log), "start-runner")
    assert done.returncode == 1
    assert "systemd is not running on this system" in done.stderr
    assert "model-runner serve" in done.stderr
    assert harness.calls() == []


def test_real_cli_without_systemctl_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    done = _cli_process(_process_env(str(empty), tmp_path / "log"), "install-runner")
    assert done.returncode == 1
    assert "systemctl was not found" in done.stderr and "model-runner serve" in done.stderr


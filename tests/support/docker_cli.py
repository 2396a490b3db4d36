"""Run the CLI as users do: the real ``docker`` client with our plugin installed, or the module.

``plugin_env`` builds the environment of ``docker model`` commands: none of the caller's own
daemon, Docker or registry settings, the plugin installed (``install-plugin``) into a fresh
``DOCKER_CONFIG``, and ``MODEL_RUNNER_HOST`` naming the test's daemon. ``module_cli`` runs
``python -m orchestrator.modelcli`` for commands that need no docker client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
COMMAND_TIMEOUT_SECONDS = 180
# The caller's own settings that would point a command elsewhere or lend it credentials.
_FOREIGN_SETTINGS = ("MODEL_RUNNER_", "DOCKER_", "HF_", "DEFAULT_REGISTRY")


def plugin_env(config_dir: Path, host: str, **extra: str) -> dict[str, str]:
    """Return the environment of ``docker model`` against ``host``; skip without a docker client.

    Args:
        config_dir: The ``DOCKER_CONFIG`` to install the plugin into (created if missing).
        host: ``MODEL_RUNNER_HOST``.
        extra: More variables (``DMR_API_KEY``, ``TERM``, ...).
    """
    if not os.access(DOCKER, os.X_OK):
        pytest.skip("the docker client binary is not installed")
    config_dir.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_SETTINGS)}
    env.update({"DOCKER_CONFIG": str(config_dir), "MODEL_RUNNER_HOST": host, **extra})
    installed = module_cli(env, "install-plugin", timeout=60)
    assert installed.returncode == 0, installed.stderr
    assert (config_dir / "cli-plugins" / "docker-model").is_file()
    return env


def docker_model(
    env: dict[str, str],
    *args: str,
    stdin: str | None = None,
    timeout: float = COMMAND_TIMEOUT_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run ``docker model ARGS`` and return the finished process (text output)."""
    return subprocess.run(
        [DOCKER, "model", *args], env=env, input=stdin if stdin is not None else "",
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip


def module_cli(
    env: dict[str, str], *argv: str, timeout: float = COMMAND_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m orchestrator.modelcli ARGV`` from the repository (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.modelcli", *argv], cwd=REPO_ROOT, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Return stdout of a command that must have succeeded."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout

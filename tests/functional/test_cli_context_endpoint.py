"""The selected ``docker model context`` is the daemon the CLI talks to (real daemon, real CLI).

A daemon with an empty store is started on a free loopback port (no model is loaded, so no
llama-server is needed); ``docker-model`` runs as a process with its own ``DOCKER_CONFIG``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon_fixtures import Daemon, spawn_daemon
from tests.support.docker_cli import module_cli
from tests.support.processes import free_port, stop_process

CLI_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def empty_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("ctx-daemon")
    models = base / "models"
    models.mkdir()
    daemon = spawn_daemon(base, models, base / "no-engine" / "llama-server", {})
    try:
        yield daemon
    finally:
        stop_process(daemon.proc, grace_seconds=30.0)


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return module_cli(env, *argv, timeout=CLI_TIMEOUT_SECONDS)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODEL_RUNNER_", "DOCKER_", "DMR_"))
    }
    clean.update({"DOCKER_CONFIG": str(tmp_path / "docker-config"), "HOME": str(tmp_path)})
    return clean


def test_selected_context_is_used_and_the_variable_still_wins(
    env: dict[str, str], empty_daemon: Daemon
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    # A closed port is a clear failure: the reference point for the override below.
    done = cli({**env, "MODEL_RUNNER_HOST": nowhere}, "ls", "--json")
    assert done.returncode == 1 and "cannot connect" in done.stderr

    created = cli(env, "context", "create", "here", "--host", empty_daemon.base_url)
    assert created.returncode == 0, created.stderr
    assert cli(env, "context", "use", "here").returncode == 0

    listed = cli(env, "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []

    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["running"] is True
    assert document["kind"] == "Docker Engine (Manual Install)"
    # endpointHost is the address on this host (endpoint is the one containers get).
    assert document["endpointHost"].startswith(empty_daemon.base_url)

    # MODEL_RUNNER_HOST beats the selected context.
    overridden = cli({**env, "MODEL_RUNNER_HOST": nowhere}, "ls", "--json")
    assert overridden.returncode == 1
    assert nowhere in overridden.stderr

    # Back to default: the context's daemon is no longer asked.
    assert cli(env, "context", "use", "default").returncode == 0
    shown = cli(env, "context", "ls")
    assert shown.stdout.splitlines()[1].split()[0] == "default"
    assert shown.stdout.splitlines()[1].rstrip().endswith("*")

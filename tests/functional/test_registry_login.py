"""``docker login`` reaches the daemon: the CLI sends the user's credentials as X-Registry-Auth.

A registry with htpasswd (Basic) auth; the user's ``DOCKER_CONFIG`` holds the ``auths`` entry
``docker login`` writes (the docker client here has no engine, and its login needs one); the
daemon runs with its own ``HOME`` and an empty ``DOCKER_CONFIG``, as the packaged service does.
Every command goes through the real ``docker`` client and the plugin.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon_fixtures import Daemon
from tests.support.docker_cli import docker_model, ok, plugin_env
from tests.support.registry_fixtures import RegistryServer, write_docker_config

pytestmark = [pytest.mark.llama_server, pytest.mark.registry]

def user_env(config_dir: Path, daemon: Daemon) -> dict[str, str]:
    """Return a user's environment with the plugin installed in ``config_dir``."""
    return plugin_env(config_dir, daemon.base_url)


@pytest.fixture
def service_daemon(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    """A daemon with its own empty HOME (and the fixtures' empty DOCKER_CONFIG)."""
    home = tmp_path / "service-home"
    home.mkdir()
    return daemon_factory(HOME=str(home))


def test_push_and_pull_use_the_users_docker_login(
    service_daemon: Daemon, basic_registry: RegistryServer, tmp_path: Path
) -> None:
    """With the user's auths entry push and pull work; without it both fail with a denial."""
    assert basic_registry.username is not None and basic_registry.password is not None
    logged_in = user_env(tmp_path / "user", service_daemon)
    write_docker_config(
        Path(logged_in["DOCKER_CONFIG"]), basic_registry.host, basic_registry.username,
        basic_registry.password,
    )  # fmt: skip
    anonymous = user_env(tmp_path / "anonymous", service_daemon)
    target = f"{basic_registry.host}/team/smollm2:v1"
    ok(docker_model(logged_in, "tag", "ai/smollm2", target))

    denied = docker_model(anonymous, "push", target)
    assert denied.returncode == 1
    assert "denied push access" in denied.stderr and "docker login" in denied.stderr

    assert "Model pushed successfully" in ok(docker_model(logged_in, "push", target))
    ok(docker_model(logged_in, "rm", target))

    denied = docker_model(anonymous, "pull", target)
    assert denied.returncode == 1 and "denied pull access" in denied.stderr
    pulled = ok(docker_model(logged_in, "pull", target))
    assert "Using cached model" in pulled or "Model pulled successfully" in pulled
    assert target in ok(docker_model(logged_in, "ls", "--json"))

    # The daemon kept nothing: no credentials file, nothing in its logs or output.
    header = base64.urlsafe_b64encode(b'{"serveraddress"').decode()[:12]
    assert not list((tmp_path / "service-home").rglob("config.json"))
    logs = service_daemon.output() + "".join(
        path.read_text(errors="replace") for path in service_daemon.log_dir.rglob("*.log*")
    )
    assert basic_registry.password not in logs and header not in logs
    recorded = service_daemon.get("/engines/requests").text
    assert basic_registry.password not in recorded


def test_credentials_for_another_registry_are_not_sent(
    service_daemon: Daemon, basic_registry: RegistryServer, tmp_path: Path
) -> None:
    """A header naming another registry leaves the pull anonymous (and so denied)."""
    other = {"username": "testuser", "password": "testpass", "serveraddress": "other.example"}
    value = base64.urlsafe_b64encode(json.dumps(other).encode()).decode()
    answer = service_daemon.post(
        "/models/create",
        json={"from": f"{basic_registry.host}/team/absent:v1"},
        headers={"X-Registry-Auth": value, "Accept": "application/json"},
    )
    assert "denied pull access" in answer.text
    assert not any(entry.status == 200 for entry in basic_registry.access_log())


@pytest.mark.parametrize("value", ["***", base64.urlsafe_b64encode(b"[1]").decode()])
def test_a_malformed_header_is_a_400_in_the_error_shape(
    service_daemon: Daemon, value: str
) -> None:
    """A malformed X-Registry-Auth gets 400 invalid_request naming the header, for pull and push."""
    for path, body in (("/models/create", {"from": "ai/smollm2"}), ("/models/ai/smollm2/push", {})):
        answer = service_daemon.post(path, json=body, headers={"X-Registry-Auth": value})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == "X-Registry-Auth" and error["code"] == "invalid_request"
        assert value not in error["message"]


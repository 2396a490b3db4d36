"""Compose's ``models:`` support against the real daemon, as Compose drives the plugin.

Compose (``pkg/compose/model.go``) runs the plugin executable itself, not ``docker model``:
``docker-model ls --json`` and ``docker-model status --json`` (stdout and stderr read together
as one JSON document), ``docker-model pull MODEL`` for a model not listed, then
``docker-model configure [--context-size N] MODEL [-- RUNTIME_FLAGS...]`` (the runtime flags only
when the plugin's metadata ``Version`` is at least v1.0.6). The ``endpoint`` of the status
document becomes ``<MODEL>_URL`` in the service's containers.

The model comes from a local registry (the seeded daemon pushes it there), and the daemon
Compose talks to starts empty, so the whole sequence, pull included, runs offline.

The last test builds what a container sees: a bridge named ``docker0`` holding 172.17.0.1/16,
and a network namespace behind it (a veth pair), from which a process asks the endpoint Compose
was given for a chat answer. It needs root and ``ip``; it is skipped where a real ``docker0``
exists (that one belongs to Docker).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon_fixtures import Daemon
from tests.support.registry_fixtures import RegistryServer

pytestmark = [pytest.mark.llama_server, pytest.mark.registry]

REPO_ROOT = Path(__file__).resolve().parents[2]
SEEDED = "ai/smollm2"
BRIDGE_ADDRESS = "172.17.0.1"
CONTAINER_ADDRESS = "172.17.0.2"
IP_TIMEOUT_SECONDS = 10
COMMAND_TIMEOUT_SECONDS = 180


def compose_env(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> dict[str, str]:
    """Return an environment like the one Compose gives the plugin (no plugin re-exec var)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODEL_RUNNER_", "DOCKER_", "HF_", "DEFAULT_REGISTRY"))
    }
    env["DOCKER_CONFIG"] = str(tmp_path_factory.mktemp("compose-docker-config"))
    env["MODEL_RUNNER_HOST"] = daemon.base_url
    env["USER_AGENT"] = "compose/v2-test"
    return env


def install_plugin(env: dict[str, str]) -> Path:
    """Install the launcher as ``docker-model`` in ``$DOCKER_CONFIG/cli-plugins``."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.modelcli", "install-plugin"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Path(env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-model"


def plugin_run(
    plugin: Path, env: dict[str, str], *args: str, combined: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the plugin as Compose does (``exec.Command(path, args...)``)."""
    return subprocess.run(
        [str(plugin), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if combined else subprocess.PIPE,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


def version_at_least(version: str, floor: str) -> bool:
    """Compare dotted versions as Compose's ``versions.LessThan`` does (after a leading v)."""
    parts = [int(part) for part in version.removeprefix("v").split(".")]
    return parts >= [int(part) for part in floor.split(".")]


def publish(seeded: Daemon, registry: RegistryServer, tag: str) -> str:
    """Push the seeded model to ``registry`` as ``<host>/ai/smollm2:<tag>``; return that name."""
    name = f"{registry.host}/ai/smollm2"
    tagged = seeded.post(f"/models/{SEEDED}/tag", params={"repo": name, "tag": tag})
    assert tagged.status_code == 201, tagged.text
    pushed = seeded.post(f"/models/{name}:{tag}/push", headers={"Accept": "application/json"})
    assert pushed.status_code == 200 and '"success"' in pushed.text, pushed.text
    return f"{name}:{tag}"


def empty_daemon(factory: Callable[..., Daemon], tmp_path: Path, **env: str) -> Daemon:
    """Start a daemon with an empty store (so Compose has to pull)."""
    store = tmp_path / "empty-store"
    store.mkdir()
    return factory(models_path=store, **env)


def replay_compose(plugin: Path, env: dict[str, str], model: str) -> dict[str, object]:
    """Run Compose's call sequence for one model with runtime flags; return the status."""
    metadata = json.loads(plugin_run(plugin, env, "docker-cli-plugin-metadata").stdout)
    assert version_at_least(metadata["Version"], "1.0.6"), metadata  # else flags are dropped

    listed = plugin_run(plugin, env, "ls", "--json", combined=True)
    assert listed.returncode == 0, listed.stdout
    available = [tag for model in json.loads(listed.stdout) for tag in model["tags"]]

    status_run = plugin_run(plugin, env, "status", "--json", combined=True)
    assert status_run.returncode == 0, status_run.stdout
    status = json.loads(status_run.stdout)  # CombinedOutput: nothing else may be printed

    assert model not in available
    pulled = plugin_run(plugin, env, "pull", model)
    assert pulled.returncode == 0, pulled.stderr
    assert any(line.strip() for line in pulled.stdout.splitlines())  # Compose reads lines
    configured = plugin_run(
        plugin, env, "configure", "--context-size", "2048", model, "--", "--temp", "0", "--seed", "7"
    )
    assert configured.returncode == 0, configured.stderr
    return dict(status)


def test_compose_sequence_pulls_and_configures_the_model(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    daemon: Daemon,
    daemon_factory: Callable[..., Daemon],
    registry: RegistryServer,
) -> None:
    """Compose's ls, status, pull and configure calls succeed and the runtime flags arrive."""
    model = publish(daemon, registry, "compose")
    target = empty_daemon(daemon_factory, tmp_path)
    env = compose_env(tmp_path_factory, target)
    plugin = install_plugin(env)
    status = replay_compose(plugin, env, model)
    assert status["running"] is True
    assert status["endpointHost"] == target.base_url + "/engines/v1/"
    assert str(status["endpoint"]).endswith(f":{target.port}/engines/v1/")
    listed = json.loads(plugin_run(plugin, env, "ls", "--json").stdout)
    assert [m["tags"] for m in listed] == [[model]]  # a second `up` skips the pull
    shown = target.get("/engines/_configure", params={"model": model}).json()
    entry = shown[0] if isinstance(shown, list) else shown
    text = json.dumps(entry)
    assert '"--temp", "0", "--seed", "7"' in text and "2048" in text


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=check, timeout=IP_TIMEOUT_SECONDS
    )


@pytest.fixture(scope="module")
def docker0_bridge() -> Iterator[str]:
    """Create ``docker0`` (172.17.0.1/16) and a namespace behind it; yield the namespace.

    Teardown deletes both, each ``ip`` call bounded, whatever the test did.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to build a docker0 bridge")
    if Path("/sys/class/net/docker0").exists():
        pytest.skip("this host has a real docker0; not touching Docker's bridge")
    namespace = f"dmr-compose-{uuid.uuid4().hex[:8]}"
    host_end = f"vdmr{uuid.uuid4().hex[:6]}"
    try:
        _ip("link", "add", "docker0", "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_ADDRESS}/16", "dev", "docker0")
        _ip("link", "set", "docker0", "up")
        _ip("netns", "add", namespace)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", host_end, "master", "docker0")
        _ip("link", "set", host_end, "up")
        _ip("-n", namespace, "addr", "add", f"{CONTAINER_ADDRESS}/16", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as ex:
        _teardown(namespace, host_end)
        pytest.skip(f"cannot build a bridge and namespace here: {ex.stderr.strip()}")
    try:
        yield namespace
    finally:
        _teardown(namespace, host_end)


def _teardown(namespace: str, host_end: str) -> None:
    for args in (("link", "del", host_end), ("netns", "del", namespace), ("link", "del", "docker0")):
        try:
            _ip(*args, check=False)
        except subprocess.TimeoutExpired:
            pass


# What runs "in the container": the OpenAI base URL from Compose, one chat request.
_CONTAINER_CLIENT = """
import json, sys, urllib.request
base = sys.argv[1]
body = json.dumps({"model": sys.argv[2], "max_tokens": 8,
                   "messages": [{"role": "user", "content": "Say hi"}]}).encode()
request = urllib.request.Request(base + "chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=120) as answer:
    print(json.load(answer)["choices"][0]["message"]["content"])
"""


def test_a_container_behind_docker0_reaches_the_endpoint_compose_got(
    docker0_bridge: str,
    daemon: Daemon,
    daemon_factory: Callable[..., Daemon],
    registry: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """A process in a namespace behind docker0 gets a chat answer from status's endpoint."""
    model = publish(daemon, registry, "bridge")
    # The test sets the listen addresses itself: the fixtures' daemons listen on loopback only.
    bridged = empty_daemon(daemon_factory, tmp_path, DMR_RUNNER_HOST=f"127.0.0.1,{BRIDGE_ADDRESS}")
    env = compose_env(tmp_path_factory, bridged)
    status = replay_compose(install_plugin(env), env, model)
    endpoint = str(status["endpoint"])
    assert endpoint == f"http://{BRIDGE_ADDRESS}:{bridged.port}/engines/v1/"
    answer = subprocess.run(
        ["ip", "netns", "exec", docker0_bridge, sys.executable, "-c", _CONTAINER_CLIENT,
         endpoint, model],
        capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
    # The namespace cannot reach the host's loopback: only the bridge address worked.
    loopback = subprocess.run(
        ["ip", "netns", "exec", docker0_bridge, sys.executable, "-c", _CONTAINER_CLIENT,
         str(status["endpointHost"]), model],
        capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert loopback.returncode != 0

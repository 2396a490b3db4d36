"""DMR's DEFAULT_REGISTRY and MODEL_RUNNER_REGISTRY_MIRRORS against two real registries.

The daemon's default registry is a local "origin" registry and its mirror another local
registry: a pull of a short name asks the mirror first and falls back to the origin when the
mirror lacks the model. The seeded daemon publishes the model to both beforehand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon_fixtures import Daemon
from tests.support.registry_fixtures import RegistryServer, start_registry

pytestmark = [pytest.mark.llama_server, pytest.mark.registry]


@pytest.fixture
def mirror(docker_registry_bin: str, tmp_path: Path) -> Iterator[RegistryServer]:
    """A second open registry on 127.0.0.1, the mirror."""
    server = start_registry(docker_registry_bin, tmp_path / "mirror")
    yield server
    server.stop()


def publish(seeded: Daemon, registry: RegistryServer, tag: str) -> None:
    """Push the seeded ai/smollm2 to ``registry`` as ``ai/smollm2:<tag>``."""
    name = f"{registry.host}/ai/smollm2"
    tagged = seeded.post("/models/ai/smollm2/tag", params={"repo": name, "tag": tag})
    assert tagged.status_code == 201, tagged.text
    pushed = seeded.post(f"/models/{name}:{tag}/push", headers={"Accept": "application/json"})
    assert '"success"' in pushed.text, pushed.text


def pull(daemon: Daemon, model: str) -> list[dict[str, object]]:
    answer = daemon.post("/models/create", json={"from": model},
                         headers={"Accept": "application/json"})  # fmt: skip
    return [json.loads(line) for line in answer.text.splitlines() if line.strip()]


def manifest_gets(registry: RegistryServer, tag: str) -> list[int]:
    return [
        entry.status
        for entry in registry.access_log()
        if entry.method == "GET" and entry.uri.endswith(f"/manifests/{tag}")
    ]


def test_pull_tries_the_mirror_then_the_default_registry(
    daemon: Daemon,
    daemon_factory: Callable[..., Daemon],
    registry: RegistryServer,
    mirror: RegistryServer,
    tmp_path: Path,
) -> None:
    """A short name resolves to DEFAULT_REGISTRY; the mirror serves it when it can."""
    publish(daemon, mirror, "mirrored")
    publish(daemon, registry, "origin-only")
    store = tmp_path / "empty-store"
    store.mkdir()
    target = daemon_factory(
        models_path=store,
        DEFAULT_REGISTRY=registry.host,
        MODEL_RUNNER_REGISTRY_MIRRORS=mirror.host,
    )

    events = pull(target, "ai/smollm2:mirrored")
    assert events[-1]["type"] == "success", events
    assert manifest_gets(mirror, "mirrored") == [200]
    assert manifest_gets(registry, "mirrored") == []

    events = pull(target, "smollm2:origin-only")
    assert events[-1]["type"] == "success", events
    assert manifest_gets(mirror, "origin-only") == [404]
    assert manifest_gets(registry, "origin-only") == [200]

    # Tags name the default registry, never the mirror; short names find them.
    tags = {tag for model in target.get("/models").json() for tag in model.get("tags", [])}
    assert tags == {f"{registry.host}/ai/smollm2:mirrored", f"{registry.host}/ai/smollm2:origin-only"}
    assert target.get("/models/ai/smollm2:origin-only").status_code == 200

    # Nowhere: both are asked, and the origin's answer is the one reported.
    last = pull(target, "ai/smollm2:nowhere")[-1]
    message = str(last["error"]["message"] if "error" in last else last["message"])  # type: ignore[index]
    assert "not found" in message and registry.host in message and mirror.host not in message
    assert manifest_gets(mirror, "nowhere") == [404] and manifest_gets(registry, "nowhere") == [404]

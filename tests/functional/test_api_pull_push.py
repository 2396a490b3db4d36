"""Pull and push through the daemon's API against a real loopback registry."""

from __future__ import annotations

import html
import json
from collections.abc import Callable

import pytest
import requests

from tests.support.daemon_fixtures import Daemon
from tests.support.registry_fixtures import RegistryServer

pytestmark = [pytest.mark.llama_server, pytest.mark.registry]


def progress_lines(response: requests.Response, *, escaped: bool) -> list[dict[str, object]]:
    """Parse a progress stream (HTML-unescaping each line when the daemon escaped it)."""
    lines = [line for line in response.text.split("\n") if line]
    if escaped:
        assert all('"' not in line for line in lines), "lines must be HTML-escaped"
        lines = [html.unescape(line) for line in lines]
    return [json.loads(line) for line in lines]


def test_push_then_pull_into_an_empty_store(
    daemon: Daemon,
    daemon_factory: Callable[..., Daemon],
    registry: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A model pushed from one daemon is pulled by another, inspected remotely and served."""
    target = f"{registry.host}/test/smollm2:v1"
    answer = daemon.post(
        "/models/ai/smollm2:latest/tag",
        params={"repo": f"{registry.host}/test/smollm2", "tag": "v1"},
    )
    assert answer.status_code == 201, answer.text
    local_id = daemon.get("/models/ai/smollm2").json()["id"]

    pushed = daemon.post(f"/models/{target}/push", timeout=120)
    assert pushed.status_code == 200, pushed.text
    assert pushed.headers["content-type"].startswith("text/plain")
    events = progress_lines(pushed, escaped=True)
    assert events[-1]["type"] == "success"
    assert events[-1]["message"] == "Model pushed successfully"
    assert any(event["type"] == "progress" and event["mode"] == "push" for event in events)

    remote = daemon.get(f"/models/{target}", params={"remote": "true"}, timeout=30).json()
    assert remote["id"] == local_id
    assert "tags" not in remote

    other = daemon_factory(models_path=tmp_path_factory.mktemp("empty") / "models")
    pulled = other.post(
        "/models/create", json={"from": target}, headers={"Accept": "application/json"}, timeout=120
    )
    assert pulled.status_code == 200, pulled.text
    assert pulled.headers["content-type"].startswith("application/json")
    events = progress_lines(pulled, escaped=False)
    assert events[-1] == {
        "type": "success",
        "message": "Model pulled successfully",
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": "pull",
    }
    progress = [event for event in events if event["type"] == "progress"]
    assert progress and all(event["mode"] == "pull" for event in progress)
    (model,) = other.get("/models").json()
    assert model["id"] == local_id
    assert model["tags"] == [target]

    again = other.post("/models/create", json={"from": target}, timeout=60)
    (line,) = progress_lines(again, escaped=True)
    assert line["type"] == "success"
    assert str(line["message"]).startswith("Using cached model: ")

    chat = other.post(
        "/engines/v1/chat/completions",
        json={"model": target, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
        timeout=120,
    )
    assert chat.status_code == 200, chat.text


def test_pull_of_a_missing_model_is_a_json_404(daemon: Daemon, registry: RegistryServer) -> None:
    """A pull that fails before any progress answers a JSON error status."""
    answer = daemon.post(
        "/models/create", json={"from": f"{registry.host}/test/missing:v1"}, timeout=60
    )
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "model_not_found"


def test_push_to_an_unreachable_registry_is_a_json_502(daemon: Daemon) -> None:
    """A push whose registry refuses connections answers 502 registry_error."""
    answer = daemon.post(
        "/models/ai/smollm2/tag", params={"repo": "127.0.0.1:1/test/smollm2", "tag": "v1"}
    )
    assert answer.status_code == 201
    answer = daemon.post("/models/127.0.0.1:1/test/smollm2:v1/push", timeout=90)
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"] == "registry_error"

"""``docker-model ls --openaiurl URL`` against a loopback OpenAI-compatible ``/v1/models``."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.docker_cli import module_cli
from tests.support.json_routes import RoutesServer, json_answer
from tests.support.processes import free_port

CLI_TIMEOUT_SECONDS = 60


def models_listing() -> dict[str, object]:
    """The server's list, dated from now (the ages the CLI prints are relative to its clock)."""
    now = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": "qwen3:8b", "object": "model", "created": now - 3 * 7 * 86400, "owned_by": "me"},
            {"id": "Llama-3:latest", "object": "model", "created": now - 7200, "owned_by": "me"},
            {"id": "qwen3:0.6b", "object": "model", "created": now - 90, "owned_by": "me"},
        ],
    }


@pytest.fixture
def endpoint() -> Iterator[RoutesServer]:
    routes = {
        "/v1/models": lambda seen: json_answer(models_listing()),
        "/broken/models": lambda seen: json_answer({"error": {"message": "boom"}}, status=500),
        "/html/models": lambda seen: (200, b"<html></html>"),
    }
    with RoutesServer(routes) as server:
        yield server


def ls(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_RUNNER_")}
    # No daemon anywhere, and a key that belongs to it: neither may be used.
    env.update({"MODEL_RUNNER_HOST": "unix:///nonexistent/dmr.sock", "DMR_API_KEY": "secret"})
    return module_cli(env, "ls", *argv, timeout=CLI_TIMEOUT_SECONDS)


def test_table_sorted_by_id_with_ages(endpoint: RoutesServer) -> None:
    done = ls("--openaiurl", endpoint.url + "/v1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "MODEL NAME      CREATED",
        "Llama-3:latest  2 hours ago",
        "qwen3:0.6b      About a minute ago",
        "qwen3:8b        3 weeks ago",
    ]
    assert endpoint.paths() == ["/v1/models"]
    assert "Authorization" not in endpoint.seen[0].headers


def test_json_and_repository_filter(endpoint: RoutesServer) -> None:
    done = ls("--openaiurl", endpoint.url + "/v1/", "--json", "qwen3")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["object"] == "list"
    assert [m["id"] for m in document["data"]] == ["qwen3:8b", "qwen3:0.6b"]
    exact = json.loads(ls("--openaiurl", endpoint.url + "/v1", "--json", "qwen3:8b").stdout)
    assert [m["id"] for m in exact["data"]] == ["qwen3:8b"]


def test_refusals_and_failures(endpoint: RoutesServer) -> None:
    quiet = ls("--openaiurl", endpoint.url + "/v1", "-q")
    assert quiet.returncode == 2 and "--quiet flag cannot be used with --openaiurl" in quiet.stderr
    broken = ls("--openaiurl", endpoint.url + "/broken")
    assert broken.returncode == 1 and "boom" in broken.stderr
    html = ls("--openaiurl", endpoint.url + "/html")
    assert html.returncode == 1 and "not JSON" in html.stderr
    closed = ls("--openaiurl", f"http://127.0.0.1:{free_port()}/v1")
    assert closed.returncode == 1 and "failed to list models from the OpenAI endpoint" in closed.stderr
    bad = ls("--openaiurl", "ftp://x/v1")
    assert bad.returncode == 1 and "invalid OpenAI URL" in bad.stderr

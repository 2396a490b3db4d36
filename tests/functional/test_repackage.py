"""Repackaging: model variants that share their weights, through the API and `docker model`.

One daemon (seeded with the real SmolLM2 as ``ai/smollm2``) serves the module; the CLI runs as
``docker model ...`` through the real ``docker`` client with the plugin installed. Each test
makes variants under its own names, so the tests do not depend on each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.daemon_fixtures import Daemon
from tests.support.docker_cli import docker_model, ok, plugin_env
from tests.support.registry_fixtures import RegistryServer

pytestmark = [pytest.mark.llama_server]

SOURCE = "ai/smollm2"
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> dict[str, str]:
    """Return the environment of ``docker model`` commands: plugin installed, host set."""
    return plugin_env(tmp_path_factory.mktemp("docker-config"), daemon.base_url)


def repackage(daemon: Daemon, source: str, body: Any) -> Any:
    return daemon.post(f"/models/{source}/repackage", json=body, timeout=60)


def inspect(daemon: Daemon, ref: str) -> dict[str, Any]:
    answer = daemon.get(f"/models/{ref}", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def stored_manifest(daemon: Daemon, model_id: str) -> dict[str, Any]:
    hex_digest = model_id.removeprefix("sha256:")
    return dict(json.loads((daemon.models_path / "manifests" / "sha256" / hex_digest).read_bytes()))


def runner_argv(daemon: Daemon) -> list[str]:
    processes = daemon.runner_processes()
    assert len(processes) == 1, [p.cmdline() for p in processes]
    return list(processes[0].cmdline())


def chat(daemon: Daemon, model: str) -> dict[str, Any]:
    answer = daemon.post(
        "/engines/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=180,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_context_size_variant_is_a_real_model_with_the_same_layers(daemon: Daemon) -> None:
    """A repackaged model shows its context size, runs with it, and the source is unchanged."""
    before = inspect(daemon, SOURCE)
    answer = repackage(daemon, SOURCE, {"target": "team/smol:ctx1k", "context_size": 1024})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["message"] == 'Model repackaged successfully as "team/smol:ctx1k"'
    assert (body["source"], body["target"]) == (SOURCE, "team/smol:ctx1k")
    variant = inspect(daemon, "team/smol:ctx1k")
    assert variant["id"] == body["id"] != before["id"]
    assert variant["config"]["context_size"] == 1024
    assert inspect(daemon, SOURCE) == before  # the source is untouched
    source_layers = stored_manifest(daemon, before["id"])["layers"]
    assert stored_manifest(daemon, variant["id"])["layers"] == source_layers

    assert chat(daemon, "team/smol:ctx1k")["choices"][0]["message"]["content"]
    argv = runner_argv(daemon)
    assert argv[argv.index("--ctx-size") + 1] == "1024"
    ps = daemon.get("/engines/ps", timeout=30).json()
    assert [entry["context_size"] for entry in ps] == [1024]
    assert daemon.post("/engines/unload", json={"all": True}, timeout=60).status_code == 200


def test_template_variant_runs_with_the_new_template(daemon: Daemon) -> None:
    """A repackaged template replaces the model's own at runner start."""
    answer = repackage(daemon, SOURCE, {"target": "team/smol:tpl", "chat_template": TEMPLATE})
    assert answer.status_code == 201, answer.text
    assert chat(daemon, "team/smol:tpl")["choices"][0]["message"]["content"]
    argv = runner_argv(daemon)
    assert Path(argv[argv.index("--chat-template-file") + 1]).read_text() == TEMPLATE
    assert daemon.post("/engines/unload", json={"all": True}, timeout=60).status_code == 200


@pytest.mark.parametrize(
    ("source", "body", "status", "param"),
    [
        ("ai/nope", {"target": "team/x:1", "context_size": 512}, 404, "model"),
        (SOURCE, {"context_size": 512}, 400, "target"),
        (SOURCE, {"target": "team/x@sha256:" + "0" * 64}, 400, "target"),
        (SOURCE, {"target": "team/x:1", "context_size": 0}, 400, "context_size"),
        (SOURCE, {"target": "team/x:1", "context_size": -4096}, 400, "context_size"),
        (SOURCE, {"target": "team/x:1", "context_size": 2**40}, 400, "context_size"),
        (SOURCE, {"target": "team/x:1", "context_size": "8k"}, 400, "context_size"),
        (SOURCE, {"target": "team/x:1", "chat_template": {"a": 1}}, 400, "chat_template"),
        (SOURCE, {"target": "team/x:1", "chat_template": "x\u0000y"}, 400, "chat_template"),
        (SOURCE, {"target": "team/x:1", "licenses": [{"name": "L"}]}, 400, "licenses"),
        (SOURCE, ["team/x:1"], 400, None),
    ],
)
def test_bad_input_is_a_json_error(
    daemon: Daemon, source: str, body: Any, status: int, param: str | None
) -> None:
    answer = repackage(daemon, source, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert daemon.get("/models/team/x:1", timeout=30).status_code == 404


def test_cli_package_from_changes_context_template_and_licenses(
    docker_env: dict[str, str], tmp_path: Path
) -> None:
    """`docker model package --from` makes a variant the daemon stores and `inspect` shows."""
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    (tmp_path / "LICENSE").write_text("MIT License\n")
    result = docker_model(
        docker_env, "package", "--from", SOURCE, "--context-size", "2048",
        "--chat-template", str(tmp_path / "chat.jinja"), "--license", str(tmp_path / "LICENSE"),
        "team/smol:cli",
    )  # fmt: skip
    ok(result)
    assert "Setting context size 2048" in result.stderr
    assert "Model variant created successfully" in result.stderr
    model = json.loads(ok(docker_model(docker_env, "inspect", "team/smol:cli")))
    assert model["config"]["context_size"] == 2048

    (tmp_path / "binary.jinja").write_bytes(b"\x00\x01\xff")
    refused = docker_model(
        docker_env, "package", "--from", SOURCE, "--chat-template",
        str(tmp_path / "binary.jinja"), "team/smol:bad",
    )  # fmt: skip
    assert refused.returncode != 0 and "not a UTF-8 text file" in refused.stderr
    missing = docker_model(docker_env, "package", "--from", "ai/nope", "team/smol:none")
    assert missing.returncode != 0 and "ai/nope" in missing.stderr


def test_cli_package_from_push_uploads_no_weight_blob_again(
    docker_env: dict[str, str], registry: RegistryServer, daemon: Daemon
) -> None:
    """`package --from --push` sends a new config and manifest only; the weights are mounted."""
    published = f"{registry.host}/ai/smollm2:v1"
    ok(docker_model(docker_env, "tag", SOURCE, published))
    ok(docker_model(docker_env, "push", published))
    weights = [
        layer["digest"]
        for layer in stored_manifest(daemon, inspect(daemon, SOURCE)["id"])["layers"]
        if layer["mediaType"] == "application/vnd.docker.ai.gguf.v3"
    ]
    assert weights
    uploads_before = [e for e in registry.access_log() if e.method in ("PUT", "PATCH")]

    target = f"{registry.host}/team/variant:8k"
    result = docker_model(
        docker_env, "package", "--from", SOURCE, "--context-size", "8192", "--push", target
    )
    ok(result)
    assert "Model pushed successfully" in result.stderr

    log = registry.access_log()
    new_uploads = [e for e in log if e.method in ("PUT", "PATCH")][len(uploads_before) :]
    # An upload's PUT names its digest URL-encoded (sha256%3A<hex>): match on the hex part.
    uploaded = " ".join(entry.uri for entry in new_uploads)
    assert new_uploads, "the new config blob must have been uploaded"
    for digest in weights:
        assert digest.partition(":")[2] not in uploaded, uploaded  # never sent again
    mounted = [e for e in log if e.method == "POST" and "mount=" in e.uri and e.status == 201]
    assert {digest for digest in weights if any(digest in e.uri for e in mounted)} == set(weights)
    # The registry now serves the variant: its config says 8192, its layers are the weights.
    answer = requests.get(
        f"{registry.url}/v2/team/variant/manifests/8k",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    pushed = answer.json()
    assert [layer["digest"] for layer in pushed["layers"]][: len(weights)] == weights
    config = requests.get(
        f"{registry.url}/v2/team/variant/blobs/{pushed['config']['digest']}", timeout=10
    ).json()
    assert config["config"]["context_size"] == 8192
    for digest in weights:
        head = requests.head(f"{registry.url}/v2/team/variant/blobs/{digest}", timeout=10)
        assert head.status_code == 200

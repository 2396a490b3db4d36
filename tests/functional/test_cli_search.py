"""``docker-model search`` as a process against loopback stand-ins of the real search APIs.

Three servers speak the JSON of the real services (shapes from Docker Hub's
``/v2/repositories/<namespace>/`` list, the Hugging Face Hub's ``/api/models`` search and
``/api/models/<repo>/tree/main`` listing, and the OCI distribution API's manifests):
``DOCKER_MODEL_HUB_URL``, ``HF_ENDPOINT`` and ``DOCKER_MODEL_HUB_REGISTRY`` point the CLI at
them, so nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import RegistryError
from orchestrator.modelcli.search_sources import DockerHubSource, HuggingFaceSource
from orchestrator.store import mediatypes
from tests.support.docker_cli import module_cli
from tests.support.json_routes import Answer, RoutesServer, Seen, json_answer
from tests.support.processes import free_port

CLI_TIMEOUT_SECONDS = 60
HF_REPO = "bartowski/Llama-3.2-1B-Instruct-GGUF"
HF_REPO_2 = "unsloth/Qwen3-0.6B-GGUF"
SHA = "a" * 64


def hub_repo(name: str, pulls: int, stars: int, description: str, **extra: object) -> dict:
    """Return one entry of Docker Hub's repository list, as the real API sends it."""
    return {
        "name": name,
        "namespace": "ai",
        "repository_type": "image",
        "status": 1,
        "status_description": "active",
        "description": description,
        "is_private": False,
        "star_count": stars,
        "pull_count": pulls,
        "last_updated": "2025-05-01T10:00:00.000000Z",
        "date_registered": "2025-01-01T00:00:00.000000Z",
        "affiliation": "",
        "media_types": ["application/vnd.oci.image.manifest.v1+json"],
        "content_types": ["model"],
        "categories": [],
        **extra,
    }


HUB_PAGE_1 = [
    hub_repo("smollm2", 1_234_567, 12, "Small LLM built for speed and efficiency"),
    hub_repo("secret", 99_999_999, 1, "private one", is_private=True),
]
HUB_PAGE_2 = [
    hub_repo("llama3.2", 45_600, 30, "Meta's Llama 3.2: a compact model for chat"),
    hub_repo("qwen3-vllm", 999, 0, "Qwen3 in safetensors for vLLM"),
]


def docker_hub(seen: Seen) -> Answer:
    """Docker Hub's paginated list: two per page, ``next`` absolute on hub.docker.com."""
    page = seen.query.get("page", ["1"])[0]
    if page == "1":
        following = (
            "https://hub.docker.com/v2/repositories/ai/?ordering=pull_count&page=2&page_size=2"
        )
        return json_answer(
            {"count": 4, "next": following, "previous": None, "results": HUB_PAGE_1}
        )
    return json_answer({"count": 4, "next": None, "previous": "x", "results": HUB_PAGE_2})


def hf_search(seen: Seen) -> Answer:
    """The Hub's model search, as ``GET /api/models`` answers it."""
    models = [
        {
            "_id": "66f3c0d1",
            "id": HF_REPO,
            "likes": 150,
            "trendingScore": 3,
            "private": False,
            "downloads": 98_765,
            "tags": ["gguf", "llama", "text-generation", "llama-3", "instruct"],
            "pipeline_tag": "text-generation",
            "library_name": "gguf",
            "createdAt": "2024-09-25T18:36:47.000Z",
            "modelId": HF_REPO,
        },
        {
            "_id": "6811a2b3",
            "id": HF_REPO_2,
            "likes": 7,
            "private": False,
            "downloads": 5,
            "tags": ["gguf", "qwen3", "license:apache-2.0"],
            "createdAt": "2025-04-29T00:00:00.000Z",
            "modelId": HF_REPO_2,
        },
        {"id": "someone/private-GGUF", "private": True, "downloads": 10**9, "tags": []},
    ]
    wanted = seen.query.get("search", [""])[0].lower()
    return json_answer([m for m in models if wanted in str(m["id"]).lower()])


def hf_tree(seen: Seen) -> Answer:
    """The Hub's file listing of the first repository."""
    gguf = {"oid": SHA, "pointerSize": 135}
    return json_answer(
        [
            {"type": "file", "oid": "1" * 40, "size": 1234, "path": "README.md"},
            {
                "type": "file",
                "oid": "2" * 40,
                "size": 800_000_000,
                "path": "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
                "lfs": {**gguf, "size": 800_000_000},
            },
            {
                "type": "file",
                "oid": "3" * 40,
                "size": 1_300_000_000,
                "path": "Llama-3.2-1B-Instruct-Q8_0.gguf",
                "lfs": {**gguf, "size": 1_300_000_000},
            },
        ]
    )


def manifest(layer_type: str, size: int) -> Answer:
    """An OCI model manifest as Docker Hub's registry serves ``ai/<name>:latest``."""
    document = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.CONFIG_V01, "digest": "sha256:" + "c" * 64, "size": 9},
        "layers": [
            {"mediaType": layer_type, "digest": "sha256:" + "d" * 64, "size": size},
            {"mediaType": mediatypes.LICENSE, "digest": "sha256:" + "e" * 64, "size": 1000},
        ],
    }
    return 200, json.dumps(document).encode(), {"Content-Type": mediatypes.OCI_MANIFEST}


@pytest.fixture
def hub() -> Iterator[RoutesServer]:
    with RoutesServer({"/v2/repositories/ai/": docker_hub}) as server:
        yield server


@pytest.fixture
def hf() -> Iterator[RoutesServer]:
    routes = {"/api/models": hf_search, f"/api/models/{HF_REPO}/tree/main": hf_tree}
    with RoutesServer(routes) as server:
        yield server


@pytest.fixture
def registry() -> Iterator[RoutesServer]:
    routes = {
        "/v2/": lambda seen: json_answer({}),
        "/v2/ai/smollm2/manifests/latest": lambda seen: manifest(mediatypes.GGUF, 270_600_000),
        "/v2/ai/qwen3-vllm/manifests/latest": lambda seen: manifest(
            mediatypes.SAFETENSORS, 1_500_000_000
        ),
    }
    with RoutesServer(routes) as server:
        yield server


def closed_url() -> str:
    """Return a loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def cli_env(tmp_path: Path, hub_url: str, hf_url: str, registry_host: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MODEL_RUNNER_", "DOCKER_", "HF_"))
        and key.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(
        {
            "DOCKER_MODEL_HUB_URL": hub_url,
            "HF_ENDPOINT": hf_url,
            "DOCKER_MODEL_HUB_REGISTRY": registry_host,
            "DOCKER_CONFIG": str(tmp_path / "docker-config"),
            "HOME": str(tmp_path),
            # Nothing here may need the daemon: a search that tried would fail.
            "MODEL_RUNNER_HOST": "unix:///nonexistent/dmr.sock",
        }
    )
    return env


def search(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return module_cli(env, "search", *argv, timeout=CLI_TIMEOUT_SECONDS)


def test_table_lists_docker_hub_first_then_hugging_face_with_backend_and_size(
    tmp_path: Path, hub: RoutesServer, hf: RoutesServer, registry: RoutesServer
) -> None:
    done = search(cli_env(tmp_path, hub.url, hf.url, registry.host))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "DESCRIPTION", "BACKEND", "SIZE", "DOWNLOADS", "STARS", "SOURCE"
    ]
    names = [line.split()[0] for line in lines[1:]]
    # Docker Hub by pulls (the private repository skipped), then Hugging Face by downloads.
    assert names == ["ai/smollm2", "ai/llama3.2", "ai/qwen3-vllm", f"hf.co/{HF_REPO}", f"hf.co/{HF_REPO_2}"]
    smollm2 = lines[1]
    assert "llama.cpp" in smollm2 and "270.60MB" in smollm2 and "1.2M" in smollm2
    assert smollm2.rstrip().endswith("Docker Hub")
    assert "vllm" in lines[3] and "1.50GB" in lines[3]
    # No manifest for ai/llama3.2: the lookup fails quietly.
    assert "unknown" in lines[2] and "n/a" in lines[2] and "45.6K" in lines[2]
    # The default pull of the Hub repository is its Q4_K_M file.
    hf_line = lines[4]
    assert "llama.cpp" in hf_line and "800.00MB" in hf_line and "98.8K" in hf_line
    assert "text-generation, llama, llama-3" in hf_line and hf_line.rstrip().endswith("HuggingFace")
    # The second page came from our server, not from the hub.docker.com of the "next" link.
    pages = [seen.query.get("page", ["1"])[0] for seen in hub.seen]
    assert pages == ["1", "2"]
    first = hub.seen[0].query
    assert first["ordering"] == ["pull_count"] and first["page_size"] == ["32"]
    asked = hf.seen[0].query
    assert asked["filter"] == ["gguf"] and asked["sort"] == ["downloads"]
    assert asked["direction"] == ["-1"] and asked["limit"] == ["32"] and "search" not in asked


def test_json_has_dmr_field_names_and_raw_names(
    tmp_path: Path, hub: RoutesServer, hf: RoutesServer, registry: RoutesServer
) -> None:
    done = search(cli_env(tmp_path, hub.url, hf.url, registry.host), "--json", "llama")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert done.stdout.startswith("[\n    {")
    assert [r["Name"] for r in results] == ["ai/llama3.2", HF_REPO]
    assert results[1] == {
        "Name": HF_REPO,
        "Description": "text-generation, llama, llama-3",
        "Downloads": 98765,
        "Stars": 150,
        "Source": "HuggingFace",
        "Official": False,
        "UpdatedAt": "2024-09-25T18:36:47.000Z",
        "Backend": "llama.cpp",
        "Size": 800_000_000,
    }
    assert results[0]["Official"] is True and results[0]["Source"] == "Docker Hub"
    # The term is filtered locally on Docker Hub and sent as search= to Hugging Face.
    assert hf.seen[0].query["search"] == ["llama"]


def test_limit_cuts_the_merged_list(
    tmp_path: Path, hub: RoutesServer, hf: RoutesServer, registry: RoutesServer
) -> None:
    done = search(cli_env(tmp_path, hub.url, hf.url, registry.host), "-n", "2")
    assert done.returncode == 0, done.stderr
    names = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert names == ["ai/smollm2", "ai/llama3.2"]
    assert hub.seen[0].query["page_size"] == ["2"] and hf.seen[0].query["limit"] == ["2"]


def test_source_huggingface_asks_only_the_hub(
    tmp_path: Path, hub: RoutesServer, hf: RoutesServer, registry: RoutesServer
) -> None:
    done = search(cli_env(tmp_path, hub.url, hf.url, registry.host), "--source", "hf")
    assert done.returncode == 0, done.stderr
    assert hub.seen == []
    assert f"hf.co/{HF_REPO}" in done.stdout and "ai/" not in done.stdout


def test_one_source_down_still_shows_the_other_with_a_warning(
    tmp_path: Path, hf: RoutesServer, registry: RoutesServer
) -> None:
    done = search(cli_env(tmp_path, closed_url(), hf.url, registry.host), "llama")
    assert done.returncode == 0, done.stderr
    assert f"hf.co/{HF_REPO}" in done.stdout
    assert "Warning: failed to search Docker Hub: could not reach Docker Hub" in done.stderr
    assert "DOCKER_MODEL_HUB_URL" in done.stderr


def test_garbage_from_the_only_source_is_a_clear_error(tmp_path: Path, hf: RoutesServer) -> None:
    def garbage(seen: Seen) -> Answer:
        return 200, b"<html>maintenance</html>"

    with RoutesServer({"/v2/repositories/ai/": garbage}) as hub:
        done = search(cli_env(tmp_path, hub.url, hf.url, "127.0.0.1:1"), "--source", "dockerhub")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Docker Hub" in done.stderr and "not JSON" in done.stderr


def test_wrong_shape_and_rate_limit_are_clear_errors(tmp_path: Path) -> None:
    routes = {
        "/v2/repositories/ai/": lambda seen: json_answer({"results": "nope"}),
        "/api/models": lambda seen: json_answer({"error": "slow down"}, status=429),
    }
    with RoutesServer(routes) as both:
        done = search(cli_env(tmp_path, both.url, both.url, "127.0.0.1:1"))
    assert done.returncode == 1
    assert "search failed: Docker Hub:" in done.stderr
    assert "unexpected shape" in done.stderr
    assert "HuggingFace is rate limiting searches (HTTP 429)" in done.stderr


def test_no_match_prints_dmr_line(
    tmp_path: Path, hub: RoutesServer, hf: RoutesServer, registry: RoutesServer
) -> None:
    done = search(cli_env(tmp_path, hub.url, hf.url, registry.host), "zzz-nothing")
    assert done.returncode == 0, done.stderr
    assert done.stdout == 'No models found matching "zzz-nothing"\n'
    # Docker Hub has no text search: every page was read looking for a match.
    assert len(hub.seen) == 2


def test_unknown_source_is_a_usage_error(tmp_path: Path) -> None:
    done = search(cli_env(tmp_path, closed_url(), closed_url(), "127.0.0.1:1"), "--source", "gh")
    assert done.returncode == 2
    assert "unknown source 'gh'" in done.stderr


def test_a_source_that_never_answers_fails_within_its_deadline() -> None:
    def silent(seen: Seen) -> Answer:
        time.sleep(3)
        return 200, b"[]"

    with RoutesServer({"/v2/repositories/ai/": silent}) as server:
        source = DockerHubSource(server.url, deadline_seconds=0.5)
        started = time.monotonic()
        with pytest.raises(RegistryError):
            source.search("", 5)
        source.close()
    assert time.monotonic() - started < 2.5


def test_hugging_face_answer_of_the_wrong_shape_is_refused() -> None:
    with RoutesServer({"/api/models": lambda seen: json_answer({"models": []})}) as server:
        source = HuggingFaceSource(server.url)
        with pytest.raises(RegistryError, match="HF_ENDPOINT"):
            source.search("x", 3)
        source.close()

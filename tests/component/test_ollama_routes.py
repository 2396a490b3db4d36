"""Ollama's model routes (/api/tags, show, ps, embed, copy, delete, pull) on the real app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.api_app import ApiHarness, build_harness
from tests.support.runner_views import ps

MODEL = "ai/tiny"


@pytest.fixture
def harness() -> Iterator[ApiHarness]:
    built = build_harness()
    yield built
    built.close()


def get(harness: ApiHarness, path: str) -> Any:
    result = harness.client.simulate_get(path)
    assert result.status_code == 200, result.text
    return json.loads(result.text)


def post(harness: ApiHarness, path: str, body: object, status: int = 200) -> Any:
    result = harness.client.simulate_post(path, json=body)
    assert result.status_code == status, result.text
    return json.loads(result.text)


def test_version_is_one_ollama_clients_accept(harness: ApiHarness) -> None:
    """0.6.8: at least 0.6.4 (VS Code's minimum), before 0.9's think protocol."""
    version = get(harness, "/api/version")["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)


def test_tags_and_show(harness: ApiHarness) -> None:
    (entry,) = get(harness, "/api/tags")["models"]
    assert entry["name"] == entry["model"] == "ai/tiny:latest"
    assert entry["size"] == harness.record.size_bytes > 0
    assert entry["digest"] == harness.record.id
    assert entry["details"]["family"] == "llama"
    shown = post(harness, "/api/show", {"model": entry["name"]})
    assert shown["capabilities"] == ["completion"]
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["model_info"]["llama.context_length"] == 4096
    assert shown["details"] == entry["details"]
    # "name" is read when "model" is absent (DMR and older Ollama clients).
    assert post(harness, "/api/show", {"name": MODEL})["details"] == entry["details"]
    assert post(harness, "/api/show", {"model": "ai/nope"}, 404) == {
        "error": "model 'ai/nope' not found"
    }


def test_ps_lists_the_runner_after_a_request(harness: ApiHarness) -> None:
    assert get(harness, "/api/ps") == {"models": []}
    post(harness, "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False})
    (entry,) = get(harness, "/api/ps")["models"]
    assert entry["name"] == "ai/tiny:latest"
    assert entry["digest"] == harness.record.id
    assert entry["size"] > 0  # measured, or the admitted estimate before the first measure
    assert entry["context_length"] == ps(harness.scheduler)[0]["context_size"]
    assert entry["expires_at"] > "2000"


def test_embed_and_legacy_embeddings(harness: ApiHarness) -> None:
    """The fake engine's vector comes back; dimensions cut it and rescale it to length 1."""
    body = post(harness, "/api/embed", {"model": MODEL, "input": "hello"})
    assert body["model"] == MODEL
    assert body["embeddings"] == [[0.1, 0.2, 0.3]]
    assert body["prompt_eval_count"] == 1
    cut = post(harness, "/api/embed", {"model": MODEL, "input": ["a"], "dimensions": 2})
    (vector,) = cut["embeddings"]
    assert len(vector) == 2 and abs(sum(v * v for v in vector) - 1) < 1e-9
    assert post(harness, "/api/embed", {"model": MODEL, "input": []})["embeddings"] == []
    assert post(harness, "/api/embeddings", {"model": MODEL, "prompt": "hi"}) == {
        "embedding": [0.1, 0.2, 0.3]
    }
    assert post(harness, "/api/embeddings", {"model": MODEL, "prompt": ""}) == {"embedding": []}
    modes = {runner["mode"] for runner in ps(harness.scheduler)}
    assert modes == {"embedding"}
    assert "error" in post(harness, "/api/embed", {"model": MODEL, "input": [3]}, 400)


def test_copy_then_delete(harness: ApiHarness) -> None:
    """copy adds a tag; delete of one of two tags untags, of the last one deletes."""
    assert post(harness, "/api/copy", {"source": MODEL, "destination": "ai/tiny:copy"}) == {}
    names = sorted(entry["name"] for entry in get(harness, "/api/tags")["models"])
    assert names == ["ai/tiny:copy", "ai/tiny:latest"]
    assert post(harness, "/api/copy", {"source": "ai/nope", "destination": "x:y"}, 404) == {
        "error": "model 'ai/nope' not found"
    }
    assert "destination" in post(harness, "/api/copy", {"source": MODEL}, 400)["error"]

    post(harness, "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False})
    deleted = harness.client.simulate_delete("/api/delete", json={"model": "ai/tiny:copy"})
    assert deleted.status_code == 200 and json.loads(deleted.text) == {}
    deleted = harness.client.simulate_delete("/api/delete", json={"model": MODEL})
    assert deleted.status_code == 200
    assert get(harness, "/api/tags") == {"models": []}
    assert ps(harness.scheduler) == []  # unloaded first
    again = harness.client.simulate_delete("/api/delete", json={"model": MODEL})
    assert again.status_code == 404
    assert json.loads(again.text) == {"error": "model 'ai/tiny' not found"}


@pytest.mark.parametrize(
    ("body", "status"),
    [({}, 400), ({"model": "Not A Name!"}, 400), ({"model": MODEL, "stream": "no"}, 400)],
)
def test_pull_refuses_bad_requests_before_any_line(
    harness: ApiHarness, body: dict[str, Any], status: int
) -> None:
    result = harness.client.simulate_post("/api/pull", json=body)
    assert result.status_code == status, result.text
    assert set(json.loads(result.text)) == {"error"}


def test_errors_of_falcon_and_the_middleware_are_ollama_shaped(harness: ApiHarness) -> None:
    """A wrong method and an unknown /api route answer {"error": "..."} too."""
    wrong = harness.client.simulate_get("/api/chat")
    assert wrong.status_code == 405
    assert set(json.loads(wrong.text)) == {"error"}
    unknown = harness.client.simulate_post("/api/create", json={})
    assert unknown.status_code == 404
    assert set(json.loads(unknown.text)) == {"error"}

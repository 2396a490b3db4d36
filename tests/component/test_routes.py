"""Management routes against a real Store in a scratch directory (and the fake engine)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

import pytest

from orchestrator import __version__
from orchestrator.logfiles import format_timestamp
from tests.support.api_app import ApiHarness, assert_error_shape, build_harness
from tests.support.processes import wait_until

CREATED_2025 = 1735689600


@pytest.fixture(scope="module")
def shared() -> Iterator[ApiHarness]:
    """One harness for the read-only tests of this module."""
    harness = build_harness()
    yield harness
    harness.close()


@pytest.fixture
def harness() -> Iterator[ApiHarness]:
    """A fresh harness for tests that change the store or the runners."""
    harness = build_harness()
    yield harness
    harness.close()


def test_root_and_version(shared: ApiHarness) -> None:
    """/ answers DMR's text, /version the package version (any method)."""
    assert shared.client.simulate_get("/").text == "Docker Model Runner is running"
    assert json.loads(shared.client.simulate_get("/version").text) == {"version": __version__}
    assert shared.client.simulate_post("/version").status_code == 200


def test_list_models(shared: ApiHarness) -> None:
    """GET /models lists DMR Model JSON."""
    (model,) = json.loads(shared.client.simulate_get("/models").text)
    assert model["id"] == shared.record.id
    assert model["tags"] == ["docker.io/ai/tiny:latest"]
    assert model["created"] == CREATED_2025
    assert model["config"]["format"] == "gguf"
    assert model["config"]["architecture"] == "llama"


@pytest.mark.parametrize(
    "ref", ["ai/tiny", "ai/tiny:latest", "docker.io/ai/tiny:latest", "tiny", "{short}", "{id}"]
)
def test_inspect_by_any_reference(shared: ApiHarness, ref: str) -> None:
    """GET /models/{ref} accepts tags, the partial name, the short and the full ID."""
    ref = ref.format(short=shared.record.short_id, id=shared.record.id)
    result = shared.client.simulate_get(f"/models/{ref}")
    assert result.status_code == 200, result.text
    assert json.loads(result.text)["id"] == shared.record.id


@pytest.mark.parametrize(
    "path",
    ["/engines/v1/models", "/engines/llama.cpp/v1/models", "/v1/models", "/exp/vDD4.40/v1/models"],
)
def test_openai_model_list(shared: ApiHarness, path: str) -> None:
    """The OpenAI list carries one object per model with DMR's dmr block."""
    body = json.loads(shared.client.simulate_get(path).text)
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "docker.io/ai/tiny:latest"
    assert model["object"] == "model"
    assert model["owned_by"] == "docker"
    assert model["created"] == CREATED_2025
    assert model["dmr"]["architecture"] == "llama"
    assert model["dmr"]["context_window"] == 4096


def test_openai_model_by_reference(shared: ApiHarness) -> None:
    """GET /v1/models/{ref} with slashes in ref; no partial-name fallback there."""
    result = shared.client.simulate_get("/engines/v1/models/ai/tiny:latest")
    assert json.loads(result.text)["id"] == "docker.io/ai/tiny:latest"


def test_partial_name_fallback_only_on_models_route(harness: ApiHarness) -> None:
    """GET /models/{name} falls back to the last path component; the OpenAI route does not."""
    harness.client.simulate_post("/models/ai/tiny/tag", params={"repo": "myorg/other", "tag": "v1"})
    result = harness.client.simulate_get("/models/other")
    assert json.loads(result.text)["id"] == harness.record.id
    assert_error_shape(harness.client.simulate_get("/v1/models/other"), 404, "model_not_found")


def test_prefix_and_double_slashes(shared: ApiHarness) -> None:
    """/exp/vDD4.40 is stripped and // cleaned before routing."""
    result = shared.client.simulate_get("/exp/vDD4.40//models//ai/tiny")
    assert result.status_code == 200
    assert json.loads(result.text)["id"] == shared.record.id


def test_engines_status_and_df(shared: ApiHarness) -> None:
    """Status names llama.cpp, its version and which engine on which devices; df reports bytes."""
    status = json.loads(shared.client.simulate_get("/engines/status").text)
    assert list(status) == ["llama.cpp"]
    assert status["llama.cpp"].startswith(
        "Running: llama.cpp 0.0.0-fake (build 0, commit fake), "
        "CPU engine configured (LLAMA_SERVER_PATH) on CPU: "
    )
    df = json.loads(shared.client.simulate_get("/engines/df").text)
    assert df["models_disk_usage"] > 0
    assert df["default_backend_disk_usage"] > 0


def test_inference_without_an_engine_is_503() -> None:
    """No llama-server anywhere: inference answers 503 engine_not_found, the rest still works."""
    harness = build_harness(llama_server_path="/nonexistent")
    try:
        result = harness.client.simulate_post(
            "/engines/v1/chat/completions", json={"model": "ai/tiny"}
        )
        assert_error_shape(result, 503, "engine_not_found")
        status = json.loads(harness.client.simulate_get("/engines/status").text)["llama.cpp"]
        assert status.startswith("Not Installed: ")
        assert harness.client.simulate_get("/models").status_code == 200
    finally:
        harness.close()


def test_tag_then_delete(harness: ApiHarness) -> None:
    """Tag answers 201; deleting a tag untags; deleting by ID needs force with two tags."""
    result = harness.client.simulate_post(
        "/models/ai/tiny/tag", params={"repo": "myorg/tiny", "tag": "v2"}
    )
    assert result.status_code == 201
    assert json.loads(result.text) == {
        "message": 'Model tagged successfully with "myorg/tiny:v2"',
        "target": "myorg/tiny:v2",
    }
    assert (
        json.loads(harness.client.simulate_get("/models/myorg/tiny:v2").text)["id"]
        == harness.record.id
    )
    result = harness.client.simulate_delete(f"/models/{harness.record.id}")
    assert_error_shape(result, 409, "conflict")
    result = harness.client.simulate_delete(
        f"/models/{harness.record.id}", params={"force": "true"}
    )
    assert result.status_code == 200
    assert {"Deleted": harness.record.id} in json.loads(result.text)
    assert json.loads(harness.client.simulate_get("/models").text) == []


def test_export_purge_load_round_trip(harness: ApiHarness) -> None:
    """Export gives a tar; after a purge, loading it brings the same model back."""
    result = harness.client.simulate_get("/models/ai/tiny/export")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/x-tar"
    assert result.headers["content-disposition"] == 'attachment; filename="ai/tiny.tar"'
    with tarfile.open(fileobj=io.BytesIO(result.content)) as archive:
        assert "manifest.json" in archive.getnames()
    assert harness.client.simulate_delete("/models/purge").status_code == 200
    assert json.loads(harness.client.simulate_get("/models").text) == []
    result = harness.client.simulate_post(
        "/models/load", body=result.content, headers={"Content-Type": "application/x-tar"}
    )
    assert result.status_code == 200, result.text
    line = json.loads(result.text.replace("&#34;", '"'))
    assert (line["type"], line["message"]) == ("success", "Model loaded successfully")
    (model,) = json.loads(harness.client.simulate_get("/models").text)
    assert model["id"] == harness.record.id


def test_inference_then_ps_unload(harness: ApiHarness) -> None:
    """A chat request starts a runner (ps), unload by model stops it."""
    result = harness.client.simulate_post(
        "/engines/v1/chat/completions", json={"model": "ai/tiny", "messages": []}
    )
    assert result.status_code == 200, result.text
    (entry,) = json.loads(harness.client.simulate_get("/engines/ps").text)
    assert entry["backend_name"] == "llama.cpp"
    assert entry["mode"] == "completion"
    assert "in_use" not in entry
    result = harness.client.simulate_post(
        "/engines/unload", json={"models": ["ai/tiny", "ai/nope"]}
    )
    assert json.loads(result.text) == {"unloaded_runners": 1}
    assert json.loads(harness.client.simulate_get("/engines/ps").text) == []


def test_streaming_and_embeddings_and_preload(harness: ApiHarness) -> None:
    """SSE passes through; embeddings use an embedding runner; X-Preload-Only answers empty."""
    result = harness.client.simulate_post(
        "/v1/chat/completions", json={"model": "ai/tiny", "stream": True, "messages": []}
    )
    assert result.headers["content-type"] == "text/event-stream"
    assert result.headers["x-accel-buffering"] == "no"
    assert result.text.rstrip().endswith("data: [DONE]")
    result = harness.client.simulate_post(
        "/engines/llama.cpp/v1/embeddings", json={"model": "ai/tiny", "input": "x"}
    )
    assert json.loads(result.text)["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    result = harness.client.simulate_post(
        "/engines/v1/completions", json={"model": "ai/tiny"}, headers={"X-Preload-Only": "true"}
    )
    assert (result.status_code, result.content) == (200, b"")
    modes = sorted(
        entry["mode"] for entry in json.loads(harness.client.simulate_get("/engines/ps").text)
    )
    assert modes == ["completion", "embedding"]
    result = harness.client.simulate_post("/engines/unload", json={"all": True})
    assert json.loads(result.text) == {"unloaded_runners": 2}


def test_configure_persists_and_preloads(harness: ApiHarness) -> None:
    """_configure answers 202, lists the settings, and preloads the runner."""
    result = harness.client.simulate_post(
        "/engines/llama.cpp/_configure",
        json={"model": "ai/tiny", "context-size": 1024, "keep_alive": "10m"},
    )
    assert result.status_code == 202, result.text
    (entry,) = json.loads(
        harness.client.simulate_get("/engines/_configure", params={"model": "ai/tiny"}).text
    )
    assert entry["ModelID"] == harness.record.id
    assert entry["Config"]["context-size"] == 1024
    assert entry["Config"]["keep_alive"] == "10m0s"
    assert (
        json.loads(
            harness.client.simulate_get("/engines/_configure", params={"model": "ai/nope"}).text
        )
        == []
    )
    assert wait_until(lambda: len(harness.scheduler.management.active_runners()) == 1, timeout=5)
    (runner,) = harness.scheduler.management.active_runners()
    assert runner.context_size == 1024


def test_purge_refused_while_streaming(harness: ApiHarness) -> None:
    """DELETE /models/purge answers 409 while a runner serves a request."""
    import falcon.testing

    env = falcon.testing.create_environ(
        method="POST",
        path="/engines/v1/chat/completions",
        body=json.dumps({"model": "ai/tiny", "stream": True}).encode(),
    )
    iterable = harness.app(env, lambda status, headers: None)
    try:
        next(iter(iterable))
        assert_error_shape(harness.client.simulate_delete("/models/purge"), 409, "conflict")
    finally:
        iterable.close()
    assert harness.client.simulate_delete("/models/purge").status_code == 200


def test_metrics_merge_runner_and_daemon_families(harness: ApiHarness) -> None:
    """/metrics has our request counters and the runner's families with backend/model/mode."""
    harness.client.simulate_post("/engines/v1/chat/completions", json={"model": "ai/tiny"})
    result = harness.client.simulate_get("/metrics")
    assert result.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = result.text
    assert 'dmr_requests_total{mode="completion",model="tiny",status="200"} 1.0\n' in text
    assert "dmr_runner_starts_total 1.0\n" in text
    assert (
        'llamacpp:requests_processing{backend="llama.cpp",mode="completion",model="tiny"} 0.0\n'
        in text
    )
    assert text.count("# TYPE llamacpp:requests_processing ") == 1
    assert 'dmr_request_duration_seconds_count{mode="completion",model="tiny"} 1.0\n' in text


def test_metrics_without_runners_and_disabled() -> None:
    """No runners: a comment says so; DISABLE_METRICS makes the route 404."""
    harness = build_harness(disable_metrics=True)
    try:
        assert_error_shape(harness.client.simulate_get("/metrics"), 404, "not_found")
    finally:
        harness.close()
    harness = build_harness()
    try:
        assert "# No active runners" in harness.client.simulate_get("/metrics").text
    finally:
        harness.close()


def test_logs_merge_chronologically(harness: ApiHarness) -> None:
    """/logs merges the daemon log and engine logs by timestamp; no-engines keeps the first."""
    log_dir = harness.config.log_path
    t = [format_timestamp(1_700_000_000_000_000_000 + i * 1_000_000) for i in range(4)]
    (log_dir / "inference.log").write_text(f"[{t[0]}] daemon one\n[{t[2]}] daemon two\n")
    (log_dir / "engine-abc-completion.log").write_text(
        f"[{t[1]}] engine one\nno stamp\n[{t[3]}] engine two\n"
    )
    text = harness.client.simulate_get("/logs").text
    order = [line.split("] ", 1)[-1] for line in text.splitlines()]
    assert order == ["daemon one", "engine one", "no stamp", "daemon two", "engine two"]
    text = harness.client.simulate_get("/logs", params={"no-engines": "true"}).text
    assert [line.split("] ", 1)[-1] for line in text.splitlines()] == ["daemon one", "daemon two"]


def test_logs_follow_streams_new_lines(harness: ApiHarness) -> None:
    """follow=true sends the existing lines, then lines appended later (new files included)."""
    import falcon.testing

    log_dir = harness.config.log_path
    (log_dir / "inference.log").write_text(f"[{format_timestamp()}] before\n")
    env = falcon.testing.create_environ(path="/logs", query_string="follow=true")
    iterable = harness.app(env, lambda status, headers: None)
    try:
        lines = iter(iterable)
        assert next(lines).decode().endswith("before\n")
        (log_dir / "engine-new-completion.log").write_text(f"[{format_timestamp()}] engine later\n")
        with open(log_dir / "inference.log", "a") as handle:
            handle.write(f"[{format_timestamp()}] daemon later\n")
        text = next(lines).decode()
        assert text.index("engine later") < text.index("daemon later")
    finally:
        iterable.close()

"""The memory surfaces of the API: inspect and ps breakdowns, refusals, 429, the pull warning."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from orchestrator.api import models as models_api
from orchestrator.memory.sizes import MiB
from tests.support.api_app import ApiHarness, assert_error_shape, build_harness
from tests.support.processes import wait_until

CHAT = "/engines/v1/chat/completions"


@pytest.fixture
def make_harness() -> Iterator[Any]:
    made: list[ApiHarness] = []

    def make(**settings: Any) -> ApiHarness:
        harness = build_harness(**settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def chat(harness: ApiHarness) -> falcon.testing.Result:
    return harness.client.simulate_post(CHAT, json={"model": "ai/tiny", "messages": []})


def test_inspect_and_ps_show_the_estimate_and_the_measurement(make_harness: Any) -> None:
    harness = make_harness()
    body = json.loads(harness.client.simulate_get("/models/ai/tiny").text)
    memory = body["memory"]
    ram = memory["estimate"]["ram"]
    assert set(ram) == {"weights", "kv_cache", "compute_buffer", "mmproj", "overhead", "prompt_cache", "total"}
    # The prompt cache is half the KV cache (rounded up to whole MiB), never the 512 MiB ceiling
    # for this tiny model.
    assert ram["kv_cache"] > 0 and ram["prompt_cache"] == -(-ram["kv_cache"] // (2 * MiB)) * MiB
    assert memory["estimate"]["context_size"] == 4096
    assert memory["admitted_with"] == {"ram": ram["total"], "vram": 0, "source": "estimate"}
    assert memory["learned"] is None and memory["never_fits"] == ""
    assert chat(harness).status_code == 200
    (entry,) = json.loads(harness.client.simulate_get("/engines/ps").text)
    assert entry["memory"]["estimate"] == memory["estimate"]
    assert entry["memory"]["measured"]["rss"] > 0 and entry["memory"]["pinned"] is False
    learned = json.loads(harness.client.simulate_get("/models/ai/tiny").text)["memory"]["learned"]
    assert learned["ready_rss"] == entry["memory"]["measured"]["rss"]
    metrics = harness.client.simulate_get("/metrics").text
    assert 'dmr_runner_memory_estimate_bytes{mode="completion",model="tiny"} ' in metrics
    assert 'dmr_runner_evictions_total{reason="memory"} 0.0\n' in metrics


def test_a_model_too_large_for_the_cap_is_507(make_harness: Any) -> None:
    harness = make_harness(max_ram=1 * MiB)
    error = assert_error_shape(chat(harness), 507, "insufficient_memory")
    assert "needs" in error["message"] and "DMR_MAX_RAM" in error["message"]
    assert json.loads(harness.client.simulate_get("/engines/ps").text) == []
    never = json.loads(harness.client.simulate_get("/models/ai/tiny").text)["memory"]["never_fits"]
    assert "1 MiB" in never


def test_queue_overflow_is_429_with_retry_after(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_LOAD_SECONDS", "1.5")
    harness = make_harness(max_queue=1)
    first: list[falcon.testing.Result] = []
    thread = threading.Thread(target=lambda: first.append(chat(harness)))
    thread.start()
    try:
        assert wait_until(lambda: harness.scheduler.management.queue_depths().get("tiny") == 1, timeout=5.0)
        result = chat(harness)
    finally:
        thread.join(15)
    error = assert_error_shape(result, 429, "queue_full")
    assert error["type"] == "rate_limit_error" and error["param"] == "model"
    assert int(result.headers["retry-after"]) >= 1
    assert first[0].status_code == 200
    metrics = harness.client.simulate_get("/metrics").text
    assert 'dmr_admissions_refused_total{reason="queue_full"} 1.0\n' in metrics


def test_pull_warns_when_the_model_can_never_fit(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = make_harness(max_ram=1 * MiB)
    # The registry is not the point here: the "pull" finds the model already in the store.
    monkeypatch.setattr(models_api, "pull_model", lambda ref, store, **kwargs: harness.record)
    result = harness.client.simulate_post(
        "/models/create", json={"from": "ai/tiny"}, headers={"Accept": "application/json"}
    )
    assert result.status_code == 200
    events = [json.loads(line) for line in result.text.splitlines() if line.strip()]
    kinds = [event["type"] for event in events]
    assert kinds == ["warning", "success"], events
    assert "needs" in events[0]["message"] and "1 MiB" in events[0]["message"]


def test_pull_of_a_model_that_fits_has_no_warning(
    make_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = make_harness()
    monkeypatch.setattr(models_api, "pull_model", lambda ref, store, **kwargs: harness.record)
    result = harness.client.simulate_post(
        "/models/create", json={"from": "ai/tiny"}, headers={"Accept": "application/json"}
    )
    events = [json.loads(line) for line in result.text.splitlines() if line.strip()]
    assert [event["type"] for event in events] == ["success"]


def test_configure_pinned_round_trips(make_harness: Any) -> None:
    harness = make_harness()
    result = harness.client.simulate_post(
        "/engines/_configure", json={"model": "ai/tiny", "pinned": True, "context-size": 2048}
    )
    assert result.status_code in (200, 202), result.text
    (entry,) = json.loads(harness.client.simulate_get("/engines/_configure").text)
    assert entry["Config"] == {"context-size": 2048, "pinned": True}
    bad = harness.client.simulate_post("/engines/_configure", json={"model": "ai/tiny", "pinned": 1})
    assert_error_shape(bad, 400, "invalid_request")

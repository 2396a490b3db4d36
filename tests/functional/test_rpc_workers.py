"""One model over two llama.cpp RPC workers on 127.0.0.1, with the real engine and SmolLM2.

The daemon's own budget (``DMR_MAX_RAM=160MiB``) cannot hold SmolLM2 (about 250 MiB with the
prompt cache off), so without workers it answers 507. With two ``rpc-server`` processes the
offloaded layers go to them: only the input embeddings and host buffers stay local, and the
same model is admitted. Killing a worker under a streamed answer ends the stream with one error
event; the next request names the dead worker (503) until it is started again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.daemon_fixtures import MODEL, Daemon
from tests.support.processes import wait_until
from tests.support.rpc_workers import RpcWorker, rpc_workers  # noqa: F401 - fixture

pytestmark = pytest.mark.llama_server

CHAT = "/engines/v1/chat/completions"
BUDGET = {"DMR_MAX_RAM": "160MiB", "DMR_PROMPT_CACHE_MIB": "0", "DMR_MIN_RESIDENCY": "0"}
STREAM_DEADLINE_SECONDS = 60.0


def chat(daemon: Daemon, **extra: object) -> requests.Response:
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello"}],
        **extra,
    }
    return daemon.post(CHAT, json=body)


def runner_argv(daemon: Daemon) -> list[str]:
    (entry,) = daemon.get("/engines/ps").json()
    return list(psutil.Process(entry["pid"]).cmdline())


def test_workers_admit_a_model_the_local_budget_refuses(
    daemon_factory: Callable[..., Daemon], rpc_workers: Callable[[int], list[RpcWorker]]  # noqa: F811
) -> None:
    """507 without workers; configured per model with --rpc, the same daemon answers."""
    workers = rpc_workers(2)
    endpoints = ",".join(worker.endpoint for worker in workers)
    daemon = daemon_factory(**BUDGET)

    refused = chat(daemon)
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "insufficient_memory"
    assert "160 MiB" in refused.json()["error"]["message"]

    configured = daemon.post(
        "/engines/_configure", json={"model": MODEL, "runtime-flags": ["--rpc", endpoints]}
    )
    assert configured.status_code == 202, configured.text
    answered = chat(daemon)
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"]

    argv = runner_argv(daemon)
    assert argv[argv.index("--rpc") + 1] == endpoints
    assert argv.count("--rpc") == 1
    for worker in workers:
        assert "Accepted client connection" in worker.log()


def test_ps_shows_where_the_layers_went(
    daemon_factory: Callable[..., Daemon], rpc_workers: Callable[[int], list[RpcWorker]]  # noqa: F811
) -> None:
    """DMR_RPC_SERVERS reaches every runner; /engines/ps shows each worker and its layers."""
    workers = rpc_workers(2)
    endpoints = [worker.endpoint for worker in workers]
    daemon = daemon_factory(DMR_RPC_SERVERS=",".join(endpoints), **BUDGET)
    assert chat(daemon).status_code == 200

    argv = runner_argv(daemon)
    assert argv[argv.index("--rpc") + 1] == ",".join(endpoints)
    (entry,) = daemon.get("/engines/ps").json()
    rpc = entry["rpc"]
    assert [w["endpoint"] for w in rpc["workers"]] == endpoints
    assert all(w["reachable"] and w["free_bytes"] > 0 for w in rpc["workers"])
    placement = {device["device"]: device for device in rpc["placement"]}
    assert set(placement) == {"CPU", *endpoints}
    # SmolLM2 has 30 layers: all of them on the workers, split by their free memory.
    assert sum(placement[e]["layers"] for e in endpoints) == 30
    assert all(placement[e]["layers"] > 0 and placement[e]["model_bytes"] > 0 for e in endpoints)
    assert rpc["offloaded_layers"] == rpc["total_layers"] == 31
    # Only the input embeddings stay here (about 29 MiB of the 94 MiB of weights).
    assert placement["CPU"]["model_bytes"] < 40 * 1024**2
    assert entry["memory"]["admitted_with"]["ram"] < 160 * 1024**2
    status = daemon.get("/engines/status").json()["llama.cpp"]
    assert status.startswith("Running") and f"RPC workers: {endpoints[0]} " in status


def test_a_worker_lost_mid_stream_ends_the_stream_and_is_named_until_back(
    daemon_factory: Callable[..., Daemon], rpc_workers: Callable[[int], list[RpcWorker]]  # noqa: F811
) -> None:
    """Kill a worker under a streamed answer: one error event, then 503 naming it, then back."""
    workers = rpc_workers(2)
    daemon = daemon_factory(
        DMR_RPC_SERVERS=",".join(worker.endpoint for worker in workers), **BUDGET
    )
    assert chat(daemon).status_code == 200
    events: list[bytes] = []
    tokens = threading.Event()

    def stream() -> None:
        with chat_stream(daemon) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    events.append(line)
                    if len(events) >= 3:
                        tokens.set()

    started = time.monotonic()
    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert tokens.wait(STREAM_DEADLINE_SECONDS), "no tokens streamed"
    workers[1].kill()
    reader.join(STREAM_DEADLINE_SECONDS)
    assert not reader.is_alive(), "the stream did not end after its worker died"
    assert time.monotonic() - started < STREAM_DEADLINE_SECONDS
    errors = [json.loads(e[6:]) for e in events if e != b"data: [DONE]" and b'"error"' in e]
    assert len(errors) == 1, events[-3:]
    assert errors[0]["error"]["code"] == "runner_crashed"
    assert events[-1] != b"data: [DONE]" and b'"error"' in events[-1]
    assert wait_until(lambda: not daemon.get("/engines/ps").json(), timeout=15)

    named = chat(daemon)
    assert named.status_code == 503, named.text
    error = named.json()["error"]
    assert error["code"] == "unavailable"
    assert workers[1].endpoint in error["message"] and workers[0].endpoint not in error["message"]
    assert int(named.headers["Retry-After"]) >= 1
    status = daemon.get("/engines/status").json()["llama.cpp"]
    assert f"{workers[1].endpoint} unreachable (connection failed" in status

    workers[1].start()
    recovered = chat(daemon)
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["choices"][0]["message"]["content"]


def chat_stream(daemon: Daemon) -> requests.Response:
    body = {
        "model": MODEL,
        "max_tokens": 2000,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
    }
    return requests.post(daemon.url(CHAT), json=body, stream=True, timeout=STREAM_DEADLINE_SECONDS)


def test_two_models_on_the_same_workers_take_turns(
    daemon_factory: Callable[..., Daemon],
    rpc_workers: Callable[[int], list[RpcWorker]],  # noqa: F811
    smollm2_gguf: Path,
    tmp_path: Path,
) -> None:
    """rpc-server serves one runner at a time: the second model stops the idle first one."""
    from orchestrator.store.builder import build_gguf_artifact, store_artifact
    from orchestrator.store.store import Store

    models = tmp_path / "models"
    store = Store(models)
    created = datetime(2025, 1, 1, tzinfo=UTC)
    for name, context in (("ai/one", 4096), ("ai/two", 2048)):
        artifact = build_gguf_artifact(smollm2_gguf, context_size=context, created=created)
        store_artifact(store, artifact, [f"{name}:latest"])
    workers = rpc_workers(2)
    daemon = daemon_factory(
        models_path=models, DMR_RPC_SERVERS=",".join(w.endpoint for w in workers), **BUDGET
    )
    for model in ("ai/one", "ai/two", "ai/one"):
        started = time.monotonic()
        answered = chat(daemon, model=model)
        assert answered.status_code == 200, answered.text
        assert time.monotonic() - started < 30, "a runner waited for a worker another one held"
        (entry,) = daemon.get("/engines/ps").json()
        assert entry["model_name"] == model.removeprefix("ai/")
    evictions = [
        line for line in daemon.get("/metrics").text.splitlines()
        if line.startswith('dmr_runner_evictions_total{reason="rpc"}')
    ]  # fmt: skip
    assert evictions and float(evictions[0].rsplit(" ", 1)[1]) == 2

"""The Scheduler with the real llama-server and the real SmolLM2-135M model."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.runners.engineflags import ALLOWED_FLAGS
from orchestrator.runners.readiness import probe_health
from orchestrator.runners.scheduler import Scheduler
from orchestrator.settings import Config
from orchestrator.unixhttp import UnixHTTPConnection
from tests.fakes.store_stub import StubRecord, StubStore
from tests.support.engine_http import engine_request
from tests.support.rpc_workers import RpcWorker, rpc_workers  # noqa: F401 - fixture

pytestmark = pytest.mark.llama_server


def is_gone(pid: int) -> bool:
    """Return whether ``pid`` no longer runs (an unreaped zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dmr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def record_and_store(workdir: Path, smollm2_gguf: Path) -> tuple[StubRecord, StubStore]:
    store = StubStore(workdir / "store")
    return store.add(smollm2_gguf, tags=("docker.io/ai/smollm2:latest",)), store


@pytest.fixture
def scheduler(workdir: Path, llama_server_bin: Path, record_and_store: tuple[StubRecord, StubStore]) -> Iterator[Scheduler]:
    scheduler = Scheduler(
        config=Config(default_context_size=2048, load_timeout_seconds=120.0, stop_grace_seconds=5.0),
        store=record_and_store[1],
        engine_path=llama_server_bin,
        runtime_dir=workdir / "run",
        log_dir=workdir / "logs",
    )
    scheduler.start()
    yield scheduler
    scheduler.shutdown()


def test_acquire_gives_a_healthy_runner_with_metrics(scheduler: Scheduler, record_and_store: tuple[StubRecord, StubStore]) -> None:
    """A lease points at a llama-server whose /health is 200 and whose /metrics are on."""
    record, _ = record_and_store
    with scheduler.acquire(record, "completion") as lease:
        assert probe_health(lease.socket_path) == 200
        connection = UnixHTTPConnection(lease.socket_path, timeout=5.0)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            metrics = response.read().decode()
        finally:
            connection.close()
        assert response.status == 200 and "llamacpp:requests_processing" in metrics
        assert lease.runner.context_size == 2048


def test_ready_is_detected_quickly(
    scheduler: Scheduler, workdir: Path, record_and_store: tuple[StubRecord, StubStore], capsys: pytest.CaptureFixture[str]
) -> None:
    """The scheduler notices /health turning 200 within 0.2 s of an independent 2 ms watcher."""
    record, _ = record_and_store
    runners_dir = workdir / "run" / "runners"
    first_ok: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for sock in runners_dir.glob("*.sock"):
                if probe_health(str(sock), 0.5) == 200:
                    first_ok.append(time.monotonic())
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        lease = scheduler.acquire(record, "completion")
        detected = time.monotonic()
        # The scheduler may see the 200 first (it polls every 5 ms): the watcher then sees it
        # at its next probe, and the latency is negative.
        watcher.join(5)
    finally:
        stop.set()
        watcher.join(5)
    lease.release()
    assert first_ok, "the watcher never saw the runner ready"
    latency = detected - first_ok[0]
    spawn_to_ready = scheduler.stats.snapshot().load_sum_seconds
    with capsys.disabled():
        print(f"\nspawn_to_ready={spawn_to_ready:.3f}s detection_latency={latency * 1000:.1f}ms")
    assert latency < 0.2


def test_chat_completion_over_the_socket(scheduler: Scheduler, record_and_store: tuple[StubRecord, StubStore]) -> None:
    """One chat completion through the runner socket answers with generated text, also streamed."""
    record, _ = record_and_store
    with scheduler.acquire(record, "completion") as lease:
        status, body = engine_request(
            lease.socket_path,
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12, "temperature": 0},
            timeout=60.0,
        )
        assert status == 200, body[:300]
        content = json.loads(body)["choices"][0]["message"]["content"]
        assert isinstance(content, str) and content.strip()

        status, body = engine_request(
            lease.socket_path,
            "POST",
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 8, "stream": True},
            timeout=60.0,
        )
        events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and events[-1] == "data: [DONE]" and len(events) > 2


def test_embedding_mode_answers_openai_shaped_embeddings(scheduler: Scheduler, record_and_store: tuple[StubRecord, StubStore]) -> None:
    """Embedding mode (--embeddings --pooling mean) returns one vector per input."""
    record, _ = record_and_store
    with scheduler.acquire(record, "embedding") as lease:
        status, body = engine_request(lease.socket_path, "POST", "/v1/embeddings", {"input": ["hello", "world"]}, 60.0)
        assert status == 200, body[:300]
        data = json.loads(body)["data"]
        assert len(data) == 2 and len(data[0]["embedding"]) > 10


def test_stop_leaves_no_process(scheduler: Scheduler, workdir: Path, record_and_store: tuple[StubRecord, StubStore]) -> None:
    """After shutdown the llama-server process, its socket and its pid file are gone."""
    record, _ = record_and_store
    with scheduler.acquire(record, "completion") as lease:
        pid = lease.runner.pid
    assert pid is not None and not is_gone(pid)
    scheduler.shutdown()
    assert is_gone(pid)
    assert list((workdir / "run" / "runners").iterdir()) == []
    assert "exited with status 0" in Path(lease.runner.log_path).read_text()


# Tried in order. An empty guess is safe early: a flag that needs a value then swallows
# sentinel A and the parse fails on sentinel B, which does not count as accepted.
_VALUE_GUESSES: tuple[tuple[str, ...], ...] = (
    ("1",), (), ("on",), ("mean",), ("f16",), ("layer",), ("none",), ("0x1",), ("0-1",),
    ("0", "1"), ("deepseek",), ("{}",),
)


def _engine_accepts(
    engine: Path, flag: str, guesses: tuple[tuple[str, ...], ...] = _VALUE_GUESSES
) -> bool:
    for value in guesses:
        # Two sentinels: parsing always fails on one of them, so no server ever starts.
        result = subprocess.run(
            [str(engine), flag, *value, "--zz-sentinel-a", "--zz-sentinel-b"],
            capture_output=True, text=True, timeout=10, check=False,
        )
        if "invalid argument: --zz-sentinel-a" in result.stdout + result.stderr:
            return True
    return False


def test_every_allowed_flag_is_known_to_this_engine(llama_server_bin: Path) -> None:
    """The engine's parser accepts every allow-listed runtime flag (with some value)."""
    # --rpc connects to its workers while the command line is parsed (test below).
    flags = sorted(ALLOWED_FLAGS - {"--rpc"})
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        accepted = list(pool.map(lambda flag: _engine_accepts(llama_server_bin, flag), flags))
    assert [flag for flag, ok in zip(flags, accepted, strict=True) if not ok] == []
    assert not _engine_accepts(llama_server_bin, "--zz-not-a-flag")


def test_the_rpc_flag_is_known_to_this_engine(
    llama_server_bin: Path, rpc_workers: Callable[[int], list[RpcWorker]]  # noqa: F811
) -> None:
    """``--rpc host:port`` parses (it needs a listening worker: the engine connects at once)."""
    (worker,) = rpc_workers(1)
    assert _engine_accepts(llama_server_bin, "--rpc", ((worker.endpoint,),))

"""The real Scheduler driving the fake engine: starts, failures, stops, reaping, sweeps.

Runtime directories live under a short ``/tmp/dmr-*`` path: a Unix socket path holds at most
107 bytes and pytest's ``tmp_path`` can be longer.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator.errors import (
    ConflictError,
    RunnerStartError,
    RunnerTimeoutError,
    ServiceUnavailableError,
)
from orchestrator.runners.persisted import RunnerSettings
from orchestrator.runners.process import KILL_WAIT_SECONDS
from orchestrator.runners.scheduler import Scheduler
from orchestrator.settings import Config
from tests.fakes.store_stub import StubRecord, StubStore
from tests.support.engine_http import engine_request
from tests.support.processes import is_gone, stop_process, wait_until
from tests.support.runner_views import configurations, ps

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = REPO / "tests" / "fakes" / "fake_llama_server.py"


@pytest.fixture
def make_scheduler(
    store: StubStore, workdir: Path, started_pids: Callable[[], list[int]]
) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(**overrides: Any) -> Scheduler:
        # Several runners at once on a 2-CPU machine: lift the CPU-based runner cap.
        settings: dict[str, Any] = {
            "load_timeout_seconds": 10.0, "stop_grace_seconds": 2.0, "max_runners": 8,
        }
        settings.update(overrides)
        scheduler = Scheduler(
            config=Config(**settings),
            store=store,
            engine_path=FAKE_ENGINE,
            runtime_dir=workdir / "run",
            log_dir=workdir / "logs",
        )
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown(grace_seconds=1.0)


def test_concurrent_first_requests_start_one_process(
    make_scheduler: Callable[..., Scheduler], record: StubRecord, started_pids: Callable[[], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_LOAD_SECONDS", "0.5")
    scheduler = make_scheduler()
    barrier = threading.Barrier(8)
    leases = []
    errors: list[BaseException] = []

    def acquire() -> None:
        barrier.wait()
        try:
            leases.append(scheduler.acquire(record, "completion"))
        except BaseException as ex:  # noqa: BLE001 - asserted empty below
            errors.append(ex)

    threads = [threading.Thread(target=acquire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not errors
    assert len(leases) == 8
    assert len({lease.runner.pid for lease in leases}) == 1
    assert len(started_pids()) == 1
    assert scheduler.stats.snapshot().starts == 1
    assert ps(scheduler)[0]["in_use"] is True
    for lease in leases:
        lease.release()
    assert "in_use" not in ps(scheduler)[0]


def test_runner_serves_http_on_its_socket(make_scheduler: Callable[..., Scheduler], record: StubRecord) -> None:
    scheduler = make_scheduler()
    with scheduler.acquire(record, "completion") as lease:
        assert engine_request(lease.socket_path, "GET", "/health") == (200, b'{"status": "ok"}')
        status, body = engine_request(lease.socket_path, "GET", "/fake/argv")
        argv = json.loads(body)["argv"]
        assert status == 200 and argv[argv.index("--ctx-size") + 1] == "2048"
        assert lease.runner.context_size == 2048
        entry = ps(scheduler)[0]
        assert entry["model_name"] == "smollm2" and entry["socket"] == lease.socket_path
        assert entry["last_used"] == "0001-01-01T00:00:00Z"
    assert ps(scheduler)[0]["last_used"].endswith("Z")
    assert scheduler.management.active_runners()[0].pid == lease.runner.pid


def test_crash_at_load_fails_fast_with_log_tail(
    make_scheduler: Callable[..., Scheduler], record: StubRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "crash")
    scheduler = make_scheduler()
    results: list[RunnerStartError] = []

    def acquire() -> None:
        try:
            scheduler.acquire(record, "completion")
        except RunnerStartError as ex:
            results.append(ex)

    started = time.monotonic()
    threads = [threading.Thread(target=acquire) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    elapsed = time.monotonic() - started
    assert len(results) == 3 and elapsed < 3.0
    error = results[0]
    assert "failed to load model" in error.message and "status 1" in error.message
    assert error.details["exit_status"] == 1
    tail = error.details["log_tail"]
    assert isinstance(tail, list) and any("error loading model" in line for line in tail)
    assert len(tail) <= 40
    assert ps(scheduler) == []
    assert scheduler.stats.snapshot().start_failures["error"] == 1


def test_hang_times_out_within_deadline_and_process_is_gone(
    make_scheduler: Callable[..., Scheduler], record: StubRecord, started_pids: Callable[[], list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_BEHAVIOUR", "hang")
    scheduler = make_scheduler(load_timeout_seconds=1.0, stop_grace_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(RunnerTimeoutError) as info:
        scheduler.acquire(record, "completion")
    elapsed = time.monotonic() - started
    # Not before the 1 s deadline; then stopped within the 0.5 s grace plus scheduling slack.
    assert elapsed >= 1.0
    assert elapsed < 4.0
    assert "load_timeout_seconds" in info.value.message
    (pid,) = started_pids()
    assert is_gone(pid)
    assert ps(scheduler) == []
    assert list((scheduler._runners_dir).glob("*")) == []  # pid file and socket removed


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(
    make_scheduler: Callable[..., Scheduler], record: StubRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_IGNORE_SIGTERM", "1")
    scheduler = make_scheduler(stop_grace_seconds=0.5)
    with scheduler.acquire(record, "completion") as lease:
        pid = lease.runner.pid
    started = time.monotonic()
    assert scheduler.management.unload(all=True) == 1
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.5 + KILL_WAIT_SECONDS
    assert elapsed < 1.5
    assert pid is not None and is_gone(pid)
    engine_log = Path(lease.runner.log_path).read_text()
    assert "was killed by SIGKILL" in engine_log and "out-of-memory" not in engine_log
    assert scheduler.stats.snapshot().stops["unload"] == 1


def test_idle_runner_is_reaped_after_keep_alive(make_scheduler: Callable[..., Scheduler], record: StubRecord) -> None:
    scheduler = make_scheduler(keep_alive=0.2)
    with scheduler.acquire(record, "completion") as lease:
        pid = lease.runner.pid
    released = time.monotonic()
    assert ps(scheduler)[0]["keep_alive"] == "0.2s"
    assert wait_until(lambda: ps(scheduler) == [], timeout=3.0)
    assert time.monotonic() - released >= 0.2
    assert pid is not None and wait_until(lambda: is_gone(pid), timeout=3.0)
    assert scheduler.stats.snapshot().stops["idle"] == 1


def test_configured_keep_alive_overrides_the_default(make_scheduler: Callable[..., Scheduler], record: StubRecord) -> None:
    scheduler = make_scheduler(keep_alive=300.0)
    scheduler.management.configure(record, RunnerSettings(keep_alive=0.2))
    with scheduler.acquire(record, "completion"):
        pass
    assert wait_until(lambda: ps(scheduler) == [], timeout=3.0)


def test_leased_runner_is_never_reaped(make_scheduler: Callable[..., Scheduler], record: StubRecord) -> None:
    scheduler = make_scheduler(keep_alive=0.0)
    lease = scheduler.acquire(record, "completion")
    time.sleep(0.6)
    (entry,) = ps(scheduler)
    assert entry["in_use"] is True and entry["pid"] == lease.runner.pid
    assert lease.runner.pid is not None and not is_gone(lease.runner.pid)
    assert scheduler.management.unload(all=True) == 0  # in use: not unloaded either
    lease.release()
    lease.release()  # idempotent
    assert wait_until(lambda: ps(scheduler) == [], timeout=3.0)


def test_crashed_runner_is_removed_and_next_acquire_starts_fresh(
    make_scheduler: Callable[..., Scheduler], record: StubRecord
) -> None:
    scheduler = make_scheduler()
    lease = scheduler.acquire(record, "completion")
    first_pid = lease.runner.pid
    with pytest.raises((http.client.HTTPException, OSError)):
        engine_request(lease.socket_path, "POST", "/fake/crash", {})
    lease.report_crash()
    assert ps(scheduler) == []  # removed at once, even though the lease is still held
    lease.release()
    assert scheduler.stats.snapshot().stops["crash"] == 1
    with scheduler.acquire(record, "completion") as fresh:
        assert fresh.runner.pid != first_pid
        assert engine_request(fresh.socket_path, "GET", "/health")[0] == 200


def test_runner_killed_while_idle_is_dropped_by_the_scheduler(
    make_scheduler: Callable[..., Scheduler], record: StubRecord
) -> None:
    scheduler = make_scheduler()
    with scheduler.acquire(record, "completion") as lease:
        pid = lease.runner.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: ps(scheduler) == [], timeout=3.0)
    engine_log = Path(lease.runner.log_path).read_text()
    assert "out-of-memory" in engine_log  # a SIGKILL we did not send


@pytest.mark.parametrize("how", ["unload", "shutdown", "configure"])
def test_a_stopped_runner_gets_one_sigterm_and_finishes_its_cleanup(
    make_scheduler: Callable[..., Scheduler], record: StubRecord, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Taking a runner out of the table and stopping it sends SIGTERM once: llama-server ends
    a clean shutdown with status 0, but a second SIGTERM makes it exit 1 at once."""
    monkeypatch.setenv("FAKE_LLAMA_SHUTDOWN_SECONDS", "0.5")
    scheduler = make_scheduler()
    with scheduler.acquire(record, "completion") as lease:
        pid = lease.runner.pid
    if how == "unload":
        assert scheduler.management.unload(all=True) == 1
    elif how == "configure":
        scheduler.management.configure(record, RunnerSettings(context_size=1024))
    else:
        scheduler.shutdown()
    assert wait_until(lambda: is_gone(pid), timeout=5.0)
    engine_log = Path(lease.runner.log_path).read_text()
    assert "second interrupt" not in engine_log
    assert engine_log.rstrip().endswith("exited with status 0")


def test_shutdown_stops_every_runner_and_refuses_new_ones(
    make_scheduler: Callable[..., Scheduler], store: StubStore, record: StubRecord, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_IGNORE_SIGTERM", "")
    other_gguf = workdir / "other.gguf"
    other_gguf.write_bytes(b"GGUF")
    other = store.add(other_gguf, tags=("docker.io/ai/other:latest",))
    scheduler = make_scheduler()
    held = scheduler.acquire(record, "completion")
    with scheduler.acquire(record, "embedding"), scheduler.acquire(other, "completion"):
        pass
    pids = [entry["pid"] for entry in ps(scheduler)]
    assert len(pids) == 3
    started = time.monotonic()
    scheduler.shutdown()
    assert time.monotonic() - started < 2.0  # one shared grace, not one per runner
    assert all(is_gone(pid) for pid in pids)
    assert ps(scheduler) == []
    with pytest.raises(ServiceUnavailableError):
        scheduler.acquire(record, "completion")
    held.release()
    assert scheduler.stats.snapshot().stops["shutdown"] == 3


def test_configure_conflicts_while_busy_and_restarts_idle_runner(
    make_scheduler: Callable[..., Scheduler], record: StubRecord
) -> None:
    scheduler = make_scheduler()
    with scheduler.acquire(record, "completion") as lease, pytest.raises(ConflictError):
        scheduler.management.configure(record, RunnerSettings(context_size=1024))
    old_pid = lease.runner.pid
    settings = RunnerSettings(context_size=1024, runtime_flags=("--temp", "0.1"))
    scheduler.management.configure(record, settings)
    assert ps(scheduler) == []  # idle runner evicted so the next start uses the new args
    assert old_pid is not None and is_gone(old_pid)
    with scheduler.acquire(record, "completion") as lease:
        argv = json.loads(engine_request(lease.socket_path, "GET", "/fake/argv")[1])["argv"]
        assert argv[argv.index("--ctx-size") + 1] == "1024" and "--temp" in argv
    scheduler.management.configure(record, settings)  # unchanged: the idle runner stays
    assert len(ps(scheduler)) == 1
    assert configurations(scheduler) == [
        {
            "Backend": "llama.cpp",
            "Model": "docker.io/ai/smollm2:latest",
            "ModelID": record.id,
            "Mode": "completion",
            "Config": {"context-size": 1024, "runtime-flags": ["--temp", "0.1"]},
        }
    ]
    assert scheduler.management.unload(model_ids=[record.short_id]) == 1
    assert len(configurations(scheduler, record.id)) == 1  # settings survive unload


def test_settings_survive_a_new_scheduler(
    make_scheduler: Callable[..., Scheduler], store: StubStore, record: StubRecord
) -> None:
    make_scheduler().management.configure(record, RunnerSettings(context_size=512))
    assert configurations(make_scheduler(), record.id)[0]["Config"] == {"context-size": 512}
    store.remove(record)
    assert configurations(make_scheduler()) == []  # models no longer in the store are left out


def test_loading_runner_is_listed_as_loading(
    make_scheduler: Callable[..., Scheduler], record: StubRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_LOAD_SECONDS", "0.6")
    scheduler = make_scheduler()
    leases = []
    thread = threading.Thread(target=lambda: leases.append(scheduler.acquire(record, "reranking")))
    thread.start()
    assert wait_until(lambda: any(e.get("loading") for e in ps(scheduler)), timeout=3.0)
    entry = ps(scheduler)[0]
    assert entry["mode"] == "reranking" and entry["last_used"] == "0001-01-01T00:00:00Z"
    thread.join(10)
    leases[0].release()
    assert "loading" not in ps(scheduler)[0]


def test_startup_sweep_kills_leftover_runner(
    make_scheduler: Callable[..., Scheduler], workdir: Path, record: StubRecord
) -> None:
    runners_dir = workdir / "run" / "runners"
    runners_dir.mkdir(parents=True)
    socket_path = runners_dir / "c1-leftover.sock"
    argv = [str(FAKE_ENGINE), "--model", str(workdir / "model.gguf"), "--host", str(socket_path)]
    leftover = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert wait_until(socket_path.exists, timeout=5.0)
        for name, proc in (("c1-leftover", leftover), ("c2-bystander", bystander)):
            create_time = psutil.Process(proc.pid).create_time()
            if proc is bystander:
                create_time -= 100.0  # pid reused by an unrelated process: must survive
            (runners_dir / f"{name}.pid").write_text(
                json.dumps({"pid": proc.pid, "create_time": create_time, "argv": argv})
            )
        make_scheduler()
        assert leftover.wait(timeout=5.0) is not None
        assert bystander.poll() is None
        assert list(runners_dir.glob("*.pid")) == [] and not socket_path.exists()
    finally:
        stop_process(leftover)
        stop_process(bystander)


PARENT_SCRIPT = """
import sys, time
from pathlib import Path
from orchestrator.settings import Config
from orchestrator.runners.scheduler import Scheduler
from tests.fakes.store_stub import StubStore

work = Path(sys.argv[1])
store = StubStore(work / "store")
record = store.add(work / "model.gguf", tags=("docker.io/ai/smollm2:latest",))
scheduler = Scheduler(config=Config(), store=store, engine_path=Path(sys.argv[2]),
                      runtime_dir=work / "run", log_dir=work / "logs")
# Acquire on a short-lived thread: the runner must outlive it (spawns use the launcher thread).
import threading
leases = []
thread = threading.Thread(target=lambda: leases.append(scheduler.acquire(record, "completion")))
thread.start()
thread.join()
print(leases[0].runner.pid, flush=True)
time.sleep(60)
"""


def test_runner_dies_with_a_sigkilled_daemon(workdir: Path, record: StubRecord, started_pids: Callable[[], list[int]]) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(workdir), str(FAKE_ENGINE)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        runner_pid = int(line)
        time.sleep(0.3)
        assert not is_gone(runner_pid)  # survived the end of the thread that asked for it
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=5.0)
        assert wait_until(lambda: is_gone(runner_pid), timeout=5.0)
    finally:
        stop_process(parent)

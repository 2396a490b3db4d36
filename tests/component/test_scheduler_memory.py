"""Admission, eviction, queue bounds and pressure: the real Scheduler with the fake engine.

Memory is injected: each model's need is fixed by the test and the host's RAM comes from a
probe the test controls, so every decision path runs without filling this machine's memory.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import (
    InsufficientMemoryError,
    MemoryBusyError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate
from orchestrator.memory.guard import MemoryGuard, RamReading
from orchestrator.memory.learned import FootprintStore
from orchestrator.runners import chores
from orchestrator.runners.lease import Lease
from orchestrator.runners.memoryplan import MemoryPlanner
from orchestrator.runners.persisted import RunnerSettings
from orchestrator.runners.scheduler import Scheduler
from orchestrator.settings import Config
from tests.fakes.store_stub import StubRecord, StubStore
from tests.support.metrics_text import exposition
from tests.support.processes import is_gone, wait_until
from tests.support.runner_views import memory_for, ps

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = REPO / "tests" / "fakes" / "fake_llama_server.py"
MiB = 1024**2
GiB = 1024**3


def need(ram_mib: int) -> MemoryEstimate:
    """An estimate of ``ram_mib`` MiB of RAM, half weights and half KV cache, four slots."""
    return MemoryEstimate(
        ram=DeviceMemory(weights=ram_mib * MiB // 2, kv_cache=ram_mib * MiB // 2),
        vram=DeviceMemory(),
        context_size=2048,
        parallel=4,
        kv_unified=True,
        flash_attn=True,
        gpu_layers=0,
        per_token_bytes=0,
    )


class Host:
    """A host of 64 GiB whose available RAM the test sets (the reserve is 6.4 GiB)."""

    def __init__(self) -> None:
        self.available = 60 * GiB

    def ram(self) -> RamReading:
        return RamReading(64 * GiB, self.available)


@pytest.fixture
def models(store: StubStore, workdir: Path) -> dict[str, StubRecord]:
    """Three models, ``a``, ``b`` and ``c`` (files the fake engine accepts)."""
    found = {}
    for name in ("a", "b", "c"):
        gguf = workdir / f"{name}.gguf"
        gguf.write_bytes(b"GGUF")
        found[name] = store.add(gguf, tags=(f"docker.io/ai/{name}:latest",), config={"context_size": 2048})
    return found


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def make_scheduler(
    store: StubStore, workdir: Path, host: Host, started_pids: Callable[[], list[int]]
) -> Iterator[Callable[..., Scheduler]]:
    """Build schedulers whose models each need ``needs[name]`` MiB (default 100)."""
    made: list[Scheduler] = []

    def make(
        *,
        needs: dict[str, int] | None = None,
        memory: MemoryPlanner | None = None,
        pressure_interval: float = 0.05,
        **overrides: Any,
    ) -> Scheduler:
        settings: dict[str, Any] = {
            "load_timeout_seconds": 10.0,
            "stop_grace_seconds": 1.0,
            "max_runners": 8,
            "min_residency": 0.0,
            "max_wait": 5.0,
        }
        settings.update(overrides)
        config = Config(**settings)
        if memory is None:
            sizes = needs or {}
            guard = MemoryGuard(
                max_ram_bytes=config.max_ram,
                min_residency_seconds=config.min_residency,
                ram_probe=host.ram,
                gpu_probe=list,
            )
            memory = MemoryPlanner(
                guard=guard,
                estimator=lambda model_id, bundle, argv: need(sizes.get(Path(bundle.gguf_path).stem, 100)),
                measurer=lambda pid: None,
            )
        scheduler = Scheduler(
            config=config,
            store=store,
            engine_path=FAKE_ENGINE,
            runtime_dir=workdir / "run",
            log_dir=workdir / "logs",
            memory=memory,
            pressure_interval=pressure_interval,
        )
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown(grace_seconds=1.0)


def loaded(scheduler: Scheduler) -> list[str]:
    """Return the model names with a runner, sorted."""
    return sorted(entry["model_name"] for entry in ps(scheduler))


def use(scheduler: Scheduler, record: StubRecord) -> int | None:
    """Acquire and release a runner of ``record``; return its pid."""
    with scheduler.acquire(record, "completion") as lease:
        return lease.runner.pid


def acquire_in_thread(scheduler: Scheduler, record: StubRecord) -> tuple[threading.Thread, list[Any]]:
    """Start acquiring in a thread; the list receives the lease or the exception."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(scheduler.acquire(record, "completion"))
        except Exception as ex:  # noqa: BLE001 - the test inspects it
            result.append(ex)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_least_recently_used_idle_runner_is_evicted_first(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord]
) -> None:
    scheduler = make_scheduler(max_ram=250 * MiB)
    pid_a = use(scheduler, models["a"])
    pid_b = use(scheduler, models["b"])
    use(scheduler, models["a"])  # b is now the least recently used
    pid_c = use(scheduler, models["c"])
    assert loaded(scheduler) == ["a", "c"]
    assert is_gone(pid_b) and not is_gone(pid_a) and not is_gone(pid_c)
    snap = scheduler.stats.snapshot()
    assert snap.evictions["memory"] == 1 and snap.stops["evicted"] == 1


def test_busy_runner_is_kept_and_the_request_waits_then_is_admitted(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord]
) -> None:
    scheduler = make_scheduler(max_ram=150 * MiB)
    held = scheduler.acquire(models["a"], "completion")
    thread, result = acquire_in_thread(scheduler, models["b"])
    time.sleep(0.5)
    assert result == [] and loaded(scheduler) == ["a"]
    assert scheduler.management.queue_depths()["b"] == 1
    released = time.monotonic()
    held.release()
    thread.join(10)
    assert isinstance(result[0], Lease), result
    assert time.monotonic() - released < 2.0
    result[0].release()
    assert loaded(scheduler) == ["b"] and is_gone(held.runner.pid)
    assert scheduler.stats.snapshot().queue_wait["b"][1] == 1


def test_busy_past_max_wait_is_503_with_retry_after(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord]
) -> None:
    scheduler = make_scheduler(max_ram=150 * MiB, max_wait=0.4)
    with scheduler.acquire(models["a"], "completion"):
        started = time.monotonic()
        with pytest.raises(MemoryBusyError) as caught:
            scheduler.acquire(models["b"], "completion")
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0
    error = caught.value
    assert (error.status, error.code) == (503, "insufficient_memory")
    assert "'a'" in error.message and "retry when they finish" in error.message
    assert error.retry_after is not None and error.retry_after >= 1
    assert scheduler.stats.snapshot().refusals["busy"] == 1


def test_model_that_can_never_fit_is_507_at_once_and_starts_nothing(
    make_scheduler: Callable[..., Scheduler],
    models: dict[str, StubRecord],
    started_pids: Callable[[], list[int]],
) -> None:
    scheduler = make_scheduler(max_ram=150 * MiB, needs={"a": 200})
    started = time.monotonic()
    with pytest.raises(InsufficientMemoryError) as caught:
        scheduler.acquire(models["a"], "completion")
    assert time.monotonic() - started < 1.0
    assert not isinstance(caught.value, MemoryBusyError)
    assert caught.value.status == 507
    assert "needs 200 MiB of RAM" in caught.value.message and "150 MiB" in caught.value.message
    assert caught.value.details["verdict"] == "too_large"
    assert started_pids() == [] and ps(scheduler) == []
    assert scheduler.stats.snapshot().refusals["too_large"] == 1


def test_a_fresh_runner_stays_for_the_minimum_residency(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord]
) -> None:
    scheduler = make_scheduler(max_ram=150 * MiB, min_residency=1.5)
    admitted = time.monotonic()
    pid_a = use(scheduler, models["a"])
    pid_b = use(scheduler, models["b"])  # waits until a is 1.5 s old, then evicts it
    assert time.monotonic() - admitted >= 1.4
    assert loaded(scheduler) == ["b"] and is_gone(pid_a) and not is_gone(pid_b)


def test_max_runners_evicts_idle_then_makes_busy_wait(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord]
) -> None:
    scheduler = make_scheduler(max_runners=1, max_wait=0.4)
    pid_a = use(scheduler, models["a"])
    with scheduler.acquire(models["b"], "completion"):
        assert loaded(scheduler) == ["b"] and is_gone(pid_a)
        with pytest.raises(ServiceUnavailableError) as caught:
            scheduler.acquire(models["c"], "completion")
    assert "DMR_MAX_RUNNERS" in caught.value.message and caught.value.status == 503
    snap = scheduler.stats.snapshot()
    assert snap.evictions["count"] == 1 and snap.refusals["busy"] == 1


def test_queue_overflow_is_429_with_retry_after(
    make_scheduler: Callable[..., Scheduler],
    models: dict[str, StubRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_LOAD_SECONDS", "1.5")
    scheduler = make_scheduler(max_queue=2)
    waiters = [acquire_in_thread(scheduler, models["a"]) for _ in range(2)]
    assert wait_until(lambda: scheduler.management.queue_depths().get("a") == 2, timeout=3.0)
    with pytest.raises(TooManyRequestsError) as caught:
        scheduler.acquire(models["a"], "completion")
    error = caught.value
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "queue_full")
    assert error.retry_after is not None and error.retry_after >= 1 and "DMR_MAX_QUEUE" in error.message
    for thread, result in waiters:
        thread.join(10)
        assert isinstance(result[0], Lease), result
        result[0].release()
    assert scheduler.stats.snapshot().refusals["queue_full"] == 1
    assert 'dmr_queue_depth{model="a"} 0.0\n' in exposition(scheduler.stats)


def test_pinned_runner_is_never_evicted(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord]
) -> None:
    scheduler = make_scheduler(max_ram=150 * MiB, max_runners=1)
    scheduler.management.configure(models["a"], RunnerSettings(pinned=True))
    with scheduler.acquire(models["a"], "completion") as lease:
        pid_a = lease.runner.pid
        # Pinning changes no argument: it applies to a busy runner without a restart.
        scheduler.management.configure(models["a"], RunnerSettings(pinned=True, keep_alive=-1.0))
    with pytest.raises(InsufficientMemoryError) as caught:
        scheduler.acquire(models["b"], "completion")
    assert caught.value.status == 507 and "pinned runners hold 100 MiB ('a')" in caught.value.message
    assert not is_gone(pid_a) and loaded(scheduler) == ["a"]
    assert ps(scheduler)[0]["memory"]["pinned"] is True
    assert ps(scheduler)[0]["keep_alive"] == "-1"


def test_pressure_evicts_idle_runners_but_not_busy_ones(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord], host: Host
) -> None:
    scheduler = make_scheduler()
    pid_a = use(scheduler, models["a"])
    with scheduler.acquire(models["b"], "completion") as busy:
        host.available = 1 * GiB  # under the 6.4 GiB reserve
        assert wait_until(lambda: loaded(scheduler) == ["b"], timeout=3.0)
        # The evicted runner leaves the list first and is stopped (TERM, reap) right after.
        assert wait_until(lambda: is_gone(pid_a), timeout=3.0)
        assert not is_gone(busy.runner.pid)
        time.sleep(0.5)  # more rounds of pressure: the busy runner stays
        assert loaded(scheduler) == ["b"]
        host.available = 60 * GiB
    assert scheduler.stats.snapshot().evictions["pressure"] == 1


def test_one_sample_under_the_reserve_evicts_nothing(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord], host: Host
) -> None:
    scheduler = make_scheduler(pressure_interval=3600.0)
    use(scheduler, models["a"])
    readings = iter([1 * GiB])
    monitor = scheduler.chores.pressure  # driven by hand: the chores' interval is an hour here
    host_ram = host.ram

    def one_dip() -> RamReading:
        host.available = next(readings, 60 * GiB)
        return host_ram()

    scheduler.memory.guard._ram_probe = one_dip
    assert [monitor.sample() for _ in range(5)] == [False] * 5
    assert loaded(scheduler) == ["a"]


def test_learned_footprint_is_persisted_and_used_after_a_restart(
    make_scheduler: Callable[..., Scheduler], models: dict[str, StubRecord], store: StubStore
) -> None:
    config = Config(min_residency=0.0)
    first = make_scheduler(memory=MemoryPlanner.from_config(config, store.root))
    with first.acquire(models["a"], "completion") as lease:
        # Measured off the request's path, right after the runner became ready.
        assert wait_until(lambda: ps(first)[0]["memory"]["measured"] is not None, timeout=10)
        entry = ps(first)[0]["memory"]
        rss = entry["measured"]["rss"]
        assert rss > 1 * MiB and entry["admitted_with"]["source"] == "estimate"
        pid = lease.runner.pid
    assert entry["estimate"]["ram"]["prompt_cache"] == 512 * MiB
    first.shutdown(grace_seconds=1.0)
    assert is_gone(pid)
    saved = json.loads((store.root / "footprints.json").read_text())
    (footprint,) = saved["footprints"]
    assert footprint["model_id"] == models["a"].id and footprint["ready_rss"] >= rss
    second = make_scheduler(memory=MemoryPlanner.from_config(config, store.root))
    with second.acquire(models["a"], "completion"):
        admitted = ps(second)[0]["memory"]["admitted_with"]
    assert admitted["source"] == "measured"
    assert admitted["ram"] >= footprint["ready_rss"] + 512 * MiB
    body = memory_for(second, models["a"])
    assert body["learned"]["max_rss"] >= footprint["max_rss"] and body["never_fits"] == ""
    assert FootprintStore(store.root / "footprints.json").get(models["a"].id, "nope") is None


def test_default_model_is_loaded_again_when_nothing_is(
    make_scheduler: Callable[..., Scheduler],
    models: dict[str, StubRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chores, "DEFAULT_MODEL_IDLE_SECONDS", 0.2)
    scheduler = make_scheduler(default_model=models["a"].id)

    def ready() -> bool:
        return [(e["model_name"], e.get("loading", False)) for e in ps(scheduler)] == [("a", False)]

    assert wait_until(ready, timeout=5.0)
    assert ps(scheduler)[0]["keep_alive"] == "-1"  # kept until evicted or unloaded
    assert scheduler.management.unload(all=True) == 1
    assert wait_until(ready, timeout=5.0)
    pid_b = use(scheduler, models["b"])
    assert loaded(scheduler) == ["a", "b"] and not is_gone(pid_b)

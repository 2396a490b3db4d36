"""The admission gate's policy, the pressure monitor, the chores thread, pinning, the memory
settings and metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError, InvalidRequestError, TooManyRequestsError
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate
from orchestrator.memory.footprint import Footprint
from orchestrator.runners import gate as policy
from orchestrator.runners.chores import Chores
from orchestrator.runners.launch import LaunchPlan
from orchestrator.runners.llamacpp import DEFAULT_PROMPT_CACHE_MIB
from orchestrator.runners.memoryplan import MemoryPlan
from orchestrator.runners.persisted import RunnerSettings, parse_configure_request
from orchestrator.runners.pressure import PressureMonitor
from orchestrator.runners.state import RunnerState
from orchestrator.runners.stats import RunnerStats
from orchestrator.runners.table import Runner, RunnerTable, copy_error
from orchestrator.settings import Config, load
from tests.support.metrics_text import exposition, sample_value

MiB = 1024**2
GiB = 1024**3


def need(ram_mib: int, vram_mib: int = 0, source: str = "estimate") -> MemoryEstimate:
    return MemoryEstimate(
        ram=DeviceMemory(weights=ram_mib * MiB // 2, kv_cache=ram_mib * MiB // 2),
        vram=DeviceMemory(weights=vram_mib * MiB),
        context_size=4096,
        parallel=4,
        kv_unified=True,
        flash_attn=True,
        gpu_layers=0,
        per_token_bytes=0,
        source=source,
    )


class StubProcess:
    """The part of RunnerProcess a runner record reads: the state is all policy needs."""

    def __init__(self, state: RunnerState) -> None:
        self.state = state
        self.pid = 4242
        self.exit_description = None

    def terminate(self) -> None:
        if self.state in (RunnerState.STARTING, RunnerState.LOADING, RunnerState.READY):
            self.state = RunnerState.STOPPING


def entry(name: str, ram_mib: int = 100, **fields: Any) -> Runner:
    """A ready runner holding ``ram_mib`` (its need, 4 slots), with ``fields`` overridden.

    ``state`` sets the process state; ``leases``, ``ready_at``/``started``, ``last_used``,
    ``pinned`` and the measurement fields are set as given.
    """
    estimate = need(ram_mib, fields.pop("vram_mib", 0))
    launch = LaunchPlan(
        runner_id=f"id-{name}", model_id=f"sha256:{name}", model_name=name, mode="completion",
        settings=None, bundle=None, argv=(), socket_path=Path("/nonexistent.sock"),
        log_path=Path("/nonexistent.log"), context_size=4096,
        memory=MemoryPlan(argv=(), key="k", estimate=estimate, learned=None, need=estimate),
    )  # fmt: skip
    process = StubProcess(fields.pop("state", RunnerState.READY))
    runner = Runner(launch, process, keep_alive=300.0, default_model=False)  # type: ignore[arg-type]
    runner.leases = fields.pop("leases", 0)
    started = fields.pop("started", 0.0)
    runner.ready_at = None if process.state in (RunnerState.STARTING, RunnerState.LOADING) else started
    runner.last_used = fields.pop("last_used", 0.0)
    for key in ("peak_rss", "peak_vram"):
        if key in fields:
            setattr(runner.usage, key, fields.pop(key))
    if "measured" in fields:
        runner.usage.latest = fields.pop("measured")
    for key, value in fields.items():
        setattr(runner, key, value)
    return runner


# --- resident view and eviction choice ------------------------------------------------------


def test_resident_counts_the_larger_of_need_and_peak_and_file_pages() -> None:
    fresh = policy.resident(entry("a", 100))
    assert fresh.ram_bytes == 100 * MiB
    assert fresh.file_ram_bytes == 50 * MiB  # estimated weights are mapped file pages
    grown = entry("b", 100, peak_rss=150 * MiB, measured=Footprint(rss_bytes=150 * MiB, file_bytes=40 * MiB))
    view = policy.resident(grown)
    assert (view.ram_bytes, view.file_ram_bytes) == (150 * MiB, 40 * MiB)
    assert policy.resident(entry("c"), stopping=True).loading is True


@pytest.mark.parametrize(
    ("fields", "evictable"),
    [
        ({}, True),
        ({"leases": 1}, False),
        ({"state": RunnerState.LOADING}, False),
        ({"pinned": True}, False),
        ({"started": 95.0}, False),  # 5 s old, minimum residency 10 s
        ({"state": RunnerState.STOPPING}, False),  # taken out of the table, being stopped
        ({"state": RunnerState.FAILED}, False),
    ],
)
def test_is_evictable(fields: dict[str, Any], evictable: bool) -> None:
    assert policy.is_evictable(entry("a", **fields), now=100.0, min_residency=10.0) is evictable


def test_count_victims_are_least_recently_used_first_or_none() -> None:
    old, mid, new = entry("old", last_used=1.0), entry("mid", last_used=2.0), entry("new", last_used=3.0)
    busy = entry("busy", last_used=0.5, leases=2)
    table = [new, busy, old, mid]
    assert policy.count_victims(table, 0, exclude=[], now=100.0, min_residency=0) == []
    assert policy.count_victims(table, 2, exclude=[], now=100.0, min_residency=0) == [old, mid]
    assert policy.count_victims(table, 1, exclude=[old], now=100.0, min_residency=0) == [mid]
    assert policy.count_victims(table, 4, exclude=[], now=100.0, min_residency=0) is None


def test_pressure_victims_cover_the_deficit_and_spare_busy_and_pinned() -> None:
    a = entry("a", 100, last_used=1.0)
    b = entry("b", 100, last_used=2.0)
    c = entry("c", 100, last_used=3.0)
    pinned = entry("p", 500, last_used=0.0, pinned=True)
    busy = entry("x", 500, last_used=0.0, leases=1)
    young = entry("y", 100, last_used=0.5, started=99.9)  # pressure ignores the residency
    table = [a, b, c, pinned, busy, young]
    assert policy.pressure_victims(table, 150 * MiB, 0) == [young, a]
    assert policy.pressure_victims(table, 10 * GiB, 0) == [young, a, b, c]
    assert policy.pressure_victims(table, 0, 0) == []
    gpu = entry("g", 100, vram_mib=1000, last_used=9.0)
    assert policy.pressure_victims([a, gpu], 0, 500 * MiB) == [gpu]


def test_queue_depth_counts_waiters_loads_and_requests_beyond_slots() -> None:
    assert policy.queue_depth(None, 3) == 3
    assert policy.queue_depth(entry("l", state=RunnerState.LOADING, leases=2), 1) == 3
    assert policy.queue_depth(entry("r", leases=6), 0) == 2  # 4 slots serve, 2 queue
    assert policy.queue_depth(entry("r", leases=3), 0) == 0
    assert policy.must_wait(entry("l", state=RunnerState.LOADING)) and policy.must_wait(entry("r", leases=4))
    assert not policy.must_wait(entry("r", leases=3))
    assert policy.retry_after_seconds(None) == 1 and policy.retry_after_seconds(2.2) == 3


# --- pressure monitor and the chores thread --------------------------------------------------


def test_monitor_evicts_only_after_consecutive_samples_under_the_reserve() -> None:
    readings = iter([(5, 0), (5, 0), (0, 0), (5, 0), (5, 0), (7, 1), (0, 0)])
    calls: list[tuple[int, int]] = []
    monitor = PressureMonitor(deficit=lambda: next(readings), on_pressure=lambda r, v: calls.append((r, v)), samples=3)
    results = [monitor.sample() for _ in range(7)]
    assert results == [False, False, False, False, False, True, False]
    assert calls == [(7, 1)]  # one good reading in between reset the count


def test_chores_expire_idle_runners_sample_pressure_and_stop_when_the_table_closes() -> None:
    stats = RunnerStats()
    table = RunnerTable(stats)
    expired = entry("idle", last_used=time.monotonic() - 10.0)
    expired.keep_alive = 1.0
    kept = entry("forever", last_used=0.0)
    kept.keep_alive = -1.0
    busy = entry("busy", leases=1, last_used=0.0)
    busy.keep_alive = 0.0
    with table.changed:
        for runner in (expired, kept, busy):
            table.add(runner)
    stopped: list[list[Runner]] = []
    readings: list[int] = []

    def deficit() -> tuple[int, int]:
        readings.append(1)
        return (0, 0)

    chores = Chores(
        table=table,
        stop_runners=stopped.append,
        pressure=PressureMonitor(deficit=deficit, on_pressure=lambda r, v: None),
        interval=0.01,
    )
    chores.start()
    deadline = time.monotonic() + 3.0
    while (not stopped or len(readings) < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stopped == [[expired]] and expired.state is RunnerState.STOPPING
    assert len(readings) >= 3
    with table.changed:
        assert sorted(r.model_name for r in table.runners()) == ["busy", "forever"]
        table.close()
        table.changed.notify_all()
    chores.join(timeout=2.0)
    assert chores._thread is not None and not chores._thread.is_alive()
    assert stats.snapshot().evictions["idle"] == 1


# --- pinning ----------------------------------------------------------------------------------


def test_configure_request_accepts_pinned_and_round_trips() -> None:
    request = parse_configure_request({"model": "ai/smollm2", "pinned": True, "context-size": 2048})
    assert request.settings.pinned is True
    assert request.settings.to_api() == {"context-size": 2048, "pinned": True}
    assert RunnerSettings.from_json(request.settings.to_json()) == request.settings
    assert parse_configure_request({"model": "m"}).settings.pinned is False
    with pytest.raises(InvalidRequestError) as caught:
        parse_configure_request({"model": "m", "pinned": "yes"})
    assert caught.value.param == "pinned"
    legacy = {"mode": "completion", "context_size": None, "runtime_flags": []}
    assert RunnerSettings.from_json(legacy).pinned is False


def test_same_process_ignores_only_policy_fields() -> None:
    base = RunnerSettings(context_size=2048)
    assert base.same_process(RunnerSettings(context_size=2048, pinned=True, keep_alive=-1.0))
    assert not base.same_process(RunnerSettings(context_size=4096, pinned=True))
    assert not base.same_process(None)


# --- settings ---------------------------------------------------------------------------------


def test_memory_settings_from_the_environment(tmp_path: Path) -> None:
    empty = tmp_path / "config.yaml"
    empty.write_text("")
    config = load(
        config_file=str(empty),
        environ={
            "DMR_MEMORY_RESERVE": "15%",
            "DMR_MAX_RAM": "4GiB",
            "DMR_MAX_VRAM": "512MiB",
            "DMR_MAX_QUEUE": "3",
            "DMR_MAX_WAIT": "90s",
            "DMR_MAX_RUNNERS": "2",
            "DMR_MIN_RESIDENCY": "0",
            "DMR_DEFAULT_MODEL": "ai/smollm2",
            "DMR_PROMPT_CACHE_MIB": "0",
        },
    )
    assert (config.memory_reserve, config.max_ram, config.max_vram) == ("15%", 4 * GiB, 512 * MiB)
    assert (config.max_queue, config.max_wait, config.max_runners) == (3, 90.0, 2)
    assert (config.min_residency, config.default_model, config.prompt_cache_mib) == (0.0, "ai/smollm2", 0)
    assert config.runner_limit == 2


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("DMR_MEMORY_RESERVE", "150%"),
        ("DMR_MAX_RAM", "4 parsecs"),
        ("DMR_MAX_WAIT", "-1"),
        ("DMR_MAX_RUNNERS", "-2"),
        ("DMR_PROMPT_CACHE_MIB", "-5"),
    ],
)
def test_bad_memory_settings_name_the_setting(env: str, value: str, tmp_path: Path) -> None:
    empty = tmp_path / "config.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError) as caught:
        load(config_file=str(empty), environ={env: value})
    assert env in caught.value.message


def test_runner_limit_defaults_to_the_cpus_at_most_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert Config().runner_limit == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Config().runner_limit == 2
    assert Config(max_runners=5).runner_limit == 5


def test_prompt_cache_default_is_the_argv_default() -> None:
    assert Config().prompt_cache_mib == DEFAULT_PROMPT_CACHE_MIB


# --- errors and metrics -----------------------------------------------------------------------


def test_too_many_requests_carries_retry_after_through_a_copy() -> None:
    error = TooManyRequestsError("3 requests already wait", retry_after=7, param="model")
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "queue_full")
    assert error.retry_after == 7
    copied = copy_error(error)
    assert isinstance(copied, TooManyRequestsError) and copied.retry_after == 7
    assert error.to_dict()["error"]["code"] == "queue_full"


def test_stats_render_evictions_refusals_queue_and_memory_gap() -> None:
    stats = RunnerStats()
    stats.record_eviction("memory")
    stats.record_eviction("pressure")
    stats.record_refusal("too_large")
    stats.watch_queue(lambda: {"ai/a": 2})
    stats.observe_wait("ai/a", 1.5)
    stats.set_memory("ai/a", "completion", 120 * MiB, 100 * MiB)
    stats.set_memory("ai/b", "completion", 50 * MiB)
    text = exposition(stats)
    assert 'dmr_runner_evictions_total{reason="memory"} 1.0\n' in text
    assert 'dmr_runner_evictions_total{reason="count"} 0.0\n' in text
    assert 'dmr_admissions_refused_total{reason="too_large"} 1.0\n' in text
    assert 'dmr_queue_depth{model="ai/a"} 2.0\n' in text
    assert 'dmr_queue_wait_seconds_count{model="ai/a"} 1.0\n' in text
    assert 'dmr_runner_memory_estimate_error_ratio{mode="completion",model="ai/a"} 0.2\n' in text
    measured = "dmr_runner_memory_measured_bytes"
    assert sample_value(text, measured, model="ai/a", mode="completion") == 100 * MiB
    assert sample_value(text, measured, model="ai/b", mode="completion") is None
    stats.watch_queue(lambda: {})
    assert 'dmr_queue_depth{model="ai/a"} 0.0\n' in exposition(stats)  # seen once, now empty
    stats.clear_memory("ai/a", "completion")
    text = exposition(stats)
    assert sample_value(text, "dmr_runner_memory_estimate_bytes", model="ai/a", mode="completion") is None
    assert sample_value(text, "dmr_runner_memory_estimate_bytes", model="ai/b", mode="completion") == 50 * MiB
    with pytest.raises(ValueError):
        stats.record_eviction("boredom")
    with pytest.raises(ValueError):
        stats.record_refusal("whim")

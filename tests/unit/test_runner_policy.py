"""Eviction and queue policy, the pressure sampler, pinning, the memory settings and metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import Config, load
from orchestrator.errors import ConfigError, InvalidRequestError, TooManyRequestsError
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate
from orchestrator.memory.footprint import Footprint
from orchestrator.runners import policy
from orchestrator.runners.admission import RunnerPlan
from orchestrator.runners.configs import RunnerSettings, parse_configure_request
from orchestrator.runners.lease import RunnerEntry, copy_error
from orchestrator.runners.llamacpp import DEFAULT_PROMPT_CACHE_MIB
from orchestrator.runners.pressure import PressureSampler
from orchestrator.runners.stats import RunnerStats

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


def entry(name: str, ram_mib: int = 100, **fields: Any) -> RunnerEntry:
    """A ready runner entry holding ``ram_mib`` (its need), with ``fields`` overridden."""
    runner = RunnerEntry(runner_id=f"id-{name}", model_id=f"sha256:{name}", model_name=name, mode="completion")
    estimate = need(ram_mib, fields.pop("vram_mib", 0))
    runner.plan = RunnerPlan(argv=(), key="k", estimate=estimate, learned=None, need=estimate)
    runner.loading = False
    runner.slots = 4
    runner.started = fields.pop("started", 0.0)
    runner.last_used_mono = fields.pop("last_used", 0.0)
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
        ({"refcount": 1}, False),
        ({"loading": True}, False),
        ({"pinned": True}, False),
        ({"started": 95.0}, False),  # 5 s old, minimum residency 10 s
        ({"removed": True}, False),
    ],
)
def test_is_evictable(fields: dict[str, Any], evictable: bool) -> None:
    assert policy.is_evictable(entry("a", **fields), now=100.0, min_residency=10.0) is evictable


def test_count_victims_are_least_recently_used_first_or_none() -> None:
    old, mid, new = entry("old", last_used=1.0), entry("mid", last_used=2.0), entry("new", last_used=3.0)
    busy = entry("busy", last_used=0.5, refcount=2)
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
    busy = entry("x", 500, last_used=0.0, refcount=1)
    young = entry("y", 100, last_used=0.5, started=99.9)  # pressure ignores the residency
    table = [a, b, c, pinned, busy, young]
    assert policy.pressure_victims(table, 150 * MiB, 0) == [young, a]
    assert policy.pressure_victims(table, 10 * GiB, 0) == [young, a, b, c]
    assert policy.pressure_victims(table, 0, 0) == []
    gpu = entry("g", 100, vram_mib=1000, last_used=9.0)
    assert policy.pressure_victims([a, gpu], 0, 500 * MiB) == [gpu]


def test_queue_depth_counts_waiters_loads_and_requests_beyond_slots() -> None:
    assert policy.queue_depth(None, 3) == 3
    assert policy.queue_depth(entry("l", loading=True, refcount=2), 1) == 3
    assert policy.queue_depth(entry("r", refcount=6), 0) == 2  # 4 slots serve, 2 queue
    assert policy.queue_depth(entry("r", refcount=3), 0) == 0
    assert policy.must_wait(entry("l", loading=True)) and policy.must_wait(entry("r", refcount=4))
    assert not policy.must_wait(entry("r", refcount=3))
    assert policy.retry_after_seconds(None) == 1 and policy.retry_after_seconds(2.2) == 3


# --- pressure sampler -------------------------------------------------------------------------


def test_sampler_evicts_only_after_consecutive_samples_under_the_reserve() -> None:
    readings = iter([(5, 0), (5, 0), (0, 0), (5, 0), (5, 0), (7, 1), (0, 0)])
    calls: list[tuple[int, int]] = []
    sampler = PressureSampler(deficit=lambda: next(readings), on_pressure=lambda r, v: calls.append((r, v)), samples=3)
    results = [sampler.sample() for _ in range(7)]
    assert results == [False, False, False, False, False, True, False]
    assert calls == [(7, 1)]  # one good reading in between reset the count


def test_sampler_thread_stops_within_its_join_timeout() -> None:
    ticks: list[int] = []
    sampler = PressureSampler(
        deficit=lambda: (0, 0), on_pressure=lambda r, v: None, on_tick=lambda: ticks.append(1), interval=0.01
    )
    sampler.start()
    deadline = time.monotonic() + 2.0
    while not ticks and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop(timeout=2.0)
    assert ticks
    assert sampler._thread is not None and not sampler._thread.is_alive()


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
    assert error.headers == {"Retry-After": "7"}
    copied = copy_error(error)
    assert isinstance(copied, TooManyRequestsError) and copied.headers == {"Retry-After": "7"}
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
    text = stats.to_prometheus()
    assert 'dmr_runner_evictions_total{reason="memory"} 1' in text
    assert 'dmr_runner_evictions_total{reason="count"} 0' in text
    assert 'dmr_admissions_refused_total{reason="too_large"} 1' in text
    assert 'dmr_queue_depth{model="ai/a"} 2' in text
    assert 'dmr_queue_wait_seconds_count{model="ai/a"} 1' in text
    assert 'dmr_runner_memory_estimate_error_ratio{model="ai/a",mode="completion"} 0.2000' in text
    assert 'dmr_runner_memory_measured_bytes{model="ai/b"' not in text
    stats.watch_queue(lambda: {})
    assert 'dmr_queue_depth{model="ai/a"} 0' in stats.to_prometheus()  # seen once, now empty
    stats.clear_memory("ai/a", "completion")
    assert 'model="ai/a",mode="completion"' not in stats.to_prometheus()
    with pytest.raises(ValueError):
        stats.record_eviction("boredom")
    with pytest.raises(ValueError):
        stats.record_refusal("whim")

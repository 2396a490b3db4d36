"""Admission decisions of the memory guard, with injected RAM and GPU probes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from orchestrator.errors import InsufficientMemoryError, MemoryBusyError
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate, estimate
from orchestrator.memory.guard import (
    MemoryGuard,
    RamReading,
    ResidentRunner,
    Verdict,
    suggest_context_size,
    system_ram,
)
from orchestrator.memory.nvml import GpuInfo

GiB = 1024**3
MiB = 1024**2


def need(ram: float, vram: float = 0.0) -> MemoryEstimate:
    """An estimate of ``ram`` GiB of RAM and ``vram`` GiB of VRAM (all counted as weights)."""
    return MemoryEstimate(
        ram=DeviceMemory(weights=int(ram * GiB)),
        vram=DeviceMemory(weights=int(vram * GiB)),
        context_size=4096,
        parallel=4,
        kv_unified=True,
        flash_attn=True,
        gpu_layers=99 if vram else 0,
        per_token_bytes=0,
    )


def guard(
    *,
    total: float = 16,
    available: float | None = None,
    gpus: Sequence[GpuInfo] = (),
    now: float = 1000.0,
    **kwargs: Any,
) -> MemoryGuard:
    """A guard over a host with ``total`` GiB of RAM (all available unless told)."""
    reading = RamReading(int(total * GiB), int((total if available is None else available) * GiB))
    return MemoryGuard(
        ram_probe=lambda: reading, gpu_probe=lambda: list(gpus), clock=lambda: now, **kwargs
    )


def runner(name: str, ram: float, **kwargs: Any) -> ResidentRunner:
    vram = kwargs.pop("vram", 0.0)
    return ResidentRunner(
        runner_id=f"id-{name}",
        model=name,
        ram_bytes=int(ram * GiB),
        vram_bytes=int(vram * GiB),
        **kwargs,
    )


# --- budget ---------------------------------------------------------------------------------


def test_budget_uses_total_minus_default_reserve() -> None:
    budget = guard(total=16, available=12).budget()
    reserve = int(16 * GiB * 0.10)  # 10 % of 16 GiB = 1.6 GiB > 1 GiB
    assert budget.ram_reserve == reserve
    assert budget.ram_limit == 16 * GiB - reserve
    assert budget.ram_free == 12 * GiB - reserve
    assert not budget.ram_capped
    assert (budget.vram_limit, budget.vram_free, budget.gpus) == (0, 0, ())


def test_budget_with_hard_cap_and_configured_reserve() -> None:
    budget = guard(total=16, max_ram_bytes=3 * GiB, reserve="2GiB").budget()
    assert budget.ram_limit == 3 * GiB
    assert budget.ram_capped
    assert budget.ram_free == 14 * GiB  # the system reading still keeps the reserve


def test_budget_per_gpu_reserve_and_cap() -> None:
    gpus = [
        GpuInfo(0, "A", total_bytes=24 * GiB, free_bytes=20 * GiB, used_bytes=4 * GiB),
        GpuInfo(1, "B", total_bytes=16 * GiB, free_bytes=256 * MiB, used_bytes=15 * GiB),
    ]
    reserved = guard(gpus=gpus).budget()
    assert reserved.vram_limit == (24 * GiB - 512 * MiB) + (16 * GiB - 512 * MiB)
    assert reserved.vram_free == 20 * GiB - 512 * MiB  # GPU 1's free part is under its reserve
    capped = guard(gpus=gpus, max_vram_bytes=8 * GiB).budget()
    assert capped.vram_limit == 16 * GiB
    assert capped.vram_free == 8 * GiB + 256 * MiB
    assert capped.vram_capped


def test_system_ram_probe_reads_this_host() -> None:
    reading = system_ram()
    assert reading.total_bytes > 0
    assert 0 < reading.available_bytes <= reading.total_bytes


# --- decisions ------------------------------------------------------------------------------


def test_fits_without_evicting() -> None:
    decision = guard(total=16).check(need(4), resident=[runner("a", 4)])
    assert decision.verdict is Verdict.FITS
    assert decision.admitted
    assert decision.error() is None
    decision.raise_for_refusal()


def test_too_large_for_the_host_is_507_with_numbers() -> None:
    decision = guard(total=16).check(need(20), resident=[], model="ai/huge")
    assert decision.verdict is Verdict.TOO_LARGE
    error = decision.error()
    assert isinstance(error, InsufficientMemoryError)
    assert not isinstance(error, MemoryBusyError)
    assert (error.status, error.code) == (507, "insufficient_memory")
    assert error.message.startswith("model 'ai/huge' needs 20 GiB of RAM")
    assert "16 GiB total minus the 1.6 GiB reserve" in error.message
    assert "smaller quantization" in error.message
    with pytest.raises(InsufficientMemoryError):
        decision.raise_for_refusal()


def test_too_large_under_dmr_max_ram_even_when_idle_runners_exist() -> None:
    decision = guard(total=64, max_ram_bytes=2 * GiB).check(need(3), resident=[runner("a", 1)])
    assert decision.verdict is Verdict.TOO_LARGE
    assert "DMR_MAX_RAM" in decision.message
    assert decision.evict == ()


def test_evicts_idle_runners_least_recently_used_first() -> None:
    resident = [
        runner("recent", 4, last_used=10.0),
        runner("older", 4, last_used=5.0),
        runner("oldest", 1, last_used=1.0),
    ]
    decision = guard(max_ram_bytes=10 * GiB).check(need(4), resident=resident)
    # Free 10 - 9 = 1 GiB; "oldest" brings it to 2, "older" to 6 >= 4: "recent" stays.
    assert decision.verdict is Verdict.EVICT
    assert decision.evict == ("id-oldest", "id-older")
    assert decision.admitted
    assert decision.error() is None


def test_busy_loading_pinned_runners_are_never_evicted_and_busy_means_503() -> None:
    resident = [
        runner("busy", 6, in_flight=2, last_used=1.0),
        runner("pinned", 2, pinned=True, last_used=0.0),
        runner("idle", 1, last_used=5.0),
    ]
    decision = guard(max_ram_bytes=10 * GiB).check(need(5), resident=resident, model="ai/new")
    # Free 1 GiB, + idle 1 = 2 < 5; the busy runner's 6 GiB would make it fit: wait and retry.
    assert decision.verdict is Verdict.BUSY
    assert decision.evict == ()
    error = decision.error()
    assert isinstance(error, MemoryBusyError)
    assert isinstance(error, InsufficientMemoryError)  # clients catching 507's class see it too
    assert (error.status, error.code) == (503, "insufficient_memory")
    assert error.type == "unavailable_error"
    assert decision.shortfall is not None
    assert (decision.shortfall.free, decision.shortfall.evictable) == (1 * GiB, 1 * GiB)
    assert (decision.shortfall.busy, decision.shortfall.pinned) == (6 * GiB, 2 * GiB)
    assert "'busy'" in error.message and "docker model unload busy" in error.message
    assert "6 GiB" in error.message


def test_loading_runner_blocks_like_a_busy_one() -> None:
    loading = runner("loading", 6, loading=True)
    decision = guard(max_ram_bytes=8 * GiB).check(need(4), resident=[loading])
    assert decision.verdict is Verdict.BUSY


def test_pinned_runners_make_it_507_and_are_named() -> None:
    resident = [runner("keeper", 8, pinned=True)]
    decision = guard(max_ram_bytes=10 * GiB).check(need(4), resident=resident, model="ai/new")
    assert decision.verdict is Verdict.INSUFFICIENT
    error = decision.error()
    assert error is not None and error.status == 507
    assert "pinned runners hold 8 GiB ('keeper')" in error.message
    assert "unload 'keeper'" in error.message
    assert "other processes" not in error.message  # the cap binds, not the host


def test_other_processes_holding_memory_make_it_507() -> None:
    # 16 GiB host, 3 GiB available, 1.6 GiB reserve: 1.4 GiB free for runners.
    decision = guard(total=16, available=3).check(need(2), resident=[])
    assert decision.verdict is Verdict.INSUFFICIENT
    assert "other processes hold 13 GiB" in decision.message  # 14.4 GiB budget - 1.4 GiB free
    assert decision.message.startswith("the model needs 2 GiB of RAM but at most 1.4 GiB")
    assert decision.shortfall is not None
    assert decision.shortfall.free == 3 * GiB - int(16 * GiB * 0.1)
    assert decision.shortfall.others == 13 * GiB


def test_evicting_returns_only_anonymous_memory_to_the_system_reading() -> None:
    # Mapped weights of the idle runner are already counted in "available".
    idle = runner("mapped", 4, file_ram_bytes=3 * GiB)
    host = guard(total=16, available=2, reserve="0")
    small = host.check(need(2.5), resident=[idle])
    assert small.verdict is Verdict.EVICT  # 2 + (4 - 3) = 3 GiB >= 2.5
    assert small.evict == ("id-mapped",)
    large = host.check(need(3.5), resident=[idle])
    assert large.verdict is Verdict.INSUFFICIENT  # 3 GiB < 3.5 even after the eviction


def test_accounting_sees_runners_the_system_does_not_yet() -> None:
    # A loading runner has not touched its memory: "available" is still 16 GiB.
    starting = runner("starting", 8, loading=True)
    decision = guard(total=16, reserve="0").check(need(10), resident=[starting])
    assert decision.verdict is Verdict.BUSY


def test_minimum_residency_protects_a_fresh_runner() -> None:
    fresh = runner("fresh", 6, started=990.0, last_used=995.0)
    young = guard(max_ram_bytes=8 * GiB, min_residency_seconds=30, now=1000.0)
    assert young.check(need(4), resident=[fresh]).verdict is Verdict.BUSY
    later = guard(max_ram_bytes=8 * GiB, min_residency_seconds=30, now=1021.0)
    assert later.check(need(4), resident=[fresh]).evict == ("id-fresh",)


# --- GPUs -----------------------------------------------------------------------------------

H100 = GpuInfo(0, "NVIDIA H100", total_bytes=80 * GiB, free_bytes=70 * GiB, used_bytes=10 * GiB)


def test_vram_fits_on_a_gpu() -> None:
    assert guard(gpus=[H100]).check(need(1, vram=40), resident=[]).verdict is Verdict.FITS


def test_vram_too_large_and_no_gpu_at_all() -> None:
    too_big = guard(gpus=[H100]).check(need(1, vram=90), resident=[], model="ai/big")
    assert too_big.verdict is Verdict.TOO_LARGE
    assert "90 GiB of VRAM" in too_big.message
    assert "--n-gpu-layers" in too_big.message
    no_gpu = guard().check(need(1, vram=1), resident=[])
    assert no_gpu.verdict is Verdict.TOO_LARGE
    assert "no GPU was found" in no_gpu.message


def test_vram_cap_applies_per_gpu() -> None:
    gpus = [H100, GpuInfo(1, "NVIDIA H100", 80 * GiB, 80 * GiB, 0)]
    decision = guard(gpus=gpus, max_vram_bytes=8 * GiB).check(need(1, vram=20), resident=[])
    assert decision.verdict is Verdict.TOO_LARGE
    assert "DMR_MAX_VRAM" in decision.message


def test_vram_shortage_evicts_gpu_runners_only() -> None:
    # NVML's free figure already excludes what resident runners hold on the GPU.
    gpu = GpuInfo(0, "L4", total_bytes=24 * GiB, free_bytes=5 * GiB, used_bytes=19 * GiB)
    resident = [
        runner("cpu-only", 2, last_used=1.0),
        runner("on-gpu", 1, vram=16, last_used=2.0),
    ]
    decision = guard(gpus=[gpu]).check(need(1, vram=10), resident=resident)
    assert decision.verdict is Verdict.EVICT
    assert decision.evict == ("id-on-gpu",)  # the older CPU-only runner would not help


def test_vram_busy_runner_gives_503() -> None:
    gpu = GpuInfo(0, "L4", total_bytes=24 * GiB, free_bytes=5 * GiB, used_bytes=19 * GiB)
    busy = runner("gpu", 1, vram=16, in_flight=1)
    decision = guard(gpus=[gpu]).check(need(1, vram=10), resident=[busy])
    assert decision.verdict is Verdict.BUSY
    assert decision.shortfall is not None and decision.shortfall.kind == "VRAM"
    assert "of VRAM" in decision.message


# --- advice -----------------------------------------------------------------------------------

SMALL_LLAMA = {
    "general.architecture": "llama",
    "llama.block_count": 32,
    "llama.context_length": 131072,
    "llama.embedding_length": 4096,
    "llama.feed_forward_length": 14336,
    "llama.attention.head_count": 32,
    "llama.attention.head_count_kv": 8,
    "llama.vocab_size": 128256,
}


def test_suggested_context_fits_and_is_close_to_the_largest_that_does() -> None:
    big = estimate(SMALL_LLAMA, context_size=131072, weights_bytes=4 * GiB)
    available = 8 * GiB
    suggested = suggest_context_size(big, available)
    assert suggested % 256 == 0 and suggested > 0
    fits = estimate(SMALL_LLAMA, context_size=suggested, weights_bytes=4 * GiB)
    assert fits.ram_bytes <= available
    beyond = estimate(SMALL_LLAMA, context_size=suggested + 512, weights_bytes=4 * GiB)
    assert beyond.ram_bytes > available


def test_no_context_suggestion_when_the_weights_alone_do_not_fit() -> None:
    big = estimate(SMALL_LLAMA, context_size=8192, weights_bytes=20 * GiB)
    assert suggest_context_size(big, 16 * GiB) == 0


def test_refusal_message_suggests_configure_context_size() -> None:
    big = estimate(SMALL_LLAMA, context_size=131072, weights_bytes=4 * GiB)
    decision = guard(total=16, reserve="0").check(big, resident=[], model="ai/llama3.1")
    assert decision.verdict is Verdict.TOO_LARGE
    assert "KV cache for 131072 tokens 16 GiB" in decision.message
    assert "docker model configure --context-size" in decision.message
    assert decision.message == decision.message.strip() and decision.message[0].islower()


def test_never_fits_for_pull_warnings() -> None:
    host = guard(total=16)
    assert host.never_fits(need(4)) == ""
    assert "needs 40 GiB of RAM" in host.never_fits(need(40), model="ai/huge")

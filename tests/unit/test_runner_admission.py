"""Runner memory plans: argv to estimate arguments, the GGUF cache, learned footprints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator.gguf import read_gguf
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate, estimate
from orchestrator.memory.footprint import Footprint
from orchestrator.memory.guard import MemoryGuard, RamReading
from orchestrator.memory.learned import (
    FootprintStore,
    LearnedFootprint,
    argv_key,
    learned_need,
)
from orchestrator.memory.nvml import GpuInfo
from orchestrator.runners.crashes import CrashMemory
from orchestrator.runners.engineflags import engine_options
from orchestrator.runners.launch import LaunchPlanner
from orchestrator.runners.llamacpp import build_argv
from orchestrator.runners.memoryplan import MemoryPlanner, estimate_arguments, prompt_cache_mib_for
from orchestrator.runners.persisted import RunnerConfigStore, RunnerSettings
from orchestrator.settings import Config
from tests.fakes.store_stub import StubBundle, StubRecord, StubStore
from tests.support.gguf_files import write_llama_model, write_sharded_model

GiB = 1024**3
MiB = 1024**2
SOCKET = Path("/run/model-runner/runners/c1-aaaa.sock")


def guard(*, gpus: list[GpuInfo] | None = None, available: int = 60 * GiB) -> MemoryGuard:
    """A guard over a 64 GiB host with the given GPUs."""
    return MemoryGuard(
        ram_probe=lambda: RamReading(64 * GiB, available), gpu_probe=lambda: list(gpus or [])
    )


def bundle_for(gguf_path: Path, config: dict[str, object] | None = None) -> StubBundle:
    return StubBundle(root=gguf_path.parent, gguf_path=gguf_path, config=dict(config or {}))


def argv_for(bundle: StubBundle, *flags: str, prompt_cache_mib: int = 512) -> list[str]:
    from orchestrator.runners.persisted import RunnerSettings

    return build_argv(
        engine_path="/opt/llama-server",
        bundle=bundle,
        mode="completion",
        socket_path=SOCKET,
        settings=RunnerSettings(runtime_flags=flags) if flags else None,
        prompt_cache_mib=prompt_cache_mib,
    )


# --- argv -> estimate arguments ---------------------------------------------------------------


def test_engine_options_reads_both_spellings_and_the_last_one_wins() -> None:
    argv = ["llama-server", "-c", "4096", "--ctx-size=8192", "-np", "2", "--swa-full", "-no-kvu"]
    assert engine_options(argv) == {
        "context_size": "8192",
        "parallel": "2",
        "swa_full": True,
        "kv_unified": False,
    }


def test_estimate_arguments_follow_the_daemon_argv() -> None:
    argv = [
        "llama-server", "-ngl", "999", "--ctx-size", "2048", "--cache-ram", "512",
        "-ctk", "q8_0", "-ctv", "q8_0", "-fa", "off", "-ub", "256", "-b", "1024",
    ]  # fmt: skip
    on_cpu = estimate_arguments(argv, has_gpu=False)
    assert on_cpu == {
        "context_size": 2048,
        "parallel": -1,
        "cache_type_k": "q8_0",
        "cache_type_v": "q8_0",
        "gpu_layers": 0,  # llama-server ignores -ngl without a GPU
        "flash_attn": False,
        "kv_unified": None,
        "swa_full": False,
        "ubatch_size": 256,
        "batch_size": 1024,
        "prompt_cache_bytes": 512 * MiB,
    }
    assert estimate_arguments(argv, has_gpu=True)["gpu_layers"] == 999
    assert estimate_arguments(["x", "-ngl", "auto"], has_gpu=True)["gpu_layers"] == -1
    # No --cache-ram (the engine's 8 GiB) and -1 (no limit) are not counted.
    assert estimate_arguments(["x"], has_gpu=False)["prompt_cache_bytes"] == 0
    assert estimate_arguments(["x", "-cram", "-1"], has_gpu=False)["prompt_cache_bytes"] == 0
    assert estimate_arguments(["x"], has_gpu=False)["flash_attn"] is True  # auto


def test_plan_matches_a_direct_estimate_of_the_synthetic_model(tmp_path: Path) -> None:
    path = write_llama_model(tmp_path / "m.gguf")
    info = read_gguf(path)
    bundle = bundle_for(path)
    memory = MemoryPlanner(guard=guard())
    plan = memory.plan("sha256:aa", bundle, argv_for(bundle, "--ctx-size", "1024"), SOCKET)
    expected = estimate(
        info,
        context_size=1024,
        weights_bytes=sum(t.n_bytes or 0 for t in info.tensors),
        prompt_cache_bytes=512 * MiB,
    )
    assert plan.estimate == expected
    assert plan.need == expected and plan.learned is None
    assert plan.estimate.ram.prompt_cache == 512 * MiB


def test_plan_reads_every_shard_of_a_sharded_model(tmp_path: Path) -> None:
    shards = write_sharded_model(tmp_path, shards=3)
    (tmp_path / "whole").mkdir()
    whole = write_llama_model(tmp_path / "whole" / "m.gguf")
    memory = MemoryPlanner(guard=guard())
    sharded = memory.plan("sha256:s", bundle_for(shards[0]), ["x", "-c", "512"], SOCKET).estimate
    single = memory.plan("sha256:w", bundle_for(whole), ["x", "-c", "512"], SOCKET).estimate
    assert sharded.weights == single.weights > 0
    assert sharded.kv_cache == single.kv_cache


def test_plan_offloads_to_a_gpu_when_the_probe_reports_one(tmp_path: Path) -> None:
    path = write_llama_model(tmp_path / "m.gguf")
    gpu = GpuInfo(0, "NVIDIA H200", 140 * GiB, 139 * GiB, 1 * GiB)
    bundle = bundle_for(path)
    on_gpu = MemoryPlanner(guard=guard(gpus=[gpu])).plan("sha256:a", bundle, argv_for(bundle), SOCKET)
    on_cpu = MemoryPlanner(guard=guard()).plan("sha256:a", bundle, argv_for(bundle), SOCKET)
    assert on_gpu.estimate.vram_bytes > 0 and on_cpu.estimate.vram_bytes == 0
    assert on_gpu.estimate.vram.weights > 0


def test_unreadable_gguf_counts_the_file_size(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 1000)
    bundle = bundle_for(path)
    plan = MemoryPlanner(guard=guard()).plan("sha256:b", bundle, argv_for(bundle), SOCKET)
    assert plan.estimate.ram.weights == 1004
    assert plan.estimate.ram.prompt_cache == 512 * MiB
    assert plan.estimate.ram.overhead > 0 and plan.estimate.kv_cache == 0


def test_the_gguf_header_is_read_once_per_model(tmp_path: Path) -> None:
    path = write_llama_model(tmp_path / "m.gguf")
    bundle = bundle_for(path)
    memory = MemoryPlanner(guard=guard())
    first = memory.plan("sha256:c", bundle, argv_for(bundle), SOCKET).estimate
    path.write_bytes(b"not gguf any more")
    assert memory.plan("sha256:c", bundle, argv_for(bundle), SOCKET).estimate == first
    memory.forget_model("sha256:c")
    assert memory.plan("sha256:c", bundle, argv_for(bundle), SOCKET).estimate.kv_cache == 0


def test_argv_key_ignores_socket_engine_and_bundle_path() -> None:
    one = ["/a/llama-server", "--model", "/store1/b/model.gguf", "--host", "/run/c1.sock", "-c", "9"]
    two = ["/b/llama-server", "--model", "/store2/b/model.gguf", "--host", "/x/c7.sock", "-c", "9"]
    key_one = argv_key(one, replace={"/store1/b": "<bundle>", "/run/c1.sock": "<socket>"})
    key_two = argv_key(two, replace={"/store2/b": "<bundle>", "/x/c7.sock": "<socket>"})
    assert key_one == key_two
    three = [*one[:-1], "10"]
    assert argv_key(three, replace={"/store1/b": "<bundle>", "/run/c1.sock": "<socket>"}) != key_one


# --- learned footprints -------------------------------------------------------------------


def sample_estimate(ram_mib: int, cache_mib: int = 0) -> MemoryEstimate:
    return MemoryEstimate(
        ram=DeviceMemory(weights=(ram_mib - cache_mib) * MiB, prompt_cache=cache_mib * MiB),
        vram=DeviceMemory(),
        context_size=4096,
        parallel=4,
        kv_unified=True,
        flash_attn=True,
        gpu_layers=0,
        per_token_bytes=0,
    )


def test_learned_need_adds_the_prompt_cache_to_the_ready_footprint() -> None:
    est = sample_estimate(800, cache_mib=512)  # 288 MiB predicted plus a 512 MiB cache
    assert learned_need(est, None) is est
    learned = LearnedFootprint(ready_rss=230 * MiB, max_rss=260 * MiB, samples=2)
    need = learned_need(est, learned)
    assert need.source == "measured"
    assert need.ram_bytes == (230 + 512) * MiB  # larger than the 260 MiB peak
    assert need.ram.prompt_cache == 512 * MiB
    grown = LearnedFootprint(ready_rss=230 * MiB, max_rss=900 * MiB, samples=9)
    assert learned_need(est, grown).ram_bytes == 900 * MiB
    gpu = LearnedFootprint(ready_rss=1, max_rss=1, max_vram=3 * GiB)
    assert learned_need(est, gpu).vram_bytes == 3 * GiB


def test_footprint_store_keeps_the_largest_and_persists_only_growth(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    store = FootprintStore(path)
    first = store.record("sha256:m", "k1", Footprint(rss_bytes=200 * MiB, file_bytes=90 * MiB), ready=True)
    assert (first.ready_rss, first.max_rss, first.samples) == (200 * MiB, 200 * MiB, 1)
    saved = json.loads(path.read_text())
    assert saved["footprints"][0]["model_id"] == "sha256:m"
    assert saved["footprints"][0]["max_rss"] == 200 * MiB
    store.record("sha256:m", "k1", Footprint(rss_bytes=200 * MiB + 10))  # not worth a write
    assert json.loads(path.read_text())["footprints"][0]["samples"] == 1
    later = store.record("sha256:m", "k1", Footprint(rss_bytes=240 * MiB, vram_bytes=GiB))
    assert (later.ready_rss, later.max_rss, later.max_vram, later.samples) == (
        200 * MiB, 240 * MiB, GiB, 3,
    )  # fmt: skip
    store.record("sha256:m", "k1", Footprint(rss_bytes=100 * MiB))  # smaller: max kept
    reopened = FootprintStore(path)
    assert reopened.get("sha256:m", "k1") == LearnedFootprint(
        ready_rss=200 * MiB, max_rss=240 * MiB, file_bytes=0, max_vram=GiB, samples=3,
        updated=later.updated,
    )  # fmt: skip
    assert reopened.get("sha256:m", "other") is None
    assert reopened.forget("sha256:m") == 1
    assert FootprintStore(path).get("sha256:m", "k1") is None


def test_footprint_store_survives_a_corrupt_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "footprints.json"
    path.write_text("{not json")
    store = FootprintStore(path)
    assert store.get("sha256:m", "k") is None
    assert "unreadable" in caplog.text
    store.record("sha256:m", "k", Footprint(rss_bytes=5 * MiB))
    assert FootprintStore(path).get("sha256:m", "k") is not None


def test_plan_uses_the_learned_footprint_of_the_same_argv(tmp_path: Path) -> None:
    path = write_llama_model(tmp_path / "m.gguf")
    bundle = bundle_for(path)
    footprints = FootprintStore(tmp_path / "footprints.json")
    memory = MemoryPlanner(guard=guard(), footprints=footprints, measurer=lambda pid: Footprint(
        rss_bytes=300 * MiB, file_bytes=1 * MiB, pids=(pid,)
    ))
    argv = argv_for(bundle, "--ctx-size", "1024")
    plan = memory.plan("sha256:d", bundle, argv, SOCKET)
    assert plan.need.source == "estimate"
    footprint, learned = memory.measure("sha256:d", plan.key, 4242, ready=True)
    assert footprint is not None and learned is not None and learned.ready_rss == 300 * MiB
    again = MemoryPlanner(guard=guard(), footprints=FootprintStore(tmp_path / "footprints.json"))
    replanned = again.plan("sha256:d", bundle, argv, SOCKET)
    assert replanned.need.source == "measured"
    assert replanned.need.ram_bytes == 300 * MiB + 512 * MiB
    other_ctx = again.plan("sha256:d", bundle, argv_for(bundle, "--ctx-size", "2048"), SOCKET)
    assert other_ctx.need.source == "estimate"


def test_deficit_reads_ram_and_each_gpu_against_its_reserve() -> None:
    tight = GpuInfo(0, "gpu", 24 * GiB, 100 * MiB, 24 * GiB - 100 * MiB)
    roomy = GpuInfo(1, "gpu", 24 * GiB, 20 * GiB, 4 * GiB)
    memory = MemoryPlanner(guard=guard(gpus=[tight, roomy], available=5 * GiB))
    ram, vram = memory.deficit()
    assert ram == int(6.4 * GiB) - 5 * GiB  # default reserve: 10 % of 64 GiB
    assert vram == 512 * MiB - 100 * MiB
    assert MemoryPlanner(guard=guard()).deficit() == (0, 0)


# --- the prompt cache, sized per model -----------------------------------------------------------


def _kv_estimate(ram_kv_mib: int, vram_kv_mib: int = 0) -> MemoryEstimate:
    return MemoryEstimate(
        ram=DeviceMemory(weights=92 * MiB, kv_cache=ram_kv_mib * MiB),
        vram=DeviceMemory(kv_cache=vram_kv_mib * MiB),
        context_size=8192, parallel=4, kv_unified=True, flash_attn=True, gpu_layers=0,
        per_token_bytes=0,
    )  # fmt: skip


def test_prompt_cache_is_half_the_kv_cache_at_most_the_ceiling() -> None:
    assert prompt_cache_mib_for(_kv_estimate(180), 512) == 90  # SmolLM2 at ctx 8192
    assert prompt_cache_mib_for(_kv_estimate(90), 512) == 45  # ... at ctx 4096
    assert prompt_cache_mib_for(_kv_estimate(100, 60), 512) == 80  # KV offloaded to a GPU counts
    assert prompt_cache_mib_for(_kv_estimate(4000), 512) == 512  # DMR_PROMPT_CACHE_MIB caps it
    assert prompt_cache_mib_for(_kv_estimate(1), 512) == 1  # rounded up, never 0 (= off)
    assert prompt_cache_mib_for(_kv_estimate(180), 0) == 0  # off stays off
    assert prompt_cache_mib_for(_kv_estimate(180), -1) == -1  # the engine's default stays
    assert prompt_cache_mib_for(_kv_estimate(0), 512) == 512  # KV unknown: the ceiling


def _planner(
    tmp_path: Path, prompt_cache_mib: int = 512, memory_guard: MemoryGuard | None = None
) -> tuple[LaunchPlanner, StubRecord, RunnerConfigStore]:
    """A launch planner over a store holding one synthetic llama model (8 layers, ctx 4096)."""
    store = StubStore(tmp_path / "store")
    model = write_llama_model(tmp_path / "m.gguf", n_layers=8)
    record = store.add(model, tags=("ai/m:latest",), config={"context_size": 4096})
    configs = RunnerConfigStore(tmp_path / "store" / "runner-configs.json")
    planner = LaunchPlanner(
        config=Config(prompt_cache_mib=prompt_cache_mib),
        store=store,
        configs=configs,
        memory=MemoryPlanner(guard=memory_guard or guard()),
        crashes=CrashMemory(Path("/opt/llama-server")),
        engine_path=Path("/opt/llama-server"),
        runners_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
    )
    return planner, record, configs


def test_a_runner_gets_and_is_counted_with_the_prompt_cache_of_its_kv_size(tmp_path: Path) -> None:
    planner, record, _ = _planner(tmp_path)
    plan = planner.plan(record, "completion")
    kv = plan.memory.estimate.kv_cache
    sized = math.ceil(kv / 2 / MiB)
    assert 0 < sized < 512
    options = engine_options(plan.argv)
    assert options["cache_ram"] == str(sized)  # what the engine is told ...
    assert plan.memory.estimate.ram.prompt_cache == sized * MiB  # ... is what admission counts
    assert plan.argv.count("--cache-ram") == 1


def test_a_prompt_cache_set_by_the_user_wins_and_is_counted(tmp_path: Path) -> None:
    planner, record, configs = _planner(tmp_path, prompt_cache_mib=0)
    assert planner.plan(record, "completion").memory.estimate.ram.prompt_cache == 0  # off
    configs.put(record.id, RunnerSettings(runtime_flags=("--cache-ram", "64")))
    plan = planner.plan(record, "completion")
    assert engine_options(plan.argv)["cache_ram"] == "64"
    assert plan.memory.estimate.ram.prompt_cache == 64 * MiB


# --- partial offload when the model is larger than the GPU memory -------------------------------


def _gpu_guard(max_vram: int) -> MemoryGuard:
    """A guard over a 64 GiB host and one 24 GiB GPU whose runners may use ``max_vram``."""
    gpu = GpuInfo(0, "gpu", 24 * GiB, 23 * GiB, 1 * GiB)
    return MemoryGuard(
        ram_probe=lambda: RamReading(64 * GiB, 60 * GiB), gpu_probe=lambda: [gpu],
        max_vram_bytes=max_vram,
    )  # fmt: skip


def _vram_at(tmp_path: Path, layers: int) -> int:
    """VRAM the synthetic model needs with ``layers`` offloaded (its argv's ``-ngl``)."""
    planner, record, configs = _planner(tmp_path / f"probe{layers}", memory_guard=_gpu_guard(0))
    configs.put(record.id, RunnerSettings(runtime_flags=("-ngl", str(layers))))
    return planner.plan(record, "completion").memory.estimate.vram_bytes


def test_a_model_that_fits_the_gpu_gets_every_layer(tmp_path: Path) -> None:
    planner, record, _ = _planner(tmp_path, memory_guard=_gpu_guard(0))  # 24 GiB less reserve
    plan = planner.plan(record, "completion")
    assert engine_options(plan.argv)["gpu_layers"] == "999"
    assert plan.memory.estimate.gpu_layers == 9  # 8 blocks and the output layer


def test_a_model_larger_than_the_gpu_gets_the_layers_that_fit(tmp_path: Path) -> None:
    """Between the VRAM of 5 and 6 offloaded layers, 5 go to the GPU and the rest stay on the CPU."""
    five, six = _vram_at(tmp_path, 5), _vram_at(tmp_path, 6)
    assert 0 < five < six
    planner, record, _ = _planner(tmp_path / "real", memory_guard=_gpu_guard((five + six) // 2))
    plan = planner.plan(record, "completion")
    assert engine_options(plan.argv)["gpu_layers"] == "5"
    assert plan.argv.count("-ngl") == 1
    assert plan.memory.estimate.gpu_layers == 5 and plan.memory.estimate.vram_bytes == five
    assert plan.memory.estimate.ram.weights > 0  # the other layers' weights are in RAM


def test_a_gpu_too_small_for_one_layer_runs_the_model_on_the_cpu(tmp_path: Path) -> None:
    planner, record, _ = _planner(tmp_path, memory_guard=_gpu_guard(_vram_at(tmp_path, 1) - 1))
    plan = planner.plan(record, "completion")
    assert engine_options(plan.argv)["gpu_layers"] == "0" and plan.memory.estimate.vram_bytes == 0


def test_the_users_gpu_layers_are_kept_even_when_they_do_not_fit(tmp_path: Path) -> None:
    planner, record, configs = _planner(tmp_path, memory_guard=_gpu_guard(_vram_at(tmp_path, 1)))
    configs.put(record.id, RunnerSettings(runtime_flags=("--n-gpu-layers", "7")))
    plan = planner.plan(record, "completion")
    assert engine_options(plan.argv)["gpu_layers"] == "7"  # the guard then says it cannot fit
    assert "-ngl" in plan.argv and plan.argv[plan.argv.index("-ngl") + 1] == "999"


def test_warm_reads_each_header_once_and_plans_then_reuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.gguf as gguf_module

    path = write_llama_model(tmp_path / "w.gguf")
    reads: list[tuple[Path, int | None]] = []
    real_read = gguf_module.read_gguf

    def counting_read(p: Path, *, max_array_elements: int | None = None) -> object:
        reads.append((Path(p), max_array_elements))
        return real_read(p, max_array_elements=max_array_elements)

    monkeypatch.setattr(gguf_module, "read_gguf", counting_read)
    probed: list[int] = []
    memory = MemoryPlanner(
        guard=MemoryGuard(
            ram_probe=lambda: RamReading(64 * GiB, 60 * GiB),
            gpu_probe=lambda: probed.append(1) or [],
        )
    )
    memory.warm([("sha256:w", path), ("sha256:w", path)])
    assert probed == [1] and reads == [(path, 4096)]  # the vocabulary is not decoded
    memory.plan("sha256:w", bundle_for(path), argv_for(bundle_for(path)), SOCKET)
    assert len(reads) == 1 and probed == [1]


def test_warm_reads_nothing_for_an_injected_estimator(tmp_path: Path) -> None:
    def estimator(model_id: str, bundle: object, argv: object) -> MemoryEstimate:
        raise AssertionError("warm must not estimate")

    memory = MemoryPlanner(guard=guard(), estimator=estimator)  # type: ignore[arg-type]
    memory.warm([("sha256:x", tmp_path / "missing.gguf")])


def test_recent_models_are_ordered_by_their_latest_measurement(tmp_path: Path) -> None:
    footprints = FootprintStore(tmp_path / "footprints.json")
    for model_id in ("sha256:old", "sha256:new"):
        footprints.record(model_id, "k", Footprint(rss_bytes=10 * MiB))
    footprints.record("sha256:old", "k2", Footprint(rss_bytes=20 * MiB))
    assert footprints.recent_models() == ["sha256:old", "sha256:new"]
    assert FootprintStore(tmp_path / "none.json").recent_models() == []

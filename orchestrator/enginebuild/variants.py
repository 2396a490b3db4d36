"""The ladder of CPU build variants the provisioner tries, most specific first.

``GGML_NATIVE=ON`` compiles for every instruction set the build machine *advertises*. That is the
fastest build where the CPU really executes them, and a crash where it does not: some cloud VMs
advertise AMX (``amx_tile``) while the hypervisor traps tile instructions, so the first matrix
multiply dies with SIGILL. Each rung below drops the most exotic instruction set of the one above,
spelled out with ggml's own switches (``GGML_NATIVE=OFF`` plus ``GGML_AVX512=ON`` and so on), so
the next build keeps everything the CPU really runs:

    native -> no-amx -> no-avx512 -> x86-64-v3 (AVX2/FMA/F16C/BMI2) -> x86-64-v2 (SSE4.2 only)

Rungs that would build the same thing as the one above (a CPU without AMX has no ``no-amx``
rung) are left out. Only ggml's CPU library takes these flags (``ggml/src/ggml-cpu``), so with
ccache a lower rung recompiles that library alone.

Not chosen: llama.cpp's runtime-dispatched variants (``GGML_BACKEND_DL`` +
``GGML_CPU_ALL_VARIANTS``). They pick a variant by CPUID, i.e. by what the CPU advertises, so on
a CPU that advertises AMX but traps it they load the AMX variant and die the same way; they also
need shared libraries beside the binary. Measured on a VM that advertises AMX and traps it
(``bench/engine_variants.py``, SmolLM2-135M Q4_1, 128 tokens, medians of 5): ``native`` died with
SIGSEGV (``ldtilecfg``); the all-variants build loaded ``libggml-cpu-sapphirerapids.so`` and died
with SIGILL (``tilezero``); ``native --no-repack`` generated 89.9 tokens/s; ``no-amx`` 94.2.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from orchestrator.enginebuild.build_records import CpuIdentity

# /proc/cpuinfo flag -> ggml's CMake switch for it (ggml/CMakeLists.txt), in ggml's order.
X86_SWITCHES: tuple[tuple[str, str], ...] = (
    ("sse4_2", "GGML_SSE42"),
    ("avx", "GGML_AVX"),
    ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx2", "GGML_AVX2"),
    ("bmi2", "GGML_BMI2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("avx512f", "GGML_AVX512"),
    ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"),
    ("avx512_bf16", "GGML_AVX512_BF16"),
    ("amx_tile", "GGML_AMX_TILE"),
    ("amx_int8", "GGML_AMX_INT8"),
    ("amx_bf16", "GGML_AMX_BF16"),
)
AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
AVX512_FLAGS = frozenset({"avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16"})
X86_64_V3_FLAGS = frozenset({"sse4_2", "avx", "avx2", "bmi2", "fma", "f16c"})
X86_64_V2_FLAGS = frozenset({"sse4_2"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i686", "i386"})


@dataclass(frozen=True)
class Variant:
    """One way to compile ggml's CPU code.

    Attributes:
        name: Short name; part of the cache directory's name (``native``, ``no-amx``, ...).
        cmake_args: The ``-D`` switches that make it, on top of the common ones.
        summary: What it leaves out, for messages.
    """

    name: str
    cmake_args: tuple[str, ...]
    summary: str


NATIVE = Variant("native", ("-DGGML_NATIVE=ON",), "every instruction set this CPU advertises")
GENERIC = Variant("generic", ("-DGGML_NATIVE=OFF",), "the architecture's baseline")


def explicit_variant(name: str, flags: frozenset[str], summary: str) -> Variant:
    """Return a ``GGML_NATIVE=OFF`` variant that switches on exactly ``flags`` (cpuinfo names)."""
    args = ["-DGGML_NATIVE=OFF"]
    args += [f"-D{switch}={'ON' if flag in flags else 'OFF'}" for flag, switch in X86_SWITCHES]
    return Variant(name, tuple(args), summary)


def ladder(cpu: CpuIdentity, machine: str | None = None) -> list[Variant]:
    """Return the variants to try on ``cpu``, best first, without duplicates.

    Args:
        cpu: The CPU's advertised flags (:func:`records.this_cpu`).
        machine: ``platform.machine()`` (injectable for tests).
    """
    arch = (machine or platform.machine()).lower()
    if arch not in X86_MACHINES:
        # ggml's other architectures have no per-extension switches: native, else generic.
        return [NATIVE, GENERIC]
    known = frozenset(flag for flag, _ in X86_SWITCHES)
    advertised = cpu.flags & known
    rungs = [
        NATIVE,
        explicit_variant(
            "no-amx", advertised - AMX_FLAGS, "everything this CPU advertises except AMX"
        ),
        explicit_variant(
            "no-avx512",
            advertised - AMX_FLAGS - AVX512_FLAGS,
            "everything this CPU advertises except AMX and AVX-512",
        ),
        explicit_variant(
            "x86-64-v3", advertised & X86_64_V3_FLAGS, "AVX2, FMA, F16C and BMI2 (x86-64-v3)"
        ),
        explicit_variant("x86-64-v2", advertised & X86_64_V2_FLAGS, "SSE4.2 only (x86-64-v2)"),
    ]
    chosen: list[Variant] = [NATIVE]
    seen_flags: set[tuple[str, ...]] = {_explicit_flags(advertised)}  # what native compiles
    for rung in rungs[1:]:
        flags = rung.cmake_args
        if flags in seen_flags:
            continue
        seen_flags.add(flags)
        chosen.append(rung)
    return chosen


def _explicit_flags(flags: frozenset[str]) -> tuple[str, ...]:
    return explicit_variant("", flags, "").cmake_args


def portable_ladder(machine: str | None = None) -> list[Variant]:
    """Return fixed x86-64-v3 then x86-64-v2 variants, whatever this CPU advertises.

    For builds meant to run elsewhere: the CUDA engine built on a machine without a GPU and
    carried to one, where the GPU does the heavy work anyway.
    """
    arch = (machine or platform.machine()).lower()
    if arch not in X86_MACHINES:
        return [GENERIC]
    return [
        explicit_variant("x86-64-v3", X86_64_V3_FLAGS, "AVX2, FMA, F16C and BMI2 (x86-64-v3)"),
        explicit_variant("x86-64-v2", X86_64_V2_FLAGS, "SSE4.2 only (x86-64-v2)"),
    ]

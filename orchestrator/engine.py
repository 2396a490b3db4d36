"""Choose the llama-server the runners start, and say which one it is.

Search order (README documents it):

1. the ``LLAMA_SERVER_PATH`` directory, when set: the user's choice, used as it is;
2. when NVML sees an NVIDIA GPU, a CUDA build ``bin/provision-engine --cuda`` proved on this
   machine, then the packaged one in ``/usr/libexec/docker-model-runner/cuda``;
3. a CPU build ``bin/provision-engine`` proved on this machine (``engine.json`` records each
   machine a build generated tokens on; a cache copied from another host is not used until the
   provisioner proves it here);
4. ``llama-server`` on ``PATH`` (the packaged CPU engine: the unit puts
   ``/usr/libexec/docker-model-runner`` there).

A miss names every place and what to run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.enginebuild.build_records import (
    FLAVOR_CPU,
    FLAVOR_CUDA,
    CachedBuild,
    cached_builds,
    engine_cache_root,
    proven_here,
    read_record,
    this_cpu,
)
from orchestrator.errors import EngineNotFoundError

ENGINE_NAME = "llama-server"
PACKAGED_CUDA_DIR = Path("/usr/libexec/docker-model-runner/cuda")

GpuLister = Callable[[], list[str]]
"""Returns one line per NVIDIA GPU (``"GPU 0: NVIDIA H200, 139.8 GiB"``); empty when none."""

__all__ = ["EngineChoice", "choose_engine", "engine_cache_root", "find_engine", "nvml_gpus"]


@dataclass(frozen=True)
class EngineChoice:
    """The engine the daemon runs, and how it was chosen.

    Attributes:
        path: The llama-server executable.
        flavor: ``cpu`` or ``cuda`` (``cpu`` when unknown).
        variant: Build variant (``native``, ``no-amx``, ...) or where it came from.
        source: ``LLAMA_SERVER_PATH``, ``build cache``, ``package`` or ``PATH``.
        devices: What it computes on, for people.
    """

    path: Path
    flavor: str
    variant: str
    source: str
    devices: tuple[str, ...]

    def describe(self) -> str:
        """Return ``CPU engine no-amx (build cache) on CPU: Intel(R) Xeon(R) Processor``."""
        return (
            f"{self.flavor.upper()} engine {self.variant} ({self.source}) on "
            + "; ".join(self.devices)
        )


def nvml_gpus() -> list[str]:
    """Return the GPUs NVML sees (none without nvidia-ml-py, a driver or a GPU)."""
    from orchestrator.memory.nvml import NvmlProbe

    probe = NvmlProbe()
    try:
        return [
            f"GPU {gpu.index}: {gpu.name}, {gpu.total_bytes / 2**30:.1f} GiB"
            for gpu in probe.gpus()
        ]
    finally:
        probe.close()


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _cpu_device() -> str:
    cpu = this_cpu()
    return f"CPU: {cpu.model_name or 'unknown model'}"


def _from_build(build: CachedBuild, devices: tuple[str, ...]) -> EngineChoice:
    return EngineChoice(
        path=build.server, flavor=build.record.flavor, variant=build.record.variant,
        source="build cache", devices=devices,
    )


def choose_engine(
    llama_server_path: str = "",
    environ: Mapping[str, str] | None = None,
    *,
    gpus: GpuLister | None = None,
    packaged_cuda_dir: Path = PACKAGED_CUDA_DIR,
) -> EngineChoice:
    """Return the engine to run (see the module docstring for the order).

    Args:
        llama_server_path: Directory configured through ``LLAMA_SERVER_PATH`` (may be empty).
        environ: Environment to read (default ``os.environ``).
        gpus: Lists NVIDIA GPUs (default: NVML); injectable for tests.
        packaged_cuda_dir: Where the CUDA engine package installs llama-server.

    Raises:
        EngineNotFoundError: No executable in any of the places.
    """
    env = os.environ if environ is None else environ
    cpu = (_cpu_device(),)
    if llama_server_path:
        directory = Path(llama_server_path).expanduser()
        candidate = directory / ENGINE_NAME
        if not _executable(candidate):
            raise EngineNotFoundError(
                f"LLAMA_SERVER_PATH is {llama_server_path!r} but it holds no executable "
                f"{ENGINE_NAME!r}; point it at the directory that contains llama-server"
            )
        record = read_record(directory)
        return EngineChoice(
            path=candidate,
            flavor=record.flavor if record else FLAVOR_CPU,
            variant=record.variant if record else "configured",
            source="LLAMA_SERVER_PATH",
            devices=cpu,
        )
    cache_root = engine_cache_root(env)
    builds = cached_builds(cache_root)
    gpu_lines = tuple((gpus or nvml_gpus)())
    if gpu_lines:
        devices = gpu_lines + cpu
        cuda = proven_here([build for build in builds if build.record.flavor == FLAVOR_CUDA])
        if cuda:
            return _from_build(cuda[0], devices)
        if _executable(packaged_cuda_dir / ENGINE_NAME):
            return EngineChoice(
                path=packaged_cuda_dir / ENGINE_NAME, flavor=FLAVOR_CUDA, variant="packaged",
                source="package", devices=devices,
            )
    cpu_builds = proven_here([build for build in builds if build.record.flavor == FLAVOR_CPU])
    if cpu_builds:
        return _from_build(cpu_builds[0], cpu)
    on_path = shutil.which(ENGINE_NAME, path=env.get("PATH"))
    if on_path:
        return EngineChoice(
            path=Path(on_path), flavor=FLAVOR_CPU, variant="from PATH", source="PATH", devices=cpu
        )
    unproven = (
        f" (it holds {len(builds)} build(s) not proven on this machine: run bin/provision-engine "
        f"to prove them here)"
        if builds
        else ""
    )
    raise EngineNotFoundError(
        f"llama-server was not found: LLAMA_SERVER_PATH is not set, the build cache "
        f"{str(cache_root)!r} holds no build proven on this machine{unproven}, and it is not on "
        f"PATH; run `make engine` (bin/provision-engine) or set LLAMA_SERVER_PATH to its directory"
    )


def find_engine(
    llama_server_path: str = "",
    environ: Mapping[str, str] | None = None,
    *,
    gpus: GpuLister | None = None,
) -> Path:
    """Return the path of the llama-server executable to run (see :func:`choose_engine`)."""
    return choose_engine(llama_server_path, environ, gpus=gpus).path

"""Optional NVIDIA GPU probe through NVML (the ``pynvml`` module of ``nvidia-ml-py``).

Nothing here is required: without the module, without a driver, or on a machine with no NVIDIA
GPU, every query returns an empty list and the reason is logged once. The memory guard then
budgets RAM only. The module object is injectable so tests run with a fake one.

NVML reports host PIDs. Inside a container without the host PID namespace the per-process
figures cannot be matched to our runners; :meth:`NvmlProbe.process_vram_bytes` then reports 0
and the estimate stays in use.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it.

    Attributes:
        index: NVML device index (the order CUDA uses unless ``CUDA_VISIBLE_DEVICES`` reorders).
        name: Product name, e.g. ``NVIDIA H200``.
        total_bytes: Device memory.
        free_bytes: Memory no process holds.
        used_bytes: Memory in use (all processes plus the driver's own).
        uuid: Stable identifier (``GPU-...``), ``""`` when NVML does not give one.
    """

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    uuid: str = ""


@dataclasses.dataclass(frozen=True)
class GpuProcess:
    """Device memory one process holds on one GPU.

    Attributes:
        gpu_index: NVML device index.
        pid: Host process id.
        used_bytes: Device memory the process holds (0 when NVML cannot tell).
    """

    gpu_index: int
    pid: int
    used_bytes: int


def _text(value: object) -> str:
    # NOTE(memory): nvidia-ml-py before 11.5 returned bytes for names and UUIDs.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class NvmlProbe:
    """Query GPUs and per-process GPU memory; empty answers when NVML is unusable.

    NVML is initialised on first use and kept initialised until :meth:`close`. A failed
    initialisation is not retried: the answer for this process is "no GPUs" with
    :attr:`reason` saying why, logged once.

    Args:
        module: A ``pynvml``-like module object; ``None`` imports ``pynvml`` when first needed.
    """

    def __init__(self, module: Any | None = None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._initialised = False
        self._failed = False
        self.reason = ""

    def _error_types(self, module: Any) -> tuple[type[BaseException], ...]:
        nvml_error = getattr(module, "NVMLError", None)
        if isinstance(nvml_error, type) and issubclass(nvml_error, BaseException):
            return (nvml_error, OSError)
        return (OSError,)

    def _disable(self, reason: str) -> None:
        self._failed = True
        self.reason = reason
        log.info("gpu memory budget disabled reason=%s", reason)

    def _ready(self) -> Any | None:
        """Return the initialised module, or ``None`` (reason set and logged once)."""
        with self._lock:
            if self._initialised:
                return self._module
            if self._failed:
                return None
            if self._module is None:
                try:
                    self._module = importlib.import_module("pynvml")
                except ImportError:
                    self._disable("the pynvml module (package nvidia-ml-py) is not installed")
                    return None
            try:
                self._module.nvmlInit()
            except self._error_types(self._module) as ex:
                # NOTE(memory): no driver, no libnvidia-ml.so.1 or no GPU all end here; the
                # host is then CPU-only for budgeting, which is the safe reading.
                self._disable(f"NVML could not start: {ex}")
                return None
            self._initialised = True
            return self._module

    @property
    def is_available(self) -> bool:
        """Return whether NVML answered (initialising it if needed)."""
        return self._ready() is not None

    def gpus(self) -> list[GpuInfo]:
        """Return every GPU with its memory figures, or ``[]`` when NVML is unusable."""
        module = self._ready()
        if module is None:
            return []
        found: list[GpuInfo] = []
        try:
            count = int(module.nvmlDeviceGetCount())
            for index in range(count):
                handle = module.nvmlDeviceGetHandleByIndex(index)
                memory = module.nvmlDeviceGetMemoryInfo(handle)
                found.append(
                    GpuInfo(
                        index=index,
                        name=_text(module.nvmlDeviceGetName(handle)),
                        total_bytes=int(memory.total),
                        free_bytes=int(memory.free),
                        used_bytes=int(memory.used),
                        uuid=self._uuid(module, handle),
                    )
                )
        except self._error_types(module) as ex:
            log.warning("gpu query failed reason=%s", ex)
            return []
        return found

    def _uuid(self, module: Any, handle: Any) -> str:
        getter = getattr(module, "nvmlDeviceGetUUID", None)
        if getter is None:
            return ""
        try:
            return _text(getter(handle))
        except self._error_types(module):
            return ""

    def processes(self) -> list[GpuProcess]:
        """Return the compute processes on every GPU with their memory, or ``[]``."""
        module = self._ready()
        if module is None:
            return []
        found: list[GpuProcess] = []
        try:
            count = int(module.nvmlDeviceGetCount())
            for index in range(count):
                handle = module.nvmlDeviceGetHandleByIndex(index)
                for entry in module.nvmlDeviceGetComputeRunningProcesses(handle):
                    # NOTE(memory): usedGpuMemory is None where the driver cannot attribute
                    # memory to a process (some containers, WDDM); count it as unknown (0).
                    used = getattr(entry, "usedGpuMemory", None)
                    found.append(GpuProcess(index, int(entry.pid), int(used) if used else 0))
        except self._error_types(module) as ex:
            log.warning("gpu process query failed reason=%s", ex)
            return []
        return found

    def process_vram_bytes(self, pids: Iterable[int]) -> dict[int, int]:
        """Return the device memory the given processes hold, by GPU index (none: omitted)."""
        wanted = set(pids)
        per_gpu: dict[int, int] = {}
        for entry in self.processes():
            if entry.pid in wanted and entry.used_bytes:
                per_gpu[entry.gpu_index] = per_gpu.get(entry.gpu_index, 0) + entry.used_bytes
        return per_gpu

    def close(self) -> None:
        """Shut NVML down if this probe started it."""
        with self._lock:
            if not self._initialised:
                return
            self._initialised = False
            module = self._module
            if module is None:
                return
            try:
                module.nvmlShutdown()
            except self._error_types(module) as ex:
                log.debug("nvml shutdown failed reason=%s", ex)

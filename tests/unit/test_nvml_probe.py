"""The optional NVML probe, driven by a fake ``pynvml`` module (no GPU needed)."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.memory.footprint import measure_footprint
from orchestrator.memory.nvml import GpuInfo, GpuProcess, NvmlProbe

GiB = 1024**3


class FakeNVMLError(Exception):
    """Stands in for ``pynvml.NVMLError``."""


@dataclass
class FakeMemory:
    total: int
    free: int
    used: int


@dataclass
class FakeProcess:
    pid: int
    usedGpuMemory: int | None  # noqa: N815 - pynvml's attribute name


@dataclass
class FakeDevice:
    name: Any
    memory: FakeMemory
    processes: list[FakeProcess] = field(default_factory=list)
    uuid: Any = "GPU-0000"


class FakeNvml:
    """The handful of pynvml calls the probe makes, over a list of fake devices."""

    NVMLError = FakeNVMLError

    def __init__(self, devices: list[FakeDevice], *, init_error: str = "") -> None:
        self.devices = devices
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0
        self.fail_queries = False

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.init_calls += 1
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        if self.fail_queries:
            raise FakeNVMLError("GPU is lost")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:  # noqa: N802
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: FakeDevice) -> Any:  # noqa: N802
        return handle.name

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> Any:  # noqa: N802
        return handle.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> FakeMemory:  # noqa: N802
        return handle.memory

    def nvmlDeviceGetComputeRunningProcesses(  # noqa: N802
        self, handle: FakeDevice
    ) -> list[FakeProcess]:
        return handle.processes


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeDevice(
                "NVIDIA H200",
                FakeMemory(total=140 * GiB, free=100 * GiB, used=40 * GiB),
                [FakeProcess(1001, 30 * GiB), FakeProcess(1002, None)],
                uuid="GPU-aaaa",
            ),
            FakeDevice(
                b"Tesla T4",  # old nvidia-ml-py returned bytes
                FakeMemory(total=16 * GiB, free=15 * GiB, used=1 * GiB),
                [FakeProcess(1001, 2 * GiB), FakeProcess(2002, 1 * GiB)],
                uuid=b"GPU-bbbb",
            ),
        ]
    )


def test_gpus_are_listed_with_memory_figures() -> None:
    probe = NvmlProbe(two_gpus())
    assert probe.gpus() == [
        GpuInfo(0, "NVIDIA H200", 140 * GiB, 100 * GiB, 40 * GiB, "GPU-aaaa"),
        GpuInfo(1, "Tesla T4", 16 * GiB, 15 * GiB, 1 * GiB, "GPU-bbbb"),
    ]
    assert probe.is_available


def test_nvml_is_initialised_once_and_shut_down_on_close() -> None:
    module = two_gpus()
    probe = NvmlProbe(module)
    probe.gpus()
    probe.processes()
    assert module.init_calls == 1
    probe.close()
    probe.close()
    assert module.shutdown_calls == 1


def test_processes_and_per_process_vram() -> None:
    probe = NvmlProbe(two_gpus())
    assert probe.processes() == [
        GpuProcess(0, 1001, 30 * GiB),
        GpuProcess(0, 1002, 0),  # usedGpuMemory None: unknown, counted as 0
        GpuProcess(1, 1001, 2 * GiB),
        GpuProcess(1, 2002, 1 * GiB),
    ]
    assert probe.process_vram_bytes([1001]) == {0: 30 * GiB, 1: 2 * GiB}
    assert probe.process_vram_bytes([1001, 2002]) == {0: 30 * GiB, 1: 3 * GiB}
    assert probe.process_vram_bytes([1002, 4242]) == {}


def test_init_failure_means_no_gpus_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    module = FakeNvml([], init_error="Driver Not Loaded")
    probe = NvmlProbe(module)
    with caplog.at_level(logging.INFO, logger="orchestrator.memory.nvml"):
        assert probe.gpus() == []
        assert probe.processes() == []
        assert probe.process_vram_bytes([1]) == {}
        assert not probe.is_available
    assert module.init_calls == 1  # not retried
    assert "Driver Not Loaded" in probe.reason
    assert sum("gpu memory budget disabled" in r.getMessage() for r in caplog.records) == 1


def test_missing_pynvml_module_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTE(test): None in sys.modules makes "import pynvml" raise ImportError, even where
    # nvidia-ml-py happens to be installed.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe = NvmlProbe()
    assert probe.gpus() == []
    assert "nvidia-ml-py" in probe.reason


def test_pynvml_is_imported_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    module = two_gpus()
    fake = types.ModuleType("pynvml")
    for name in dir(module):
        if name.startswith("nvml") or name == "NVMLError":
            setattr(fake, name, getattr(module, name))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert [gpu.name for gpu in NvmlProbe().gpus()] == ["NVIDIA H200", "Tesla T4"]


def test_query_failure_after_init_returns_empty(caplog: pytest.LogCaptureFixture) -> None:
    module = two_gpus()
    probe = NvmlProbe(module)
    assert len(probe.gpus()) == 2
    module.fail_queries = True
    with caplog.at_level(logging.WARNING, logger="orchestrator.memory.nvml"):
        assert probe.gpus() == []
        assert probe.processes() == []
    assert "GPU is lost" in caplog.text


def test_module_without_nvml_error_class_still_handles_os_errors() -> None:
    class Bare:
        def nvmlInit(self) -> None:  # noqa: N802
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    probe = NvmlProbe(Bare())
    assert probe.gpus() == []
    assert "libnvidia-ml" in probe.reason


def test_footprint_reads_vram_of_the_process_tree_through_the_probe() -> None:
    import os

    me = os.getpid()
    module = FakeNvml(
        [FakeDevice("GPU", FakeMemory(8 * GiB, 4 * GiB, 4 * GiB), [FakeProcess(me, 3 * GiB)])]
    )
    footprint = measure_footprint(me, nvml=NvmlProbe(module))
    assert footprint is not None
    assert footprint.vram_bytes == 3 * GiB
    assert footprint.vram_by_gpu == {0: 3 * GiB}
    assert footprint.rss_bytes > 0
    assert me in footprint.pids

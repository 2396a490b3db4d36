"""What a running runner really holds: RSS of its process tree and its GPU memory.

Measured after the runner is ready and again after it has served, the footprint replaces the
estimate for admission (an estimate is a prediction; this is the fact). RSS counts the model's
memory-mapped weights only for pages touched so far, and a llama-server that has served grows
by its prompt cache, so a footprint taken later is larger; callers keep the largest seen.
"""

from __future__ import annotations

import dataclasses
import logging

import psutil

from orchestrator.memory.nvml import NvmlProbe

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Memory one runner holds, measured.

    Attributes:
        rss_bytes: Resident memory of the process and all its descendants.
        file_bytes: Part of ``rss_bytes`` backed by files (mapped weights, libraries); the
            kernel counts it as available memory even while mapped.
        vram_bytes: GPU memory of the process tree, summed over GPUs (0 without NVML).
        vram_by_gpu: GPU memory per NVML device index.
        pids: The processes measured.
    """

    rss_bytes: int
    file_bytes: int = 0
    vram_bytes: int = 0
    vram_by_gpu: dict[int, int] = dataclasses.field(default_factory=dict, hash=False)
    pids: tuple[int, ...] = ()

    @property
    def anon_bytes(self) -> int:
        """Return the resident memory not backed by files (KV cache, buffers, heap)."""
        return max(self.rss_bytes - self.file_bytes, 0)

    def to_dict(self) -> dict[str, int]:
        """Return the figures for ``/engines/ps`` (bytes)."""
        return {
            "rss": self.rss_bytes,
            "file": self.file_bytes,
            "anon": self.anon_bytes,
            "vram": self.vram_bytes,
        }


def measure_footprint(pid: int, *, nvml: NvmlProbe | None = None) -> Footprint | None:
    """Measure the RSS (with children) and GPU memory of process ``pid``.

    Args:
        pid: The runner's process id (the group leader for llama-server).
        nvml: GPU probe; ``None`` measures RAM only.

    Returns:
        The footprint, or ``None`` when the process no longer exists.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied as ex:
        log.warning("footprint not measurable pid=%d reason=%s", pid, ex)
        return None
    rss = file_backed = 0
    measured: list[int] = []
    for process in processes:
        try:
            info = process.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            # NOTE(memory): a child that exited between listing and reading holds nothing.
            if process is root:
                return None
            continue
        rss += int(info.rss)
        # On Linux "shared" is RssFile + RssShmem: the file-backed pages.
        file_backed += int(getattr(info, "shared", 0))
        measured.append(process.pid)
    vram_by_gpu = nvml.process_vram_bytes(measured) if nvml is not None else {}
    return Footprint(
        rss_bytes=rss,
        file_bytes=min(file_backed, rss),
        vram_bytes=sum(vram_by_gpu.values()),
        vram_by_gpu=vram_by_gpu,
        pids=tuple(measured),
    )

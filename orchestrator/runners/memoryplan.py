"""Memory planning for the scheduler: what a runner will need, what it holds, measuring it.

The scheduler asks :class:`MemoryPlanner` three things:

* :meth:`MemoryPlanner.plan` — before a runner starts: its estimate (from the GGUF header, read
  once per model, and the argv the runner will get: context, slots, cache types, offload,
  ``--cache-ram``), the learned footprint of an earlier run with the same argv, and the need
  admission counts (the learned footprint when there is one, else the estimate).
* :meth:`MemoryPlanner.measure` — after the runner is ready and after it has served: its RSS
  (process tree) and VRAM, folded into the learned footprint in ``<store>/footprints.json``.
* :meth:`MemoryPlanner.deficit` — for the pressure sampler: how far free RAM and VRAM are
  below their reserves.

The decisions themselves are :class:`orchestrator.memory.guard.MemoryGuard`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.memory.draft import add_draft
from orchestrator.memory.estimate import (
    AUTO_PARALLEL_SLOTS,
    RAM_OVERHEAD_BYTES,
    DeviceMemory,
    MemoryEstimate,
    estimate,
)
from orchestrator.memory.footprint import Footprint, measure_footprint
from orchestrator.memory.guard import MemoryGuard, system_ram
from orchestrator.memory.learned import (
    FILE_NAME as FOOTPRINTS_FILE_NAME,
)
from orchestrator.memory.learned import (
    FootprintStore,
    LearnedFootprint,
    argv_key,
    learned_need,
)
from orchestrator.memory.nvml import NvmlProbe
from orchestrator.memory.sizes import MiB
from orchestrator.runners.engineflags import engine_options, rpc_endpoints
from orchestrator.runners.llamacpp import BundleLike
from orchestrator.runners.rpc import RpcWorkers
from orchestrator.settings import Config

log = logging.getLogger(__name__)


def _as_int(value: str | bool | None, default: int) -> int:
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(value)
    except ValueError:
        return default


def estimate_arguments(argv: Sequence[str], *, has_gpu: bool) -> dict[str, Any]:
    """Return :func:`~orchestrator.memory.estimate.estimate` keyword arguments for ``argv``.

    ``-ngl`` counts only when a GPU or an RPC worker (``--rpc``) is there to take the layers
    (llama-server ignores it on a CPU-only host). With RPC workers and no local GPU the
    offloaded part carries no CUDA context (``device_overhead`` is then ``False``).
    ``--cache-ram`` of -1 (no limit) or absent (the engine's 8 GiB) is not counted.
    """
    options = engine_options(argv)
    gpu_text = options.get("gpu_layers")
    rpc = bool(rpc_endpoints(argv))
    extra: dict[str, Any] = {"device_overhead": False} if rpc and not has_gpu else {}
    if not has_gpu and not rpc:
        gpu_layers = 0
    elif gpu_text in ("auto", "all"):
        gpu_layers = -1
    else:
        gpu_layers = _as_int(gpu_text, -1)
    flash = options.get("flash_attn")
    cache_ram = _as_int(options.get("cache_ram"), -1)
    unified = options.get("kv_unified")
    return {
        "context_size": _as_int(options.get("context_size"), 0),
        "parallel": _as_int(options.get("parallel"), -1),
        "cache_type_k": str(options.get("cache_type_k") or "f16"),
        "cache_type_v": str(options.get("cache_type_v") or "f16"),
        "gpu_layers": gpu_layers,
        # "auto" turns flash attention on wherever the backend has it (CPU and CUDA do).
        "flash_attn": str(flash).lower() not in ("off", "0", "false", "disabled"),
        "kv_unified": unified if isinstance(unified, bool) else None,
        "swa_full": options.get("swa_full") is True,
        "ubatch_size": _as_int(options.get("ubatch_size"), 512),
        "batch_size": _as_int(options.get("batch_size"), 2048),
        "prompt_cache_bytes": cache_ram * MiB if cache_ram > 0 else 0,
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class _Header:
    """The parts of a model's GGUF files the estimate reads (all shards)."""

    metadata: Mapping[str, Any]
    tensors: tuple[Any, ...]
    weights_bytes: int


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """What starting one runner will take, decided before it starts.

    Attributes:
        argv: The runner's command line.
        key: :func:`~orchestrator.memory.learned.argv_key` of that command line, with the
            socket and the bundle directory replaced, so runs of one model share it.
        estimate: The estimate from the GGUF header and the argv.
        learned: The footprint learned from an earlier run with the same argv, if any.
        need: What admission counts (``learned`` applied to ``estimate``).
        workers: The llama.cpp RPC workers of the argv and what they offered when planned
            (``None`` without ``--rpc``).
        remote_bytes: The part of ``need``'s offloaded (VRAM) side expected on the workers
            rather than on this host's GPUs: all of it without a local GPU, else a share in
            proportion to free memory, as llama.cpp splits layers.
    """

    argv: tuple[str, ...]
    key: str
    estimate: MemoryEstimate
    learned: LearnedFootprint | None
    need: MemoryEstimate
    workers: RpcWorkers | None = None
    remote_bytes: int = 0

    @property
    def rpc_workers(self) -> tuple[str, ...]:
        """Return the ``host:port`` of each RPC worker (empty without ``--rpc``)."""
        return self.workers.endpoints if self.workers is not None else ()

    @property
    def remote_capacity(self) -> int:
        """Return what the workers may hold for this runner (0 without workers)."""
        return self.workers.free_bytes if self.workers is not None else 0

    @property
    def local_need(self) -> MemoryEstimate:
        """Return ``need`` without the part on the workers (what this host holds)."""
        if self.remote_bytes <= 0:
            return self.need
        local_vram = max(self.need.vram_bytes - self.remote_bytes, 0)
        return dataclasses.replace(self.need, vram=DeviceMemory(overhead=local_vram))


PROMPT_CACHE_KV_FRACTION = 0.5
"""llama-server's prompt cache (``--cache-ram``) is sized to this share of the runner's KV cache.

Measured with SmolLM2 (ctx 8192, KV 180 MiB): every distinct conversation leaves its whole
prompt state in the cache (about 10 MiB for a chat of a few hundred tokens), the cache grows
until its limit (512 MiB: +200 MiB RSS after 20 prompts, on its way to +512) and nothing gives
that memory back while the runner lives. So the limit is counted in full, and sized per model
instead of one constant: half a KV cache holds the states of several conversations for any
model, and the 135M model's estimate drops from 855.5 to 433.5 MiB (peak RSS after 20 prompts:
417 MiB)."""


def prompt_cache_mib_for(predicted: MemoryEstimate, configured_mib: int) -> int:
    """Return the ``--cache-ram`` a runner gets: its KV-based size, at most ``configured_mib``.

    ``configured_mib`` (``DMR_PROMPT_CACHE_MIB``) is the ceiling; ``0`` (off) and ``-1`` (the
    engine's default) are kept as they are, as is the ceiling when the KV size is unknown.
    """
    kv_bytes = predicted.kv_cache
    if configured_mib <= 0 or kv_bytes <= 0:
        return configured_mib
    sized = math.ceil(kv_bytes * PROMPT_CACHE_KV_FRACTION / MiB)
    return max(1, min(configured_mib, sized))


HEADER_ARRAY_LIMIT = 4096
"""Metadata arrays longer than this are not decoded for an estimate (``read_gguf``).

The estimate reads per-layer arrays (one element per block) and only the length of the
tokenizer's arrays; decoding a 49,152-token vocabulary and its merges took 100 ms of the 130 ms
a SmolLM2 header read cost, on the path of every first request of a model."""


Estimator = Callable[[str, BundleLike, Sequence[str]], MemoryEstimate]
_EMPTY_ESTIMATE = MemoryEstimate(
    ram=DeviceMemory(),
    vram=DeviceMemory(),
    context_size=0,
    parallel=0,
    kv_unified=False,
    flash_attn=False,
    gpu_layers=0,
    per_token_bytes=0,
)
Measurer = Callable[[int], "Footprint | None"]


class MemoryPlanner:
    """The scheduler's view of memory: guard, estimates, learned footprints, measurements.

    Args:
        guard: Makes the admission decisions.
        footprints: Learned footprints (``None``: nothing is learned or persisted).
        estimator: ``(model_id, bundle, argv) -> MemoryEstimate``; default reads the GGUF.
        measurer: ``pid -> Footprint | None``; default psutil plus NVML.
        nvml: GPU probe shared by the default measurer and :attr:`has_gpu`.
    """

    def __init__(
        self,
        *,
        guard: MemoryGuard,
        footprints: FootprintStore | None = None,
        estimator: Estimator | None = None,
        measurer: Measurer | None = None,
        nvml: NvmlProbe | None = None,
    ) -> None:
        self.guard = guard
        self.footprints = footprints
        self._nvml = nvml
        self._estimator = estimator or self._estimate_from_gguf
        self._measurer = measurer or self._measure_process
        self._headers: dict[str, _Header | None] = {}
        # One lock per model being read: a request that needs a header the warm-up thread is
        # reading waits for that read instead of parsing the file a second time.
        self._reading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._has_gpu: bool | None = None

    @classmethod
    def from_config(cls, config: Config, store_root: Path) -> MemoryPlanner:
        """Build the daemon's memory policy: psutil RAM, NVML when present, learned footprints."""
        nvml = NvmlProbe()
        guard = MemoryGuard(
            reserve=config.memory_reserve,
            max_ram_bytes=config.max_ram,
            max_vram_bytes=config.max_vram,
            min_residency_seconds=config.min_residency,
            ram_probe=system_ram,
            gpu_probe=nvml.gpus,
        )
        return cls(
            guard=guard,
            footprints=FootprintStore(Path(store_root) / FOOTPRINTS_FILE_NAME),
            nvml=nvml,
        )

    @property
    def has_gpu(self) -> bool:
        """Return whether the guard's probe reports a GPU (asked once)."""
        if self._has_gpu is None:
            self._has_gpu = bool(self.guard.budget().gpus)
        return self._has_gpu

    # --- estimates -------------------------------------------------------------------------

    def warm(self, models: Iterable[tuple[str, Path]]) -> None:
        """Do ahead of the first request what its runner start would otherwise wait for.

        Starts the GPU probe (NVML: ~10 ms) and reads the GGUF header of each ``(model_id,
        gguf_path)`` (~25 ms for a small model), so a fresh daemon's first start of those models
        spends no time on them. Never raises: a model that cannot be read is read (and
        reported) again when a request needs it.
        """
        try:
            _ = self.has_gpu  # the first call starts NVML
        except Exception:  # warming is an optimisation; the request path reports failures
            log.exception("memory warm-up: the GPU probe failed")
        if self._estimator != self._estimate_from_gguf:
            return  # an injected estimator reads no headers
        for model_id, gguf_path in models:
            self._header(model_id, gguf_path)

    def _header(self, model_id: str, gguf_path: Path) -> _Header | None:
        with self._lock:
            if model_id in self._headers:
                return self._headers[model_id]
            reading = self._reading.setdefault(model_id, threading.Lock())
        with reading:
            with self._lock:
                if model_id in self._headers:
                    return self._headers[model_id]  # read by the thread we waited for
            return self._read_header(model_id, gguf_path)

    def _read_header(self, model_id: str, gguf_path: Path) -> _Header | None:
        # Imported here: the GGUF reader is only needed once per model.
        from orchestrator.gguf import find_shards, read_gguf

        header: _Header | None
        try:
            infos = [
                read_gguf(path, max_array_elements=HEADER_ARRAY_LIMIT)
                for path in find_shards(Path(gguf_path))
            ]
            header = _Header(
                metadata=infos[0].metadata,
                tensors=tuple(t for info in infos for t in info.tensors),
                weights_bytes=sum(t.n_bytes or 0 for info in infos for t in info.tensors),
            )
        except OrchestratorError as ex:
            # NOTE(memory): the engine will refuse the file with a better message; admission
            # then counts the file size, which is what mapping it would cost.
            log.warning("memory estimate without metadata model=%s reason=%s", model_id, ex.message)
            header = None
        with self._lock:
            self._headers[model_id] = header
            self._reading.pop(model_id, None)
        return header

    def _estimate_from_gguf(
        self, model_id: str, bundle: BundleLike, argv: Sequence[str]
    ) -> MemoryEstimate:
        predicted = self._target_estimate(model_id, bundle, argv)
        draft = engine_options(argv).get("model_draft")
        if isinstance(draft, str):
            # Speculative decoding: a second model in the same process.
            predicted = add_draft(predicted, self._draft_estimate(Path(draft), argv))
        return predicted

    def _draft_estimate(self, gguf_path: Path, argv: Sequence[str]) -> MemoryEstimate:
        """Estimate the draft model of ``argv`` as a model of its own (overhead left out).

        Its layers follow ``-ngld`` (llama-server's default ``auto`` offloads what fits: all,
        as far as an estimate can tell) and, like the target's, only where a GPU is.
        """
        arguments = estimate_arguments(argv, has_gpu=self.has_gpu)
        layers = engine_options(argv).get("gpu_layers_draft")
        if not self.has_gpu:
            arguments["gpu_layers"] = 0
        elif layers is None or layers in ("auto", "all"):
            arguments["gpu_layers"] = -1
        else:
            arguments["gpu_layers"] = _as_int(layers, -1)
        arguments.update(prompt_cache_bytes=0, device_overhead=False)
        header = self._header(f"draft:{gguf_path}", gguf_path)
        if header is None:
            return dataclasses.replace(
                _EMPTY_ESTIMATE, ram=DeviceMemory(weights=_file_size(gguf_path))
            )
        return estimate(
            header.metadata,
            weights_bytes=header.weights_bytes,
            tensors=header.tensors,
            **arguments,
        )

    def _target_estimate(
        self, model_id: str, bundle: BundleLike, argv: Sequence[str]
    ) -> MemoryEstimate:
        arguments = estimate_arguments(argv, has_gpu=self.has_gpu)
        options = engine_options(argv)
        mmproj_bytes = 0
        mmproj = options.get("mmproj")
        if isinstance(mmproj, str) and options.get("no_mmproj") is not True:
            mmproj_bytes = _file_size(Path(mmproj))
        header = self._header(model_id, bundle.gguf_path)
        if header is None:
            context = max(int(arguments["context_size"]), 0)
            parallel = int(arguments["parallel"])
            return MemoryEstimate(
                ram=DeviceMemory(
                    weights=_file_size(Path(bundle.gguf_path)),
                    mmproj=mmproj_bytes,
                    overhead=RAM_OVERHEAD_BYTES,
                    prompt_cache=int(arguments["prompt_cache_bytes"]),
                ),
                vram=DeviceMemory(),
                context_size=context,
                parallel=parallel if parallel > 0 else AUTO_PARALLEL_SLOTS,
                kv_unified=parallel < 0,
                flash_attn=bool(arguments["flash_attn"]),
                gpu_layers=0,
                per_token_bytes=0,
            )
        return estimate(
            header.metadata,
            weights_bytes=header.weights_bytes,
            mmproj_bytes=mmproj_bytes,
            tensors=header.tensors,
            **arguments,
        )

    def forget_model(self, model_id: str) -> None:
        """Drop the cached header of ``model_id`` (its files may have changed)."""
        with self._lock:
            self._headers.pop(model_id, None)

    def plan(
        self,
        model_id: str,
        bundle: BundleLike,
        argv: Sequence[str],
        socket_path: Path,
        workers: RpcWorkers | None = None,
    ) -> MemoryPlan:
        """Return the plan for a runner of ``model_id`` started with ``argv`` on ``socket_path``.

        ``workers`` are the RPC workers of the argv as probed (their free memory decides how
        much of the offloaded part goes there).

        Raises:
            InvalidRequestError: The argv names a KV cache type the engine does not know.
        """
        # The key predates per-runner socket paths in plans: "<socket>" keeps learned
        # footprints of earlier versions valid.
        key = argv_key(
            argv, replace={str(socket_path): "<socket>", str(bundle_root(bundle)): "<bundle>"}
        )
        predicted = self._estimator(model_id, bundle, argv)
        learned = self.footprints.get(model_id, key) if self.footprints is not None else None
        need = learned_need(predicted, learned)
        remote = 0
        if workers is not None and need.vram_bytes > 0:
            if not self.has_gpu:
                remote = need.vram_bytes
            else:
                capacity = workers.free_bytes
                local = max(self.guard.budget().vram_free, 0)
                remote = need.vram_bytes * capacity // max(capacity + local, 1)
        return MemoryPlan(
            argv=tuple(argv),
            key=key,
            estimate=predicted,
            learned=learned,
            need=need,
            workers=workers,
            remote_bytes=remote,
        )

    # --- measurement -----------------------------------------------------------------------

    def _measure_process(self, pid: int) -> Footprint | None:
        return measure_footprint(pid, nvml=self._nvml)

    def measure(
        self, model_id: str, key: str, pid: int, *, ready: bool = False
    ) -> tuple[Footprint | None, LearnedFootprint | None]:
        """Measure runner ``pid`` and fold it into the learned footprint of (model, argv).

        Returns:
            The measurement (``None`` when the process is gone) and the learned footprint.
        """
        footprint = self._measurer(pid)
        if footprint is None:
            return None, None
        if self.footprints is None:
            return footprint, None
        return footprint, self.footprints.record(model_id, key, footprint, ready=ready)

    def deficit(self) -> tuple[int, int]:
        """Return how far free RAM and free VRAM (worst GPU) are below their reserves (>= 0)."""
        budget = self.guard.budget()
        ram = max(-budget.ram_free, 0)
        vram = max(
            (max(self.guard.vram_reserve_bytes - gpu.free_bytes, 0) for gpu in budget.gpus),
            default=0,
        )
        return ram, vram

    def close(self) -> None:
        """Release NVML if this object started it."""
        if self._nvml is not None:
            self._nvml.close()


def bundle_root(bundle: BundleLike) -> Path:
    """Return the bundle's directory (``root`` when it has one, else the GGUF's parent)."""
    root = getattr(bundle, "root", None)
    return Path(root) if root is not None else Path(bundle.gguf_path).parent


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

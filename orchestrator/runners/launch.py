"""Launch plans: everything a runner start needs, worked out before admission.

Reading the settings file and the model's GGUF header is I/O, so it happens outside the table
lock: :meth:`LaunchPlanner.plan` gives the runner its ID, socket and log paths, the argv (with
its prompt cache sized from its KV cache, and fewer GPU layers when the model is larger than
the GPU memory), the context size, and the memory plan admission decides on. Admission then
only compares numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from orchestrator import logfiles
from orchestrator.errors import ModelNotFoundError
from orchestrator.memory.sizes import format_bytes, parse_reserve
from orchestrator.runners.crashes import CrashMemory
from orchestrator.runners.engineflags import engine_options, rpc_endpoints
from orchestrator.runners.info import RecordLike, StoreLike, short_id
from orchestrator.runners.llamacpp import ALL_LAYERS, BundleLike, build_argv, context_size_for
from orchestrator.runners.memoryplan import MemoryPlan, MemoryPlanner, prompt_cache_mib_for
from orchestrator.runners.persisted import RunnerConfigStore, RunnerSettings
from orchestrator.runners.rpc import NO_BACKTRACE_ENV, RpcProbe, RpcWorkers, describe_workers
from orchestrator.settings import Config
from orchestrator.store.reference import model_label

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """One runner start, decided before it is admitted.

    Attributes:
        runner_id: Short unique name (``c3-1a2b3c4d``: mode, sequence, model).
        model_id: ``sha256:<hex>`` of the model.
        model_name: Its display label (:func:`~orchestrator.store.reference.model_label`).
        mode: ``completion``, ``embedding`` or ``reranking``.
        settings: The ``_configure`` settings of the model and mode, if any.
        bundle: The model's runtime bundle.
        argv: The llama-server command line.
        socket_path: The Unix socket it will serve on.
        log_path: Its engine log.
        context_size: ``--ctx-size`` (``0``: the model's own).
        memory: What it will need (estimate, learned footprint, admission figure), and its
            RPC workers as probed.
        env: The runner's environment when it differs from the daemon's (``None``: the same).
        draft_model: The speculative-decoding draft model as configured, if any.
    """

    runner_id: str
    model_id: str
    model_name: str
    mode: str
    settings: RunnerSettings | None
    bundle: BundleLike
    argv: tuple[str, ...]
    socket_path: Path
    log_path: Path
    context_size: int
    memory: MemoryPlan
    env: Mapping[str, str] | None = None
    draft_model: str | None = None

    @property
    def pinned(self) -> bool:
        """Return whether the settings pin the runner."""
        return self.settings is not None and self.settings.pinned

    def keep_alive(self, daemon_default: float, *, default_model: bool) -> float:
        """Return its idle timeout: the settings', else ``-1`` for the default model, else
        the daemon's."""
        if self.settings is not None and self.settings.keep_alive is not None:
            return self.settings.keep_alive
        return -1.0 if default_model else daemon_default


class LaunchPlanner:
    """Plans runner starts for one scheduler.

    Args:
        config: Daemon settings (default context size, prompt cache).
        store: The model store (bundles).
        configs: The persisted ``_configure`` settings.
        memory: Memory planning (estimates, learned footprints).
        crashes: Engine crash memory; a model that crashed the engine is refused here.
        engine_path: The llama-server executable.
        runners_dir: Where sockets (and pid files) go.
        log_dir: Where engine logs go.
        rpc_probe: Asks RPC workers for their memory (default: this engine's
            ``--list-devices``).
        held_workers: Returns the RPC workers our runners are connected to, with the holder's
            label (those are not probed: a worker serves one client at a time).
    """

    def __init__(
        self,
        *,
        config: Config,
        store: StoreLike,
        configs: RunnerConfigStore,
        memory: MemoryPlanner,
        crashes: CrashMemory,
        engine_path: Path,
        runners_dir: Path,
        log_dir: Path,
        rpc_probe: RpcProbe | None = None,
        held_workers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._config = config
        self._rpc_probe = rpc_probe if rpc_probe is not None else RpcProbe(Path(engine_path))
        self._held_workers = held_workers or dict
        self._store = store
        self._configs = configs
        self._memory = memory
        self._crashes = crashes
        self._engine_path = engine_path
        self.runners_dir = runners_dir
        self._log_dir = log_dir
        # next() on a count is atomic under the GIL: no lock needed for unique IDs.
        self._sequence = itertools.count(1)

    def rpc_status(self) -> str:
        """Return the RPC workers' line for ``/engines/status`` (``""`` without workers)."""
        return describe_workers(self._config.rpc_servers, self._rpc_probe.latest())

    def plan(self, record: RecordLike, mode: str) -> LaunchPlan:
        """Return the plan for a runner of ``record`` in ``mode``.

        Raises:
            EngineCrashedError: This model crashed the engine recently.
            InvalidRequestError: Its settings name a KV cache type the engine does not know.
            StoreError: The model's files cannot be read.
        """
        self._crashes.check(record.id)
        settings = self._configs.get(record.id, mode)
        bundle = self._store.bundle(record)
        runner_id = f"{mode[0]}{next(self._sequence)}-{short_id(record.id)[:8]}"
        socket_path = self.runners_dir / f"{runner_id}.sock"
        draft_gguf = self._draft_gguf(record, settings)

        workers: RpcWorkers | None = None

        def planned(
            prompt_cache_mib: int, gpu_layers: int = ALL_LAYERS
        ) -> tuple[list[str], MemoryPlan]:
            argv = build_argv(
                engine_path=self._engine_path,
                bundle=bundle,
                mode=mode,
                socket_path=socket_path,
                settings=settings,
                default_context_size=self._config.default_context_size,
                prompt_cache_mib=prompt_cache_mib,
                gpu_layers=gpu_layers,
                rpc_servers=self._config.rpc_servers,
                engine_args=self._config.llama_args,
                draft_gguf=draft_gguf,
            )
            return argv, self._memory.plan(record.id, bundle, argv, socket_path, workers)

        endpoints = rpc_endpoints(
            build_argv(
                engine_path=self._engine_path, bundle=bundle, mode=mode,
                socket_path=socket_path, settings=settings,
                rpc_servers=self._config.rpc_servers, engine_args=self._config.llama_args,
            )
        )  # fmt: skip
        if endpoints:
            # Asked once per plan, outside the table lock; bounded by the probe's deadline.
            workers = self._rpc_probe.read(
                endpoints,
                held=self._held_workers(),
                reserve=parse_reserve(self._config.memory_reserve),
            )
        # Two choices depend on the estimate of the argv they change; each re-plan is
        # arithmetic (the GGUF header is read once per model and cached). The prompt cache is
        # sized from the KV cache; a model larger than the GPU memory gets the layers that fit.
        ceiling = self._config.prompt_cache_mib
        argv, memory = planned(ceiling)
        cache = prompt_cache_mib_for(memory.estimate, ceiling)
        if cache != ceiling:
            argv, memory = planned(cache)
        layers = self._layers_that_fit(
            memory, settings, lambda n: planned(cache, n)[1], model_label(record.tags, record.id)
        )
        if layers is not None:
            argv, memory = planned(cache, layers)
        return LaunchPlan(
            runner_id=runner_id,
            model_id=record.id,
            model_name=model_label(record.tags, record.id),
            mode=mode,
            settings=settings,
            bundle=bundle,
            argv=tuple(argv),
            socket_path=socket_path,
            log_path=logfiles.engine_log_path(self._log_dir, short_id(record.id), mode),
            context_size=context_size_for(
                bundle.config, settings, self._config.default_context_size
            ),
            memory=memory,
            env={**os.environ, **NO_BACKTRACE_ENV} if workers is not None else None,
            draft_model=settings.speculative.draft_model
            if settings is not None and settings.speculative is not None
            else None,
        )

    def _draft_gguf(self, record: RecordLike, settings: RunnerSettings | None) -> Path | None:
        """Return the GGUF of the configured draft model (``None`` without speculative).

        Raises:
            ModelNotFoundError: The draft was deleted from the store since it was configured.
        """
        if settings is None or settings.speculative is None:
            return None
        speculative = settings.speculative
        draft = self._store.find(speculative.draft_model_id or speculative.draft_model)
        if draft is None:
            name = model_label(record.tags, record.id)
            raise ModelNotFoundError(
                f"draft model {speculative.draft_model!r} configured for {name!r} is no longer "
                f"in the local store; pull it again, or configure {name!r} again without "
                f"--speculative-draft-model",
                param="speculative.draft_model",
            )
        return Path(self._store.bundle(draft).gguf_path)

    def _layers_that_fit(
        self,
        full: MemoryPlan,
        settings: RunnerSettings | None,
        plan_with: Callable[[int], MemoryPlan],
        name: str,
    ) -> int | None:
        """Return the ``-ngl`` for a model larger than the GPU memory, else ``None``.

        As Ollama does: when every layer on the GPU would need more than the runners' GPU
        budget (``DMR_MAX_VRAM``, or each GPU less its reserve, GPUs pooled, plus the RPC
        workers' free memory), offload the most layers whose VRAM estimate fits and run the
        rest on the CPU. Nothing changes without a GPU or workers, when it fits, or when the
        user's runtime flags set ``-ngl`` themselves.
        """
        if not (self._memory.has_gpu or full.workers) or full.estimate.vram_bytes <= 0:
            return None
        flags = settings.runtime_flags if settings is not None else ()
        if "gpu_layers" in engine_options(["engine", *flags]):
            return None
        # RPC workers take offloaded layers as a GPU does: their free memory counts too.
        limit = self._memory.guard.budget().vram_limit + full.remote_capacity
        if full.estimate.vram_bytes <= limit:
            return None
        # VRAM grows with the layers offloaded: the largest count that fits, by bisection.
        low, high = 0, max(full.estimate.gpu_layers - 1, 0)
        while low < high:
            middle = (low + high + 1) // 2
            if plan_with(middle).estimate.vram_bytes <= limit:
                low = middle
            else:
                high = middle - 1
        log.info(
            "model larger than the GPU memory, offloading part of it model=%s layers=%d of %d "
            "vram_budget=%s needed_all=%s",
            name, low, full.estimate.gpu_layers, format_bytes(limit),
            format_bytes(full.estimate.vram_bytes),
        )  # fmt: skip
        return low

"""The llama-server command line of one runner (pure).

:func:`build_argv` follows DMR's order (``dmr-spec.md`` section 4.3) with the differences this
daemon needs: an explicit ``--ctx-size`` always (a model's training context can be 128K tokens,
whose KV cache alone would not fit; DMR issue #1025), ``--no-webui`` (nobody can reach it through
the socket), and ``--pooling`` for embedding mode (this engine answers ``/v1/embeddings`` in
OpenAI's shape only with a pooling type).

The flags themselves (allow-list, memory-relevant spellings) are in
:mod:`~orchestrator.runners.engineflags`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from orchestrator.errors import InvalidRequestError
from orchestrator.runners.engineflags import MODES, RPC_FLAG, spelling
from orchestrator.runners.persisted import RunnerSettings

ALL_LAYERS = 999
"""``-ngl`` value for "every layer on the GPU" (DMR's; llama-server ignores it without one)."""
BASE_ARGS: tuple[str, ...] = ("-ngl", str(ALL_LAYERS), "--metrics", "--no-webui")
"""Arguments every runner gets first (DMR's ``-ngl 999 --metrics`` plus ``--no-webui``)."""

RPC_LOG_ARGS: tuple[str, ...] = ("--log-verbosity", "4")
"""Given to runners with RPC workers: at verbosity 4 llama-server logs each device's model, KV
and compute buffers at load (``RPC0[host:port] model buffer size = ...``), which is where
``/engines/ps`` learns the placement (:mod:`~orchestrator.runners.rpc`). It adds about 30 lines
per request to the engine log."""

DEFAULT_PROMPT_CACHE_MIB = 512
"""Ceiling of the ``--cache-ram`` a runner gets (``Config.prompt_cache_mib``).

llama-server's own default is 8192 MiB: an idle runner that has served many prompts grows by up
to 8 GiB of saved prompt state, which no admission decision could foresee. Each runner gets an
explicit limit, sized from its KV cache up to this ceiling
(:func:`~orchestrator.runners.memoryplan.prompt_cache_mib_for`), which the estimate counts."""

# GGUF `<arch>.pooling_type` values (llama.h `enum llama_pooling_type`); 0 = none is not usable
# for OpenAI-shaped embeddings, so it falls back to mean like a missing key does.
_POOLING_NAMES: dict[str, str] = {"1": "mean", "2": "cls", "3": "last", "4": "rank"}
DEFAULT_POOLING = "mean"


class BundleLike(Protocol):
    """What :func:`build_argv` reads from a store bundle (``orchestrator.store`` ``Bundle``)."""

    @property
    def gguf_path(self) -> Path:
        """Return the GGUF file (first shard when sharded)."""

    @property
    def mmproj_path(self) -> Path | None:
        """Return the multimodal projector, if the model has one."""

    @property
    def chat_template_path(self) -> Path | None:
        """Return the Jinja chat template, if the model has one."""

    @property
    def config(self) -> dict[str, Any]:
        """Return the model config (``context_size``, ``gguf`` metadata, ...)."""


def _has_flag(flags: Sequence[str], *names: str) -> bool:
    return any(flag.partition("=")[0] in names for flag in flags)


def _positive_or_minus_one(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number > 0 or number == -1 else None


def context_size_for(
    model_config: Mapping[str, Any],
    settings: RunnerSettings | None,
    default_context_size: int,
) -> int:
    """Return the context size a runner gets.

    Order: the ``_configure`` value, else the model config's ``context_size``, else the daemon
    default. ``-1`` (from either source) asks for the model's own training context and is
    passed to llama-server as ``0``, its spelling of "from the model".
    """
    for candidate in (
        settings.context_size if settings is not None else None,
        model_config.get("context_size"),
    ):
        size = _positive_or_minus_one(candidate) if candidate is not None else None
        if size is not None:
            return 0 if size == -1 else size
    return default_context_size


def pooling_for(model_config: Mapping[str, Any]) -> str:
    """Return the embedding pooling type the model declares, else ``mean``."""
    gguf = model_config.get("gguf")
    if not isinstance(gguf, Mapping):
        return DEFAULT_POOLING
    architecture = model_config.get("architecture") or gguf.get("general.architecture") or ""
    raw = gguf.get(f"{architecture}.pooling_type")
    return _POOLING_NAMES.get(str(raw).strip(), DEFAULT_POOLING)


def build_argv(
    *,
    engine_path: str | Path,
    bundle: BundleLike,
    mode: str,
    socket_path: str | Path,
    settings: RunnerSettings | None = None,
    default_context_size: int = 4096,
    prompt_cache_mib: int = DEFAULT_PROMPT_CACHE_MIB,
    gpu_layers: int = ALL_LAYERS,
    rpc_servers: Sequence[str] = (),
    engine_args: Sequence[str] = (),
    draft_gguf: Path | None = None,
) -> list[str]:
    """Return the llama-server argv for one runner.

    Order: engine, :data:`BASE_ARGS`, ``--model``, ``--host <socket>``, mode arguments
    (completion: ``--chat-template-file`` when the bundle has a template; embedding:
    ``--embeddings --pooling <model's or mean>``; reranking: ``--embeddings --reranking``),
    ``--reasoning-budget`` when configured, ``--ctx-size``, ``--cache-ram`` (unless
    ``prompt_cache_mib`` is -1), ``--rpc <workers>`` (the daemon's ``rpc_servers``, unless the
    runtime flags name their own), speculative decoding (``--model-draft <draft>`` and its
    ``--spec-draft-*`` sizes), the daemon's ``engine_args`` (``LLAMA_ARGS``), the configured
    runtime flags (verbatim, so they win over anything before them), then ``--mmproj <file>``
    or ``--jinja``. A runner with RPC workers
    also gets :data:`RPC_LOG_ARGS`: its log then says how much of the model each device holds.

    Args:
        engine_path: The llama-server executable.
        bundle: The model's runtime bundle (GGUF, optional mmproj and template, config).
        mode: One of :data:`MODES`.
        socket_path: Unix socket the runner serves HTTP on.
        settings: ``_configure`` settings for this model and mode, if any.
        default_context_size: ``Config.default_context_size``.
        prompt_cache_mib: ``Config.prompt_cache_mib``: ``--cache-ram`` in MiB; 0 turns the
            prompt cache off; -1 leaves the flag out (the engine's default).
        gpu_layers: ``-ngl``: layers on the GPU (:data:`ALL_LAYERS` unless the model is larger
            than the GPU memory; a runtime flag still wins, coming later).
        rpc_servers: ``Config.rpc_servers``: llama.cpp RPC workers (``host:port``); ignored
            when the runtime flags carry ``--rpc`` (llama-server would add both lists).
        engine_args: ``Config.llama_args``: flags for every runner, already checked against
            the allow-list; a model's runtime flags come later and win.
        draft_gguf: The draft model's GGUF when ``settings.speculative`` is set: its
            ``--model-draft`` arguments come before ``engine_args`` and the runtime flags, so
            a ``--spec-draft-*`` runtime flag still wins.

    Raises:
        InvalidRequestError: ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise InvalidRequestError(
            f"unknown runner mode {mode!r}; use one of {', '.join(repr(m) for m in MODES)}",
            param="mode",
        )
    flags: tuple[str, ...] = settings.runtime_flags if settings is not None else ()
    argv = [str(engine_path), "-ngl", str(gpu_layers), *BASE_ARGS[2:]]
    argv += ["--model", str(bundle.gguf_path), "--host", str(socket_path)]
    if mode == "completion":
        if bundle.chat_template_path is not None:
            argv += ["--chat-template-file", str(bundle.chat_template_path)]
    elif mode == "embedding":
        argv.append("--embeddings")
        if not _has_flag(flags, "--pooling"):
            argv += ["--pooling", pooling_for(bundle.config)]
    else:
        argv += ["--embeddings", "--reranking"]
    if settings is not None and settings.reasoning_budget is not None:
        argv += ["--reasoning-budget", str(settings.reasoning_budget)]
    context_size = context_size_for(bundle.config, settings, default_context_size)
    argv += [spelling("context_size"), str(context_size)]
    if prompt_cache_mib >= 0:
        argv += [spelling("cache_ram"), str(prompt_cache_mib)]
    own_rpc = RPC_FLAG in flags or RPC_FLAG in engine_args
    if rpc_servers and not own_rpc:
        argv += [RPC_FLAG, ",".join(rpc_servers)]
    if rpc_servers or own_rpc:
        argv += RPC_LOG_ARGS
    if draft_gguf is not None and settings is not None and settings.speculative is not None:
        argv += settings.speculative.argv(draft_gguf)
    argv += engine_args
    argv += flags
    if bundle.mmproj_path is not None:
        argv += [spelling("mmproj"), str(bundle.mmproj_path)]
    else:
        argv.append("--jinja")
    return argv

"""The llama-server command line: argv building and runtime-flag validation (pure).

:func:`build_argv` follows DMR's order (``dmr-spec.md`` section 4.3) with the differences this
daemon needs: an explicit ``--ctx-size`` always (a model's training context can be 128K tokens,
whose KV cache alone would not fit; DMR issue #1025), ``--no-webui`` (nobody can reach it through
the socket), and ``--pooling`` for embedding mode (this engine answers ``/v1/embeddings`` in
OpenAI's shape only with a pooling type).

:func:`validate_runtime_flags` is the allow-list that keeps ``_configure`` from turning the
engine into a file writer or moving it off its socket: no paths, nothing the daemon manages,
only flags this engine build knows (each was checked against its parser).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator.errors import InvalidRequestError

if TYPE_CHECKING:
    from orchestrator.runners.configs import RunnerSettings

MODES: tuple[str, ...] = ("completion", "embedding", "reranking")
"""Runner modes: one process per (model, mode), as in DMR."""

BASE_ARGS: tuple[str, ...] = ("-ngl", "999", "--metrics", "--no-webui")
"""Arguments every runner gets first (DMR's ``-ngl 999 --metrics`` plus ``--no-webui``)."""

DEFAULT_PROMPT_CACHE_MIB = 512
"""``--cache-ram`` given to every runner unless configured (``Config.prompt_cache_mib``).

llama-server's own default is 8192 MiB: an idle runner that has served many prompts grows by up
to 8 GiB of saved prompt state, which no admission decision could foresee. An explicit, smaller
limit keeps the runner's footprint what the memory estimate says it is."""

# GGUF `<arch>.pooling_type` values (llama.h `enum llama_pooling_type`); 0 = none is not usable
# for OpenAI-shaped embeddings, so it falls back to mean like a missing key does.
_POOLING_NAMES: dict[str, str] = {"1": "mean", "2": "cls", "3": "last", "4": "rank"}
DEFAULT_POOLING = "mean"

# DMR's llama.cpp allow-list (pkg/inference/runtime_flags_allowlist.go) minus what this engine
# build rejects (--mlock, --mmap, --no-mmap, -dio, --direct-io, -ndio, --no-direct-io, the removed
# --draft* family, -cd, --ctx-size-draft, --no-metrics) and minus what would cut the daemon off
# from its runner (--api-key, --api-prefix) or serve a UI on its socket (--webui,
# --webui-config); plus this build's renamed speculative flags and reasoning switches.
ALLOWED_FLAGS: frozenset[str] = frozenset(
    """
    -t --threads -tb --threads-batch -C --cpu-mask -Cr --cpu-range --cpu-strict --prio --poll
    -Cb --cpu-mask-batch -Crb --cpu-range-batch --cpu-strict-batch --prio-batch --poll-batch
    -c --ctx-size -n --predict --n-predict --keep
    -b --batch-size -ub --ubatch-size --swa-full -fa --flash-attn --perf --no-perf
    --samplers -s --seed --temp --temperature --top-k --top-p --min-p --top-nsigma
    --xtc-probability --xtc-threshold --typical --repeat-last-n --repeat-penalty
    --presence-penalty --frequency-penalty --dry-multiplier --dry-base --dry-allowed-length
    --dry-penalty-last-n --mirostat --mirostat-lr --mirostat-ent --ignore-eos --dynatemp-range
    --dynatemp-exp
    -dev --device -ngl --gpu-layers --n-gpu-layers -sm --split-mode -ts --tensor-split
    -mg --main-gpu -fit --fit -fitt --fit-target -fitc --fit-ctx
    -kvo --kv-offload -nkvo --no-kv-offload --repack -nr --no-repack --no-host
    -ctk --cache-type-k -ctv --cache-type-v -cram --cache-ram -kvu --kv-unified
    -no-kvu --no-kv-unified --context-shift --no-context-shift
    --rope-scaling --rope-scale --rope-freq-base --rope-freq-scale --yarn-orig-ctx
    --yarn-ext-factor --yarn-attn-factor --yarn-beta-slow --yarn-beta-fast
    -np --parallel -cb --cont-batching -nocb --no-cont-batching --warmup --no-warmup
    -to --timeout --threads-http --cache-prompt --no-cache-prompt --cache-reuse
    --sleep-idle-seconds --cache-idle-slots --no-cache-idle-slots -ctxcp --ctx-checkpoints
    --mmproj-auto --no-mmproj --no-mmproj-auto --mmproj-offload --no-mmproj-offload
    --image-min-tokens --image-max-tokens --spm-infill
    --draft-p-min --spec-draft-n-max --spec-draft-n-min --spec-draft-p-min
    -devd --device-draft -ngld --gpu-layers-draft --n-gpu-layers-draft
    -td --threads-draft -tbd --threads-batch-draft
    --lora-init-without-apply --control-vector-layer-range
    --grammar -j --json-schema -bs --backend-sampling
    --chat-template --chat-template-kwargs --jinja --no-jinja --pooling
    --reasoning-format --reasoning-budget -rea --reasoning
    --prefill-assistant --no-prefill-assistant
    --no-webui --metrics --props --slots --no-slots
    --embedding --embeddings --rerank --reranking -sps --slot-prompt-similarity
    -cmoe --cpu-moe -ncmoe --n-cpu-moe --check-tensors --op-offload --no-op-offload
    -v --verbose -lv --verbosity --log-verbosity
    """.split()  # noqa: SIM905 - one flag family per line reads better than a list literal
)

# Set by build_argv from the model and the store; a runtime flag must not move them.
_MANAGED_FLAGS: frozenset[str] = frozenset(
    {"-m", "--model", "--host", "--port", "--mmproj", "-mm", "--chat-template-file", "--path"}
)

_NEGATIVE_NUMBER = re.compile(r"-(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


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


def _reject(flag: str, why: str) -> InvalidRequestError:
    shown = flag if len(flag) <= 80 else flag[:77] + "..."
    return InvalidRequestError(
        f"runtime flag {shown!r} is not allowed: {why}; use llama-server tuning flags such as "
        f"'--threads 4' or '--temp 0.7'",
        param="runtime-flags",
    )


def validate_runtime_flags(flags: Sequence[object]) -> tuple[str, ...]:
    """Check ``_configure`` runtime flags against the allow-list and return them as a tuple.

    Rules (DMR's, tightened): a token starting with ``-`` is a flag key (text before ``=``)
    unless it is a negative number (``-1``, ``-0.5``: a value); every key must be in
    :data:`ALLOWED_FLAGS`; no token may contain ``/``, ``\\`` or a NUL byte (no paths); in
    ``--flag=value`` the value must not start with ``-`` unless a digit follows.

    Raises:
        InvalidRequestError: A token breaks a rule (``param`` is ``runtime-flags``).
    """
    checked: list[str] = []
    for flag in flags:
        if not isinstance(flag, str):
            raise InvalidRequestError(
                f"runtime flags must be strings, got {flag!r}; quote every flag and value",
                param="runtime-flags",
            )
        if "/" in flag or "\\" in flag:
            raise _reject(flag, "paths are not allowed (it contains '/' or '\\')")
        if "\x00" in flag:
            raise _reject(flag, "it contains a NUL byte")
        if flag.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(flag):
            key, has_value, value = flag.partition("=")
            if key in _MANAGED_FLAGS:
                raise _reject(flag, "the daemon sets it itself")
            if key not in ALLOWED_FLAGS:
                raise _reject(flag, "it is not on the allow-list of llama-server flags")
            if has_value and value.startswith("-") and not value[1:2].isdigit():
                raise _reject(flag, "a value may only start with '-' when a digit follows")
        checked.append(flag)
    return tuple(checked)


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
) -> list[str]:
    """Return the llama-server argv for one runner.

    Order: engine, :data:`BASE_ARGS`, ``--model``, ``--host <socket>``, mode arguments
    (completion: ``--chat-template-file`` when the bundle has a template; embedding:
    ``--embeddings --pooling <model's or mean>``; reranking: ``--embeddings --reranking``),
    ``--reasoning-budget`` when configured, ``--ctx-size``, ``--cache-ram`` (unless
    ``prompt_cache_mib`` is -1), the configured runtime flags (verbatim, so they win over
    anything before them), then ``--mmproj <file>`` or ``--jinja``.

    Args:
        engine_path: The llama-server executable.
        bundle: The model's runtime bundle (GGUF, optional mmproj and template, config).
        mode: One of :data:`MODES`.
        socket_path: Unix socket the runner serves HTTP on.
        settings: ``_configure`` settings for this model and mode, if any.
        default_context_size: ``Config.default_context_size``.
        prompt_cache_mib: ``Config.prompt_cache_mib``: ``--cache-ram`` in MiB; 0 turns the
            prompt cache off; -1 leaves the flag out (the engine's default).

    Raises:
        InvalidRequestError: ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise InvalidRequestError(
            f"unknown runner mode {mode!r}; use one of {', '.join(repr(m) for m in MODES)}",
            param="mode",
        )
    flags: tuple[str, ...] = settings.runtime_flags if settings is not None else ()
    argv = [str(engine_path), *BASE_ARGS]
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
    argv += ["--ctx-size", str(context_size)]
    if prompt_cache_mib >= 0:
        argv += ["--cache-ram", str(prompt_cache_mib)]
    argv += flags
    if bundle.mmproj_path is not None:
        argv += ["--mmproj", str(bundle.mmproj_path)]
    else:
        argv.append("--jinja")
    return argv

"""What this daemon knows about llama-server's flags: one table, read two ways.

* :func:`validate_runtime_flags` is the allow-list that keeps ``_configure`` from turning the
  engine into a file writer or moving it off its socket: no paths, nothing the daemon manages,
  only flags this engine build knows (each was checked against its parser).
* :data:`MEMORY_FLAGS` names every spelling of the options the memory estimate depends on;
  :func:`~orchestrator.runners.llamacpp.build_argv` writes the first spelling and
  :func:`engine_options` reads any of them back out of a finished argv (the daemon's flags plus
  the user's runtime flags, the last one winning, as llama-server reads them).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from orchestrator.errors import InvalidRequestError
from orchestrator.settings import parse_rpc_servers

MODES: tuple[str, ...] = ("completion", "embedding", "reranking")
"""Runner modes: one process per (model, mode), as in DMR."""

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
    --rpc
    """.split()  # noqa: SIM905 - one flag family per line reads better than a list literal
)

# The allowed flags that take no value; every other allowed flag takes exactly one (the next
# item). Read off this build's `llama-server --help`; a test compares the two, so a new build
# that changes a flag's arity fails CI instead of shifting every item after it.
SWITCH_FLAGS: frozenset[str] = frozenset(
    """
    --swa-full --perf --no-perf --ignore-eos -kvo --kv-offload -nkvo --no-kv-offload --repack
    -nr --no-repack --no-host -kvu --kv-unified -no-kvu --no-kv-unified --context-shift
    --no-context-shift -cb --cont-batching -nocb --no-cont-batching --warmup --no-warmup
    --cache-prompt --no-cache-prompt --cache-idle-slots --no-cache-idle-slots --mmproj-auto
    --no-mmproj --no-mmproj-auto --mmproj-offload --no-mmproj-offload --spm-infill
    --lora-init-without-apply -bs --backend-sampling --jinja --no-jinja --prefill-assistant
    --no-prefill-assistant --no-webui --metrics --props --slots --no-slots --embedding
    --embeddings --rerank --reranking -cmoe --cpu-moe --check-tensors --op-offload
    --no-op-offload
    """.split()  # noqa: SIM905
)

# Set by build_argv from the model and the store; a runtime flag must not move them.
MANAGED_FLAGS: frozenset[str] = frozenset(
    {"-m", "--model", "--host", "--port", "--mmproj", "-mm", "--chat-template-file", "--path"}
    # The draft model comes from the store too ('speculative' in _configure).
    | {"-md", "--model-draft", "--spec-draft-model"}
)

_NEGATIVE_NUMBER = re.compile(r"-(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


@dataclasses.dataclass(frozen=True)
class MemoryFlag:
    """One llama-server option the memory estimate reads.

    Attributes:
        option: The name :func:`engine_options` reports it under.
        spellings: Every spelling the engine accepts; the daemon writes the first.
        sets: For a switch, the value it sets; ``None`` for a flag that takes a value.
    """

    option: str
    spellings: tuple[str, ...]
    sets: bool | None = None


MEMORY_FLAGS: tuple[MemoryFlag, ...] = (
    MemoryFlag("context_size", ("--ctx-size", "-c")),
    MemoryFlag("parallel", ("--parallel", "-np")),
    MemoryFlag("cache_type_k", ("--cache-type-k", "-ctk")),
    MemoryFlag("cache_type_v", ("--cache-type-v", "-ctv")),
    MemoryFlag("gpu_layers", ("-ngl", "--gpu-layers", "--n-gpu-layers")),
    MemoryFlag("flash_attn", ("--flash-attn", "-fa")),
    MemoryFlag("ubatch_size", ("--ubatch-size", "-ub")),
    MemoryFlag("batch_size", ("--batch-size", "-b")),
    MemoryFlag("cache_ram", ("--cache-ram", "-cram")),
    MemoryFlag("mmproj", ("--mmproj", "-mm")),
    MemoryFlag("model_draft", ("--model-draft", "-md", "--spec-draft-model")),
    MemoryFlag(
        "gpu_layers_draft",
        ("-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"),
    ),
    MemoryFlag("kv_unified", ("--kv-unified", "-kvu"), sets=True),
    MemoryFlag("kv_unified", ("--no-kv-unified", "-no-kvu"), sets=False),
    MemoryFlag("swa_full", ("--swa-full",), sets=True),
    MemoryFlag("no_mmproj", ("--no-mmproj",), sets=True),
)
_BY_SPELLING: dict[str, MemoryFlag] = {
    spelling: flag for flag in MEMORY_FLAGS for spelling in flag.spellings
}


def spelling(option: str) -> str:
    """Return the spelling the daemon writes for the value flag ``option`` (``--ctx-size``)."""
    for flag in MEMORY_FLAGS:
        if flag.option == option and flag.sets is None:
            return flag.spellings[0]
    raise KeyError(option)


def engine_options(argv: Sequence[str]) -> dict[str, str | bool]:
    """Return the memory-relevant llama-server options in ``argv`` (the last one wins).

    Values stay text (``gpu_layers`` may be ``auto`` or ``all``); switches are booleans. Both
    ``--flag value`` and ``--flag=value`` are read, as llama-server reads them.
    """
    found: dict[str, str | bool] = {}
    words = list(argv)
    index = 1
    while index < len(words):
        key, has_value, inline = words[index].partition("=")
        flag = _BY_SPELLING.get(key)
        if flag is not None and flag.sets is not None:
            found[flag.option] = flag.sets
        elif flag is not None:
            if has_value:
                found[flag.option] = inline
            elif index + 1 < len(words):
                found[flag.option] = words[index + 1]
                index += 1
        index += 1
    return found


def _reject(flag: str, why: str) -> InvalidRequestError:
    shown = flag if len(flag) <= 80 else flag[:77] + "..."
    return InvalidRequestError(
        f"runtime flag {shown!r} is not allowed: {why}; use llama-server tuning flags such as "
        f"'--threads 4' or '--temp 0.7'",
        param="runtime-flags",
    )


def validate_runtime_flags(flags: Sequence[object]) -> tuple[str, ...]:
    """Check ``_configure`` runtime flags against the allow-list and return them as a tuple.

    Rules (DMR's, tightened): a token starting with ``-`` is a flag unless it is a negative
    number (``-1``, ``-0.5``: a value); every flag must be in :data:`ALLOWED_FLAGS`; no token
    may contain ``/``, ``\\`` or a NUL byte (no paths); ``--flag=value`` is refused (llama-server
    takes the value as the next item and would refuse to start); each flag not in
    :data:`SWITCH_FLAGS` is followed by exactly one value and nothing else is; the flags in
    :data:`BOUNDED_FLAGS` need an integer value within their bounds.

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
            key, has_value, _value = flag.partition("=")
            if key in MANAGED_FLAGS:
                raise _reject(flag, "the daemon sets it itself")
            if key not in ALLOWED_FLAGS:
                raise _reject(flag, "it is not on the allow-list of llama-server flags")
            if has_value:
                raise _reject(
                    flag, f"llama-server takes the value as the next item: write {key!r} and "
                    f"the value as two items"
                )  # fmt: skip
        checked.append(flag)
    _check_arity(checked)
    _check_bounds(checked)
    _check_rpc(checked)
    return tuple(checked)


def _is_flag(token: str) -> bool:
    return token.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(token)


def _check_arity(flags: Sequence[str]) -> None:
    """Each value flag is followed by its value, each switch by a flag or nothing.

    Without this, ``["--chat-template", "--jinja"]`` would hand ``--jinja`` to llama-server as
    the template's name, and a stray value would make the runner refuse to start.
    """
    index = 0
    while index < len(flags):
        token = flags[index]
        if not _is_flag(token):
            raise InvalidRequestError(
                f"runtime flag value {token!r} follows no flag that takes a value; write each "
                "value right after its flag, as in ['--temp', '0.7']",
                param="runtime-flags",
            )
        if token in SWITCH_FLAGS:
            index += 1
            continue
        value = flags[index + 1] if index + 1 < len(flags) else None
        if value is None or _is_flag(value):
            shown = "no value" if value is None else f"the flag {value!r}"
            raise _reject(token, f"it takes a value, and {shown} follows it")
        index += 2


BOUNDED_FLAGS: dict[str, tuple[int, int, str]] = {
    "-cram": (0, 1 << 20, "the memory guard counts it; -1 (no limit) cannot be budgeted"),
    "--cache-ram": (0, 1 << 20, "the memory guard counts it; -1 (no limit) cannot be budgeted"),
    "--threads-http": (1, 64, "every HTTP thread of the runner holds memory and a file"),
    "--prio": (-1, 2, "3 (realtime) can starve the host"),
    "--prio-batch": (0, 2, "3 (realtime) can starve the host"),
}
"""Flags whose value must be an integer in ``[low, high]``, and why the bounds are there."""


def _check_bounds(flags: Sequence[str]) -> None:
    for index, flag in enumerate(flags):
        bounds = BOUNDED_FLAGS.get(flag)
        if bounds is None:
            continue
        low, high, why = bounds
        value = flags[index + 1] if index + 1 < len(flags) else None
        try:
            number = int(value) if value is not None else None
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            shown = "no value" if value is None else repr(value)
            raise _reject(
                flag, f"it needs a whole number from {low} to {high}, got {shown} ({why})"
            )


RPC_FLAG = "--rpc"
"""llama-server's flag naming RPC workers (``host:port,...``); every occurrence adds workers."""


def _check_rpc(flags: Sequence[str]) -> None:
    """``--rpc`` takes a list of ``host:port`` workers and nothing else.

    The value reaches llama.cpp's endpoint parser, which aborts the runner on anything it cannot
    split; here it is checked as ``DMR_RPC_SERVERS`` is
    (:func:`~orchestrator.settings.parse_rpc_servers`): IPv4 addresses or host names, ports 1 to
    65535, no spaces, no repeats.
    """
    endpoints: list[str] = []
    for index, flag in enumerate(flags):
        if flag != RPC_FLAG:
            continue
        value = flags[index + 1] if index + 1 < len(flags) else ""
        try:
            parsed = parse_rpc_servers(value)
        except ValueError as ex:
            raise _reject(flag, str(ex)) from ex
        if not parsed or "".join(value.split()) != value:
            raise _reject(flag, "it needs a comma list of host:port workers without spaces")
        endpoints += parsed
    if len(set(endpoints)) != len(endpoints):
        raise _reject(RPC_FLAG, "a worker is listed twice")


def rpc_endpoints(argv: Sequence[str]) -> tuple[str, ...]:
    """Return the RPC workers ``argv`` gives llama-server, in order (every ``--rpc`` counts).

    Unlike the memory flags, ``--rpc`` accumulates: llama-server registers the workers of each
    occurrence. Values that do not parse are skipped (the allow-list refused them earlier).
    """
    found: list[str] = []
    words = list(argv)
    for index, word in enumerate(words[:-1]):
        if word == RPC_FLAG:
            try:
                found += [e for e in parse_rpc_servers(words[index + 1]) if e not in found]
            except ValueError:
                continue
    return tuple(found)

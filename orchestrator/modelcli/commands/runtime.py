"""Daemon and runner commands: ``status``, ``version``, ``ps``, ``df``, ``unload``/``stop``,
``logs``, ``configure`` (``configure show``) and ``purge``."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from typing import Any

from orchestrator import __version__, errors
from orchestrator.modelcli import formatting
from orchestrator.modelcli.compose_endpoints import status_endpoints
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import START_HINT
from orchestrator.settings import parse_duration

LOGS_FOLLOW_READ_TIMEOUT_SECONDS = 24 * 3600.0
ENGINE_KIND = "Docker Engine"
ENGINE_KIND_MANUAL = "Docker Engine (Manual Install)"
_MODES = ("completion", "embedding", "reranking")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the daemon and runner commands to the ``docker model`` parser."""
    cmd = commands.add_parser("status", help="Check if the Docker Model Runner is running")
    cmd.add_argument("--json", action="store_true", help="Format output in JSON")
    cmd.set_defaults(func=cmd_status)

    cmd = commands.add_parser("version", help="Show the Docker Model Runner version")
    cmd.set_defaults(func=cmd_version)

    cmd = commands.add_parser("ps", help="List running models")
    cmd.set_defaults(func=cmd_ps)

    cmd = commands.add_parser("df", help="Show Docker Model Runner disk usage")
    cmd.set_defaults(func=cmd_df)

    cmd = commands.add_parser("unload", aliases=["stop"], help="Unload running models")
    cmd.add_argument("models", nargs="*", metavar="MODEL")
    cmd.add_argument("--all", action="store_true", help="Unload all running models")
    cmd.add_argument("--backend", default="", help="Optional backend to target")
    cmd.set_defaults(func=cmd_unload, parser=cmd)

    cmd = commands.add_parser("logs", help="Fetch the Docker Model Runner logs")
    cmd.add_argument(
        "-f", "--follow", action="store_true", help="View logs with real-time streaming"
    )
    cmd.add_argument(
        "--no-engines", action="store_true", help="Exclude inference engine logs from the output"
    )
    cmd.set_defaults(func=cmd_logs)

    cmd = commands.add_parser(
        "configure",
        aliases=["config"],
        help="Configure runtime options for a model",
        usage="%(prog)s [OPTIONS] MODEL [-- RUNTIME_FLAGS...]\n       %(prog)s show [MODEL]",
    )
    cmd.add_argument("model", metavar="MODEL", help="model to configure, or 'show'")
    cmd.add_argument(
        "runtime_flags", nargs="*", metavar="RUNTIME_FLAGS", help="engine flags after '--'"
    )
    cmd.add_argument("--context-size", type=int, default=None, help="context size in tokens")
    cmd.add_argument(
        "--keep-alive",
        default=None,
        help="how long the model stays loaded when idle (5m, 1h, 0, -1 = forever)",
    )
    cmd.add_argument(
        "--pin", action="store_true", help="keep the model loaded (same as --keep-alive -1)"
    )
    cmd.add_argument("--mode", choices=_MODES, default=None, help="backend mode")
    cmd.add_argument(
        "--think",
        nargs="?",
        const="true",
        default=None,
        metavar="BOOL",
        help="enable reasoning (llama.cpp reasoning budget)",
    )
    cmd.add_argument(
        "--speculative-draft-model", default=None, help="draft model for speculative decoding"
    )
    cmd.add_argument(
        "--speculative-num-tokens",
        type=int,
        default=None,
        help="number of tokens to predict speculatively",
    )
    cmd.add_argument(
        "--speculative-min-acceptance-rate",
        type=float,
        default=None,
        help="minimum acceptance rate for speculative decoding",
    )
    cmd.add_argument(
        "--hf_overrides", default=None, help="vLLM HuggingFace config overrides (JSON)"
    )
    cmd.add_argument(
        "--gpu-memory-utilization", type=float, default=None, help="vLLM GPU memory fraction (0..1)"
    )
    cmd.set_defaults(func=cmd_configure, parser=cmd)

    cmd = commands.add_parser("purge", help="Remove all models")
    cmd.add_argument("-f", "--force", action="store_true", help="Forcefully remove all models")
    cmd.set_defaults(func=cmd_purge)


def _engine_kind(ctx: CliContext) -> str:
    return ENGINE_KIND_MANUAL if ctx.host_is_explicit else ENGINE_KIND


def cmd_status(args: argparse.Namespace, ctx: CliContext) -> int:
    """``status``: running or not, and each backend's state."""
    try:
        backends = ctx.client.get_json("/engines/status") or {}
        running = True
    except errors.ServiceUnavailableError as ex:
        if "cause" not in ex.details:
            raise
        backends, running = {}, False
    if args.json:
        # Compose reads "endpoint" (the URL its containers get) from this document, with
        # stderr mixed in: nothing but the JSON may be printed here.
        endpoints = status_endpoints(ctx.client.endpoint)
        document = {
            "running": running,
            "backends": backends,
            "kind": _engine_kind(ctx),
            "endpoint": endpoints.endpoint,
            "endpointHost": endpoints.endpoint_host,
        }
        ctx.out(json.dumps(document, ensure_ascii=False))
        return 0 if running else 1
    if not running:
        ctx.out("Docker Model Runner is not running")
        ctx.out("\nWhat's next:\n    " + START_HINT[0].upper() + START_HINT[1:])
        return 1
    ctx.out("Docker Model Runner is running")
    ctx.out()
    ctx.stdout.write(formatting.status_table(backends))
    return 0


def cmd_version(args: argparse.Namespace, ctx: CliContext) -> int:
    """``version``: client and server versions (the server may be unreachable)."""
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    ctx.out("Client:")
    ctx.out(f" Version:    {__version__}")
    ctx.out(f" OS/Arch:    {sys.platform}/{machine}")
    ctx.out()
    ctx.out("Server:")
    try:
        answer = ctx.client.get_json("/version") or {}
        ctx.out(f" Version:    {answer.get('version', '(unknown)')}")
        ctx.out(f" Engine:     {_engine_kind(ctx)}")
    except errors.OrchestratorError:
        ctx.out(" Version:    (not reachable)")
        ctx.out(" Engine:     (not reachable)")
    return 0


def cmd_ps(args: argparse.Namespace, ctx: CliContext) -> int:
    """``ps``: the runners the daemon has loaded."""
    entries = ctx.client.get_json("/engines/ps") or []
    ctx.stdout.write(
        formatting.ps_table(entries, datetime.fromtimestamp(ctx.clock(), tz=UTC))
    )
    return 0


def cmd_df(args: argparse.Namespace, ctx: CliContext) -> int:
    """``df``: disk used by models and by the inference engine."""
    ctx.stdout.write(formatting.df_table(ctx.client.get_json("/engines/df") or {}))
    return 0


def cmd_unload(args: argparse.Namespace, ctx: CliContext) -> int:
    """``unload MODEL... | --all``."""
    if args.all and args.models:
        args.parser.error("MODEL arguments cannot be used with --all")
    if not args.all and not args.models:
        args.parser.error("give at least one MODEL, or --all")
    body: dict[str, Any] = {"all": bool(args.all), "models": list(args.models)}
    if args.backend:
        body["backend"] = args.backend
    answer = ctx.client.post_json("/engines/unload", body) or {}
    count = int(answer.get("unloaded_runners") or 0)
    if count:
        ctx.out(f"Unloaded {count} model(s).")
    elif args.all:
        ctx.out("No models are running.")
    else:
        ctx.out("No such model(s) running.")
    return 0


def cmd_logs(args: argparse.Namespace, ctx: CliContext) -> int:
    """``logs [-f] [--no-engines]``: the daemon's merged service and engine log."""
    params = {
        "follow": "true" if args.follow else "false",
        "no-engines": "true" if args.no_engines else "false",
    }
    response = ctx.client.request(
        "GET",
        "/logs",
        params=params,
        stream=True,
        read_timeout=LOGS_FOLLOW_READ_TIMEOUT_SECONDS if args.follow else None,
    )
    out = getattr(ctx.stdout, "buffer", None)
    for chunk in ctx.client.iter_chunks(response):
        if out is not None:
            out.write(chunk)
            out.flush()
        else:
            ctx.stdout.write(chunk.decode("utf-8", "replace"))
            ctx.stdout.flush()
    return 0


def _parse_bool(parser: argparse.ArgumentParser, name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("0", "f", "false", "no", "off"):
        return False
    parser.error(f"{name} expects true or false, not {text!r}")
    raise AssertionError("unreachable")  # pragma: no cover


def _keep_alive(args: argparse.Namespace) -> str | None:
    if args.pin and args.keep_alive is not None:
        args.parser.error("--pin and --keep-alive cannot be used together")
    if args.pin:
        return "-1"
    if args.keep_alive is None:
        return None
    try:
        parse_duration(args.keep_alive)
    except ValueError:
        args.parser.error(
            f"--keep-alive expects a duration such as 5m, 1h, 0 or -1, not {args.keep_alive!r}"
        )
    return str(args.keep_alive)


def _speculative(args: argparse.Namespace) -> dict[str, Any]:
    fields = (
        ("draft_model", args.speculative_draft_model or None),
        ("num_tokens", args.speculative_num_tokens),
        ("min_acceptance_rate", args.speculative_min_acceptance_rate),
    )
    return {key: value for key, value in fields if value is not None}


def _vllm(args: argparse.Namespace) -> dict[str, Any]:
    vllm: dict[str, Any] = {}
    if args.hf_overrides is not None:
        try:
            vllm["hf-overrides"] = json.loads(args.hf_overrides)
        except ValueError:
            args.parser.error("--hf_overrides expects a JSON object")
    if args.gpu_memory_utilization is not None:
        if not 0 < args.gpu_memory_utilization <= 1:
            args.parser.error("--gpu-memory-utilization expects a number between 0 and 1")
        vllm["gpu-memory-utilization"] = args.gpu_memory_utilization
    return vllm


def build_configure_request(args: argparse.Namespace) -> dict[str, Any]:
    """Return the ``POST /engines/_configure`` body for parsed ``configure`` arguments.

    Keys follow DMR's mixed spelling (``context-size``, ``runtime-flags``, ``keep_alive``).
    Usage errors call ``args.parser.error`` (exit status 2).
    """
    body: dict[str, Any] = {"model": args.model}
    if args.mode:
        body["mode"] = args.mode
    if args.context_size is not None:
        if args.context_size == 0 or args.context_size < -1:
            args.parser.error(
                "--context-size must be a positive number of tokens (or -1 for the model maximum)"
            )
        body["context-size"] = args.context_size
    if args.runtime_flags:
        body["runtime-flags"] = list(args.runtime_flags)
    keep_alive = _keep_alive(args)
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if speculative := _speculative(args):
        body["speculative"] = speculative
    if args.think is not None:
        think = _parse_bool(args.parser, "--think", args.think)
        body["llamacpp"] = {"reasoning-budget": -1 if think else 0}
    if vllm := _vllm(args):
        body["vllm"] = vllm
    return body


def cmd_configure(args: argparse.Namespace, ctx: CliContext) -> int:
    """``configure [flags] MODEL [-- flags]`` and ``configure show [MODEL]``."""
    if args.model == "show":
        if len(args.runtime_flags) > 1:
            args.parser.error("'configure show' takes at most one MODEL")
        params = {"model": args.runtime_flags[0]} if args.runtime_flags else None
        ctx.stdout.write(
            formatting.format_json(ctx.client.get_json("/engines/_configure", params=params) or [])
        )
        return 0
    ctx.client.request(
        "POST", "/engines/_configure", json_body=build_configure_request(args)
    ).close()
    return 0


def cmd_purge(args: argparse.Namespace, ctx: CliContext) -> int:
    """``purge [-f]``: unload everything and empty the model store (asks first)."""
    if not args.force:
        ctx.stdout.write(
            "WARNING! This will remove the entire models directory.\n"
            "Are you sure you want to continue? [y/N] "
        )
        ctx.stdout.flush()
        answer = ctx.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            ctx.out("Aborted.")
            return 0
    ctx.client.post_json("/engines/unload", {"all": True})
    ctx.client.request("DELETE", "/models/purge").close()
    ctx.out("Model cache removed.")
    return 0

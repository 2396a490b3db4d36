"""``docker model compose up|down|metadata``: the Compose provider protocol (hidden, as in DMR).

A Compose service with ``provider: {type: model, options: {model: ai/smollm2}}`` makes Compose
run ``docker model compose up --project-name P --model ai/smollm2 [...] SERVICE`` and read its
stdout: one JSON object a line, ``{"type": "info"|"error"|"setenv", "message": ...}``. Each
``setenv`` ``KEY=VALUE`` becomes ``<SERVICE>_KEY`` in the services that depend on it: ``URL``
(the OpenAI base URL a container reaches, see
:mod:`orchestrator.modelcli.compose_endpoints`) and ``MODEL`` (the models, comma-separated).
``up`` pulls the models that are not in the store and applies ``--context-size``,
``--runtime-flags`` and the speculative-decoding options with ``_configure``, as DMR's does;
``down`` has nothing to undo; ``metadata`` describes both commands' parameters for Compose.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator import errors
from orchestrator.modelcli.commands.manage import pull_model
from orchestrator.modelcli.compose_endpoints import status_endpoints
from orchestrator.modelcli.context import CliContext

DESCRIPTION = "Docker Model Runner"
# (name, type as pflag names it, default as DMR prints it, required, description): the
# parameters of `up` exactly as DMR's metadata lists them, so Compose validates the same options.
UP_PARAMETERS: tuple[tuple[str, str, str, bool, str], ...] = (
    ("backend", "string", "llama.cpp", False, "inference backend to use"),
    ("context-size", "int64", "-1", False, "context size for the model"),
    ("model", "stringArray", "[]", True, "model to use"),
    ("runtime-flags", "string", "", False, "raw runtime flags to pass to the inference engine"),
    ("speculative-draft-model", "string", "", False, "draft model for speculative decoding"),
    ("speculative-min-acceptance-rate", "float64", "0", False,
     "minimum acceptance rate for speculative decoding"),
    ("speculative-num-tokens", "int", "0", False, "number of tokens to predict speculatively"),
)  # fmt: skip
INT32_RANGE = (-(2**31), 2**31 - 1)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the hidden ``compose`` command (Compose calls it; users do not)."""
    cmd = commands.add_parser("compose")
    cmd.add_argument("--project-name", default="", help=argparse.SUPPRESS)
    events = cmd.add_subparsers(dest="event", metavar="EVENT")
    up = events.add_parser("up")
    up.add_argument("--project-name", default="", help=argparse.SUPPRESS)
    up.add_argument("--model", action="append", default=[], dest="models")
    up.add_argument("--context-size", type=int, default=None)
    up.add_argument("--runtime-flags", default="")
    up.add_argument("--backend", default="llama.cpp")
    up.add_argument("--speculative-draft-model", default="")
    up.add_argument("--speculative-num-tokens", type=int, default=0)
    up.add_argument("--speculative-min-acceptance-rate", type=float, default=0.0)
    up.add_argument("service", nargs="?", default="")
    up.set_defaults(func=cmd_compose_up)
    down = events.add_parser("down")
    down.add_argument("--project-name", default="", help=argparse.SUPPRESS)
    down.add_argument("service", nargs="?", default="")
    down.set_defaults(func=lambda args, ctx: 0)
    metadata = events.add_parser("metadata")
    metadata.set_defaults(func=cmd_compose_metadata)


def _send(ctx: CliContext, kind: str, message: str) -> None:
    ctx.out(json.dumps({"type": kind, "message": message}))


def _stored_names(ctx: CliContext) -> set[str]:
    names: set[str] = set()
    for model in ctx.client.get_json("/models") or []:
        names.add(str(model.get("id", "")))
        names.update(str(tag) for tag in model.get("tags") or [])
    return names


def configure_request(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """Return the ``_configure`` body DMR's ``compose up`` sends for ``model``."""
    body: dict[str, Any] = {"model": model}
    if args.context_size is not None:
        low, high = INT32_RANGE
        if not low <= args.context_size <= high:
            raise errors.InvalidRequestError(
                f"context-size {args.context_size} is out of range (must be between {low} and "
                f"{high})"
            )
        body["context-size"] = args.context_size
    if args.runtime_flags:
        body["raw-runtime-flags"] = args.runtime_flags
    draft, tokens, rate = (
        args.speculative_draft_model, args.speculative_num_tokens,
        args.speculative_min_acceptance_rate,
    )  # fmt: skip
    if draft or tokens > 0 or rate > 0:
        body["speculative"] = {
            "draft_model": draft, "num_tokens": tokens, "min_acceptance_rate": rate,
        }  # fmt: skip
    return body


def cmd_compose_up(args: argparse.Namespace, ctx: CliContext) -> int:
    """``compose up --model M [...]``: pull what is missing, configure, tell Compose the URL."""
    if not args.models:
        _send(ctx, "error", "options.model is required")
        return 1
    if args.backend != "llama.cpp":
        _send(ctx, "error", f"backend {args.backend!r} is not available; this runner has llama.cpp")
        return 1
    _send(ctx, "info", "Initializing model runner...")
    try:
        stored = _stored_names(ctx)
        for model in args.models:
            if model not in stored:
                _send(ctx, "info", pull_model(ctx, model))
        if args.context_size is not None and args.context_size > 0:
            _send(ctx, "info", f"Setting context size to {args.context_size}")
        if args.runtime_flags:
            _send(ctx, "info", f"Setting raw runtime flags to {args.runtime_flags}")
        if args.speculative_draft_model:
            _send(ctx, "info", "Enabling speculative decoding with draft model: "
                  f"{args.speculative_draft_model}")  # fmt: skip
        for model in args.models:
            ctx.client.post_json("/engines/_configure", configure_request(args, model))
            _send(ctx, "info", f"Successfully configured backend for model {model}")
    except errors.OrchestratorError as ex:
        _send(ctx, "error", ex.message)
        raise
    _send(ctx, "setenv", f"URL={status_endpoints(ctx.client.endpoint).endpoint}")
    _send(ctx, "setenv", f"MODEL={','.join(args.models)}")
    return 0


def cmd_compose_metadata(args: argparse.Namespace, ctx: CliContext) -> int:
    """``compose metadata``: the parameters of ``up`` and ``down``, DMR's JSON."""
    up = [
        {"name": name, "description": text, "required": required, "type": kind,
         **({"default": default} if default else {})}
        for name, kind, default, required, text in UP_PARAMETERS
    ]  # fmt: skip
    document = {"description": DESCRIPTION, "up": {"parameters": up}, "down": {"parameters": None}}
    ctx.stdout.write(json.dumps(document, separators=(",", ":")))
    return 0

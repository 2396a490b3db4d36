"""Model management: ``list``/``ls``, ``pull``, ``push``, ``rm``, ``tag``, ``inspect``, ``show``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import requests

from orchestrator import errors
from orchestrator.modelcli import formatting
from orchestrator.modelcli.commands import openai_list
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import model_path, parse_progress_line
from orchestrator.modelcli.progress_display import ProgressDisplay
from orchestrator.modelcli.registry_credentials import registry_auth_headers
from orchestrator.store.reference import parse_reference

PULL_ATTEMPTS = 4
RETRY_STATUSES = (502, 503, 504)
JSON_ACCEPT = {"Accept": "application/json"}
# NOTE: module attribute so tests can make the retry back-off instant.
_sleep = time.sleep


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the model commands to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "list", aliases=["ls"], help="List the models pulled to your local environment"
    )
    cmd.add_argument("model", nargs="?", metavar="MODEL", help="only this repository or tag")
    cmd.add_argument("--json", action="store_true", help="List models in a JSON format")
    cmd.add_argument("--openai", action="store_true", help="List models in an OpenAI format")
    cmd.add_argument("-q", "--quiet", action="store_true", help="Only show model IDs")
    cmd.add_argument(
        "--openaiurl", default="", help="OpenAI-compatible API endpoint URL to list models from"
    )
    cmd.set_defaults(func=cmd_list, parser=cmd)

    cmd = commands.add_parser(
        "pull", help="Pull a model from Docker Hub or HuggingFace to your local environment"
    )
    cmd.add_argument("model", metavar="MODEL")
    cmd.set_defaults(func=cmd_pull)

    cmd = commands.add_parser("push", help="Push a model to Docker Hub")
    cmd.add_argument("model", metavar="MODEL")
    cmd.set_defaults(func=cmd_push)

    cmd = commands.add_parser(
        "rm", aliases=["remove"], help="Remove local models downloaded from Docker Hub"
    )
    cmd.add_argument("models", nargs="+", metavar="MODEL")
    cmd.add_argument("-f", "--force", action="store_true", help="Forcefully remove the model")
    cmd.set_defaults(func=cmd_rm)

    cmd = commands.add_parser("tag", help="Tag a model")
    cmd.add_argument("source", metavar="SOURCE")
    cmd.add_argument("target", metavar="TARGET")
    cmd.set_defaults(func=cmd_tag)

    cmd = commands.add_parser("inspect", help="Display detailed information on one model")
    cmd.add_argument("model", metavar="MODEL")
    cmd.add_argument("--openai", action="store_true", help="List model in an OpenAI format")
    cmd.add_argument("-r", "--remote", action="store_true", help="Show info for remote models")
    cmd.set_defaults(func=cmd_inspect, parser=cmd)

    cmd = commands.add_parser("show", help="Show information for a model")
    cmd.add_argument("model", metavar="MODEL")
    cmd.add_argument("-r", "--remote", action="store_true", help="Show info for remote models")
    cmd.set_defaults(func=cmd_show)


# --- progress streams -------------------------------------------------------------------------


def _stream_error(event: dict[str, Any]) -> errors.OrchestratorError:
    message = str(event.get("message") or "the transfer failed")
    message = message.removeprefix("Error: ").strip()
    code = event.get("code")
    by_code = {cls.code: cls for cls in (errors.ModelNotFoundError, errors.RegistryDeniedError)}
    cls = (
        by_code.get(code, errors.OrchestratorError)
        if isinstance(code, str)
        else errors.OrchestratorError
    )
    return cls(message)


def follow_progress(ctx: CliContext, response: requests.Response, display: ProgressDisplay) -> str:
    """Draw a progress stream until its ``success`` line; return that line's message.

    Raises:
        OrchestratorError: The stream carried an ``error`` line or ended without success.
    """
    success: str | None = None
    failure: dict[str, Any] | None = None
    try:
        for line in ctx.client.iter_lines(response):
            event = parse_progress_line(line)
            if event is None:
                continue
            kind = event.get("type")
            if kind == "error":
                failure = event
            elif kind == "success":
                success = str(event.get("message") or "")
            elif kind == "text" and failure is None:
                failure = {"message": event.get("message")}
            else:
                display.handle(event)
    finally:
        display.finish()
        response.close()
    if failure is not None:
        raise _stream_error(failure)
    if success is None:
        raise errors.ServiceUnavailableError(
            "the daemon ended the transfer without reporting success; run the command again "
            "(finished layers are kept)",
            details={"broken": True},
        )
    return success


def _is_retryable(ex: errors.OrchestratorError) -> bool:
    return ex.details.get("status") in RETRY_STATUSES or bool(ex.details.get("broken"))


def transfer(
    ctx: CliContext,
    path: str,
    body: dict[str, Any] | None,
    *,
    mode: str,
    headers: Mapping[str, str] | None = None,
) -> str:
    """POST a pull/push and follow its progress, retrying transient failures (1, 2, 4 s).

    ``headers`` go with the request besides ``Accept`` (the registry credentials).

    Returns:
        The daemon's success message (``Model pulled successfully``, ``Using cached model``...).
    """
    delay = 1.0
    for attempt in range(1, PULL_ATTEMPTS + 1):
        display = ProgressDisplay(ctx.stderr, is_tty=ctx.stderr_is_tty(), mode=mode)
        try:
            response = ctx.client.request(
                "POST", path, json_body=body, headers={**JSON_ACCEPT, **(headers or {})},
                stream=True,
            )  # fmt: skip
            return follow_progress(ctx, response, display)
        except errors.OrchestratorError as ex:
            if attempt == PULL_ATTEMPTS or not _is_retryable(ex):
                raise
            ctx.err(f"{ex.message}; retrying in {delay:.0f} s")
            _sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _token_body(ctx: CliContext, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    try:
        is_hf = parse_reference(model).is_huggingface
    except errors.InvalidReferenceError:
        is_hf = False
    token = ctx.environ.get("HF_TOKEN", "")
    if is_hf and token:
        body["bearer-token"] = token
    return body


def pull_model(ctx: CliContext, model: str) -> str:
    """Pull ``model`` through the daemon, drawing progress; return the success message."""
    body = {"from": model, **_token_body(ctx, model)}
    headers = registry_auth_headers(model, ctx.environ)
    try:
        return transfer(ctx, "/models/create", body, mode="pull", headers=headers)
    except KeyboardInterrupt:
        ctx.err(f"\npull interrupted; run '{ctx.prog} pull {model}' again to resume")
        raise


def cmd_pull(args: argparse.Namespace, ctx: CliContext) -> int:
    """``pull MODEL``."""
    ctx.out(pull_model(ctx, args.model))
    return 0


def cmd_push(args: argparse.Namespace, ctx: CliContext) -> int:
    """``push MODEL``."""
    body = _token_body(ctx, args.model) or None
    headers = registry_auth_headers(args.model, ctx.environ)
    try:
        message = transfer(ctx, model_path(args.model, "push"), body, mode="push", headers=headers)
    except KeyboardInterrupt:
        ctx.err(f"\npush interrupted; run '{ctx.prog} push {args.model}' again")
        raise
    ctx.out(message)
    return 0


# --- local models -----------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, ctx: CliContext) -> int:
    """``list [MODEL]`` with ``--json``, ``--openai``, ``-q``, ``--openaiurl``."""
    if args.openaiurl:
        return openai_list.list_openai_endpoint(args, ctx)
    if args.openai and args.quiet:
        args.parser.error("--quiet flag cannot be used with --openai flag")
    if args.openai:
        ctx.stdout.write(formatting.format_json(ctx.client.get_json("/engines/v1/models")))
        return 0
    models = ctx.client.get_json("/models") or []
    if args.model:
        models = formatting.filter_models(models, args.model)
    if args.json:
        ctx.stdout.write(formatting.format_json(models))
    elif args.quiet:
        for model in models:
            ctx.out(formatting.short_id(str(model.get("id", ""))))
    else:
        ctx.stdout.write(formatting.list_table(models, ctx.clock()))
    return 0


def cmd_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    """``rm MODEL...``: print ``Untagged:``/``Deleted:`` lines; one error line per failure."""
    status = 0
    for model in args.models:
        try:
            response = ctx.client.request(
                "DELETE", model_path(model), params={"force": "true" if args.force else "false"}
            )
        except errors.ServiceUnavailableError:
            raise
        except errors.OrchestratorError as ex:
            message = f"no such model: {model}" if ex.status == 404 else ex.message
            ctx.err(f"{ctx.prog}: {message}")
            status = 1
            continue
        try:
            entries = response.json() if response.content.strip() else []
        except ValueError:
            entries = []
        for entry in entries or []:
            for key, value in entry.items():
                ctx.out(f"{key}: {value}")
    return status


def cmd_tag(args: argparse.Namespace, ctx: CliContext) -> int:
    """``tag SOURCE TARGET``."""
    target = parse_reference(args.target)
    if target.digest:
        raise errors.InvalidReferenceError(
            f"cannot tag with {args.target!r}: a target is a name and a tag, not a digest; "
            f"drop the '@sha256:...' part"
        )
    ctx.client.request(
        "POST", model_path(args.source, "tag"), params={"repo": target.name, "tag": target.tag}
    ).close()
    ctx.out(f'Model "{args.source}" tagged successfully with "{args.target}"')
    return 0


def _inspect(ctx: CliContext, model: str, remote: bool) -> Any:
    params = {"remote": "true"} if remote else None
    return ctx.client.get_json(model_path(model), params=params)


def cmd_inspect(args: argparse.Namespace, ctx: CliContext) -> int:
    """``inspect MODEL`` (``--openai``, ``--remote``)."""
    if args.openai and args.remote:
        args.parser.error("--remote flag cannot be used with --openai flag")
    if args.openai:
        value = ctx.client.get_json(
            "/engines/v1/models/" + model_path(args.model)[len("/models/") :]
        )
    else:
        value = _inspect(ctx, args.model, args.remote)
    ctx.stdout.write(formatting.format_json(value))
    return 0


def cmd_show(args: argparse.Namespace, ctx: CliContext) -> int:
    """``show MODEL``: the human-readable view."""
    ctx.stdout.write(formatting.show_text(_inspect(ctx, args.model, args.remote) or {}))
    return 0

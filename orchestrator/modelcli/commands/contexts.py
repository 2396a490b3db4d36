"""``context create|use|ls|rm|inspect``: named daemon endpoints, as DMR's ``docker model context``.

None of these talks to the daemon. ``create NAME --host URL [--tls] [--tls-skip-verify]
[--tls-ca-cert PEM] [--description TEXT]`` stores one; ``use NAME`` selects it (``default``
goes back to ``http://localhost:12434``); ``ls`` prints NAME, HOST, DESCRIPTION, CURRENT;
``rm NAME...`` deletes (not the selected one); ``inspect NAME...`` prints JSON. The selected
context is what every other command talks to unless ``MODEL_RUNNER_HOST`` is set
(:mod:`orchestrator.modelcli.endpoint`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.errors import InvalidRequestError, OrchestratorError
from orchestrator.modelcli import formatting
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.context_store import (
    DEFAULT_CONTEXT,
    ContextStore,
    ModelContext,
    TlsSettings,
    now_rfc3339,
)
from orchestrator.modelcli.daemon_client import DEFAULT_HOST

DEFAULT_DESCRIPTION = "Default Docker Model Runner endpoint"
LS_HEADERS = ("NAME", "HOST", "DESCRIPTION", "CURRENT")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``context`` and its subcommands to the ``docker model`` parser."""
    parent = commands.add_parser("context", help="Manage Docker Model Runner contexts")
    parent.set_defaults(func=cmd_context_help, parser=parent)
    subcommands = parent.add_subparsers(dest="context_command", metavar="COMMAND")

    cmd = subcommands.add_parser("create", help="Create a named Model Runner context")
    cmd.add_argument("name", metavar="NAME")
    cmd.add_argument(
        "--host", default="", help="Model Runner API base URL (e.g. http://192.168.1.100:12434)"
    )
    cmd.add_argument(
        "--tls", action="store_true", help="Enable TLS for connections to this context"
    )
    cmd.add_argument(
        "--tls-skip-verify", action="store_true", help="Skip TLS server certificate verification"
    )
    cmd.add_argument(
        "--tls-ca-cert",
        default="",
        help="Path to a custom CA certificate PEM file for TLS verification",
    )
    cmd.add_argument(
        "--description", default="", help="Optional human-readable description for this context"
    )
    cmd.set_defaults(func=cmd_create, parser=cmd)

    cmd = subcommands.add_parser(
        "use",
        help="Set the active Model Runner context",
        description='Set the active Model Runner context. Pass "default" to go back to '
        "the default endpoint.",
    )
    cmd.add_argument("name", metavar="NAME")
    cmd.set_defaults(func=cmd_use, parser=cmd)

    cmd = subcommands.add_parser("ls", aliases=["list"], help="List Model Runner contexts")
    cmd.set_defaults(func=cmd_ls, parser=cmd)

    cmd = subcommands.add_parser(
        "rm", aliases=["remove"], help="Remove one or more Model Runner contexts"
    )
    cmd.add_argument("names", nargs="+", metavar="NAME")
    cmd.set_defaults(func=cmd_rm, parser=cmd)

    cmd = subcommands.add_parser(
        "inspect", help="Display detailed information about one or more contexts"
    )
    cmd.add_argument("names", nargs="+", metavar="NAME")
    cmd.set_defaults(func=cmd_inspect, parser=cmd)


def cmd_context_help(args: argparse.Namespace, ctx: CliContext) -> int:
    """``context`` alone: print its subcommands."""
    args.parser.print_help(ctx.stdout)
    return 0


def _quoted(name: str) -> str:
    # Go's %q, which DMR's messages use: a double-quoted, escaped string.
    return json.dumps(name, ensure_ascii=False)


def _warn_if_overridden(ctx: CliContext) -> None:
    host = ctx.environ.get("MODEL_RUNNER_HOST", "")
    if host:
        ctx.err(f"Warning: MODEL_RUNNER_HOST={_quoted(host)} overrides the active context.")


def check_host(host: str) -> str:
    """Return the ``--host`` URL if it names a daemon (http, https or a unix socket).

    Raises:
        InvalidRequestError: Missing, without a scheme or host, or another scheme.
    """
    if not host:
        raise InvalidRequestError("--host is required")
    parts = urlsplit(host)
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise InvalidRequestError(
                "invalid --host URL: a unix socket needs an absolute path, e.g. "
                "unix:///run/docker-model-runner/api.sock"
            )
        return host
    if parts.scheme not in ("http", "https"):
        if not parts.scheme or not parts.netloc:
            raise InvalidRequestError(
                "invalid --host URL: must include scheme and host, e.g. http://192.168.1.100:12434"
            )
        raise InvalidRequestError(
            f"invalid --host URL: unsupported scheme {_quoted(parts.scheme)} "
            f"(must be http or https)"
        )
    if not parts.hostname:
        raise InvalidRequestError(
            "invalid --host URL: must include scheme and host, e.g. http://192.168.1.100:12434"
        )
    return host


def cmd_create(args: argparse.Namespace, ctx: CliContext) -> int:
    """``context create NAME --host URL``."""
    host = check_host(args.host.strip())
    ca_cert = ""
    if args.tls_ca_cert:
        path = Path(args.tls_ca_cert).expanduser()
        ca_cert = os.path.abspath(path)
        # Checked now, so a typo shows here rather than on the next command that connects.
        try:
            Path(ca_cert).read_bytes()
        except OSError as ex:
            raise InvalidRequestError(
                f"--tls-ca-cert: cannot read {_quoted(ca_cert)}: {ex.strerror}"
            ) from ex
    context = ModelContext(
        host=host,
        tls=TlsSettings(enabled=args.tls, skip_verify=args.tls_skip_verify, ca_cert=ca_cert),
        description=args.description,
        created_at=now_rfc3339(),
    )
    ContextStore.for_environ(ctx.environ).create(args.name, context)
    ctx.out(f"Context {_quoted(args.name)} created.")
    return 0


def cmd_use(args: argparse.Namespace, ctx: CliContext) -> int:
    """``context use NAME``."""
    ContextStore.for_environ(ctx.environ).set_active(args.name)
    ctx.out(f"Current context is now {_quoted(args.name)}.")
    _warn_if_overridden(ctx)
    return 0


def cmd_ls(args: argparse.Namespace, ctx: CliContext) -> int:
    """``context ls``: ``default`` first, then the named contexts by name."""
    store = ContextStore.for_environ(ctx.environ)
    contexts = store.list()
    active = store.active()
    _warn_if_overridden(ctx)
    rows = [[DEFAULT_CONTEXT, DEFAULT_HOST, DEFAULT_DESCRIPTION, _star(active, DEFAULT_CONTEXT)]]
    for name in sorted(contexts):
        context = contexts[name]
        rows.append([name, context.host, context.description, _star(active, name)])
    ctx.stdout.write(formatting.render_table(LS_HEADERS, rows))
    return 0


def _star(active: str, name: str) -> str:
    return "*" if active == name else ""


def cmd_rm(args: argparse.Namespace, ctx: CliContext) -> int:
    """``context rm NAME...``: remove each; report every failure, then fail."""
    store = ContextStore.for_environ(ctx.environ)
    failed = False
    for name in args.names:
        try:
            store.remove(name)
        except OrchestratorError as ex:
            ctx.err(f"Error: {name}: {ex.message}")
            failed = True
            continue
        ctx.out(f"Context {_quoted(name)} removed.")
    if failed:
        raise InvalidRequestError("one or more contexts could not be removed")
    return 0


def cmd_inspect(args: argparse.Namespace, ctx: CliContext) -> int:
    """``context inspect NAME...``: a JSON array, ``name`` first."""
    store = ContextStore.for_environ(ctx.environ)
    documents = []
    for name in args.names:
        if name == DEFAULT_CONTEXT:
            context = ModelContext(host=DEFAULT_HOST, description=DEFAULT_DESCRIPTION)
        else:
            context = store.get(name)
        documents.append({"name": name, **context.to_json()})
    ctx.stdout.write(formatting.format_json(documents))
    return 0

"""``requests``: the requests and answers the daemon recorded (``GET /engines/requests``).

DMR's command (``cmd/cli/commands/requests.go``), same flags: ``--model`` filters,
``-f/--follow`` streams each request as it finishes, ``--include-existing`` (with ``-f`` only)
first sends the records kept now. Output as DMR's: the JSON array as the daemon sends it, or,
when following, one JSON array (of one record) per line. One deliberate difference: DMR prints
everything on stderr (cobra's ``Println``); here the records go to stdout, so ``docker model
requests | jq`` works, and only the two status lines ("Connected to request stream...",
"Stream closed by server.") go to stderr.
"""

from __future__ import annotations

import argparse

from orchestrator import errors
from orchestrator.modelcli.context import CliContext

# The daemon sends a comment line every 15 s while a follow is quiet; four missed means gone.
FOLLOW_READ_TIMEOUT_SECONDS = 60.0
_SHOWN_EVENTS = frozenset({"new_request", "existing_request"})


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``requests`` to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "requests", help="Fetch requests+responses from Docker Model Runner"
    )
    cmd.add_argument("-f", "--follow", action="store_true", help="Follow requests stream")
    cmd.add_argument(
        "--include-existing",
        action="store_true",
        help="Include existing requests when starting to follow (only available with --follow)",
    )
    cmd.add_argument("--model", default="", help="Specify the model to filter requests")
    cmd.set_defaults(func=cmd_requests)


def cmd_requests(args: argparse.Namespace, ctx: CliContext) -> int:
    """``requests [--model M] [-f [--include-existing]]``."""
    if args.include_existing and not args.follow:
        raise errors.InvalidRequestError("--include-existing can only be used with --follow")
    params = {"model": args.model} if args.model else {}
    if not args.follow:
        response = ctx.client.request(
            "GET", "/engines/requests", params=params, headers={"Accept": "application/json"}
        )
        text = response.text
        ctx.out(text, end="" if text.endswith("\n") else "\n")
        return 0
    if args.include_existing:
        params["include_existing"] = "true"
    response = ctx.client.request(
        "GET",
        "/engines/requests",
        params=params,
        headers={"Accept": "text/event-stream", "Cache-Control": "no-cache"},
        stream=True,
        read_timeout=FOLLOW_READ_TIMEOUT_SECONDS,
    )
    ctx.err("Connected to request stream. Press Ctrl+C to stop.")
    event = ""
    for line in ctx.client.iter_lines(response):
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event in _SHOWN_EVENTS:
            ctx.out(line[len("data: ") :])
            ctx.stdout.flush()
    ctx.err("Stream closed by server.")
    return 0

"""``ls --openaiurl URL``: list the models of any OpenAI-compatible endpoint, as DMR does.

``GET URL/models`` (``URL`` is the API base, e.g. ``http://127.0.0.1:8080/v1``), without the
daemon and without credentials: DMR sends none, and this CLI's ``DMR_API_KEY`` belongs to its own
daemon, not to whatever the URL names. Output: the list object as JSON (``--json``) or a
``MODEL NAME  CREATED`` table sorted by ID; an optional ``MODEL`` argument keeps IDs whose
repository (the part before ``:``) equals it, or the exact ID when it has a tag.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import urlsplit

import requests

from orchestrator import errors
from orchestrator.modelcli import formatting
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import USER_AGENT, error_from_body

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024
HEADERS = ("MODEL NAME", "CREATED")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def models_url(base: str) -> str:
    """Return ``base`` joined with ``models`` (Go's ``url.JoinPath``, query kept).

    Raises:
        InvalidRequestError: Not an http(s) URL with a host.
    """
    parts = urlsplit(base.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidRequestError(
            f"invalid OpenAI URL {base!r}: use http(s)://host[:port]/path, e.g. "
            f"http://127.0.0.1:8080/v1"
        )
    path = parts.path.rstrip("/") + "/models"
    return parts._replace(path=path).geturl()


def matches(model_id: str, wanted: str) -> bool:
    """Return whether ``model_id`` is ``wanted`` (a tag) or in repository ``wanted``."""
    if ":" in wanted:
        return model_id == wanted
    return model_id.split(":", 1)[0] == wanted


def fetch_models(url: str) -> dict[str, Any]:
    """Return the model list object the endpoint answers ``GET url`` with.

    Raises:
        ServiceUnavailableError: The endpoint cannot be reached or stopped answering.
        OrchestratorError: An error status (its class), or an answer that is not a model list.
    """
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    if (urlsplit(url).hostname or "") in _LOOPBACK:
        session.trust_env = False
    try:
        with (
            session,
            session.get(
                url, timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS), stream=True
            ) as response,
        ):
            body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
            status = response.status_code
    except (requests.RequestException, OSError) as ex:
        raise errors.ServiceUnavailableError(
            f"failed to list models from the OpenAI endpoint {url}: {type(ex).__name__}; check "
            f"the --openaiurl address",
            details={"cause": str(ex)},
        ) from ex
    if status >= 400:
        raise error_from_body(status, body)
    if len(body) > MAX_ANSWER_BYTES:
        raise errors.OrchestratorError(f"the model list from {url} is too large to read")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as ex:
        raise errors.OrchestratorError(
            f"the endpoint {url} answered with something that is not JSON; check --openaiurl"
        ) from ex
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise errors.OrchestratorError(
            f"the endpoint {url} answered without a model list ('data'); check --openaiurl"
        )
    return document


def _created(entry: dict[str, Any]) -> int:
    value = entry.get("created")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_table(models: list[dict[str, Any]], now_unix: float) -> str:
    """Return DMR's table: IDs in case-insensitive order, creation as ``3 weeks ago``."""
    rows = [
        [
            str(model.get("id", "")),
            formatting.human_duration(max(0.0, now_unix - _created(model))) + " ago",
        ]
        for model in sorted(models, key=lambda m: str(m.get("id", "")).lower())
    ]
    return formatting.render_table(HEADERS, rows)


def list_openai_endpoint(args: argparse.Namespace, ctx: CliContext) -> int:
    """``ls --openaiurl URL [MODEL]`` (``--json``; ``--quiet`` is refused)."""
    if args.quiet:
        args.parser.error("--quiet flag cannot be used with --openaiurl flag")
    document = fetch_models(models_url(args.openaiurl))
    models = [entry for entry in document["data"] if isinstance(entry, dict)]
    if args.model:
        models = [entry for entry in models if matches(str(entry.get("id", "")), args.model)]
    document["data"] = models
    if args.json:
        ctx.stdout.write(formatting.format_json(document))
    else:
        ctx.stdout.write(openai_table(models, ctx.clock()))
    return 0

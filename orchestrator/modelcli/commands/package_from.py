"""``docker model package --from MODEL``: a variant of a local model, weights not copied.

The daemon builds the variant (``POST /models/<MODEL>/repackage``): a new config and manifest
that name the source's weight blobs, plus small layers for a new chat template and licenses,
which travel as text in the request. DMR's CLI instead exports the whole model, rebuilds it
and loads it back whenever a file is added; here no weight byte leaves the store.

With ``--push`` the variant is then pushed by the daemon (``POST /models/<target>/push`` with
the user's registry credentials): the registry is asked for each blob first (``HEAD``, then a
cross-repository mount from a repository of the same registry the source came from), so
weights already there are not uploaded again. The variant also stays in the local store; it
costs a manifest and a config there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestrator import errors
from orchestrator.modelcli.commands.manage import transfer
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import model_path
from orchestrator.modelcli.registry_credentials import registry_auth_headers
from orchestrator.store.repackage import MAX_TEXT_FILE_BYTES

REPACKAGE_READ_TIMEOUT_SECONDS = 120.0


def read_text_file(path: Path, role: str) -> str:
    """Return the UTF-8 text of ``path`` (a chat template or license).

    Raises:
        InvalidModelFileError: Missing, unreadable, too large, or not UTF-8 text.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TEXT_FILE_BYTES + 1)
    except OSError as ex:
        raise errors.InvalidModelFileError(
            f"{role} file {str(path)!r} cannot be read: {ex.strerror}; check the path"
        ) from ex
    if len(data) > MAX_TEXT_FILE_BYTES:
        raise errors.InvalidModelFileError(
            f"{role} file {str(path)!r} is larger than {MAX_TEXT_FILE_BYTES} bytes; with --from "
            f"it must be a text file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise errors.InvalidModelFileError(
            f"{role} file {str(path)!r} is not a UTF-8 text file; give a text file"
        )
    return text


def package_from(args: argparse.Namespace, ctx: CliContext) -> int:
    """Create the variant ``args.model`` of ``args.from_model``; push it with ``--push``."""
    if args.mmproj is not None:
        args.parser.error(
            "--mmproj cannot be used with --from; package the GGUF file with --gguf and --mmproj"
        )
    ctx.err(f"Reading model from daemon: {args.from_model!r}")
    body: dict[str, Any] = {"target": args.model}
    if args.context_size is not None:
        ctx.err(f"Setting context size {args.context_size}")
        body["context_size"] = args.context_size
    licenses = []
    for path in args.licenses:
        resolved = path.expanduser().resolve()
        ctx.err(f"Adding license file from {str(resolved)!r}")
        licenses.append({"name": resolved.name, "content": read_text_file(resolved, "license")})
    if licenses:
        body["licenses"] = licenses
    if args.chat_template is not None:
        resolved = args.chat_template.expanduser().resolve()
        ctx.err(f"Adding chat template file from {str(resolved)!r}")
        body["chat_template"] = read_text_file(resolved, "chat template")
    ctx.err("Creating lightweight model variant...")
    ctx.client.post_json(
        model_path(args.from_model, "repackage"),
        body,
        read_timeout=REPACKAGE_READ_TIMEOUT_SECONDS,
    )
    ctx.err("Model variant created successfully")
    if args.push:
        ctx.err("Pushing model to registry...")
        headers = registry_auth_headers(args.model, ctx.environ)
        transfer(ctx, model_path(args.model, "push"), None, mode="push", headers=headers)
        ctx.err("Model pushed successfully")
    return 0

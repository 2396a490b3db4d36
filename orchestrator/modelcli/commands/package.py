"""``docker model package``: turn a GGUF file (or shard set) into a model artifact.

Without ``--push`` the artifact is streamed as a tar (DMR spec section 3.6) to
``POST /models/load`` and then tagged with ``POST /models/<id>/tag``; files are read in chunks
by a generator, never whole. With ``--push`` it goes straight to the registry through
:class:`~orchestrator.registry.client.RegistryClient`, without the daemon. ``--from MODEL``
makes a variant of a local model that shares its weights
(:mod:`~orchestrator.modelcli.commands.package_from`).
"""

from __future__ import annotations

import argparse
import functools
import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import errors
from orchestrator.modelcli.commands.manage import follow_progress
from orchestrator.modelcli.commands.package_from import package_from
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import model_path
from orchestrator.modelcli.progress_display import ProgressDisplay
from orchestrator.store.reference import parse_reference

if TYPE_CHECKING:
    from orchestrator.store.builder import Artifact

CHUNK_BYTES = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
LOAD_READ_TIMEOUT_SECONDS = 600.0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``package`` to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "package",
        help="Package a GGUF file into a Docker model OCI artifact",
        description=(
            "Package a GGUF file into a Docker model OCI artifact, with optional licenses. The "
            "package is sent to the model runner, unless --push is specified. For a sharded "
            "model, --gguf names the first shard (model-00001-of-00003.gguf); the other shards "
            "must be next to it. --from MODEL makes a variant of a local model instead, "
            "sharing its weights."
        ),
    )
    cmd.add_argument("model", metavar="MODEL", help="reference to tag (or push) the artifact as")
    cmd.add_argument("--gguf", type=Path, default=None, help="path to the GGUF file (first shard)")
    cmd.add_argument(
        "--from",
        dest="from_model",
        default=None,
        metavar="MODEL",
        help=(
            "reference to an existing model to repackage (its weights are shared; change "
            "--context-size, --chat-template or add --license)"
        ),
    )
    cmd.add_argument(
        "-l",
        "--license",
        dest="licenses",
        action="append",
        type=Path,
        default=[],
        help="path to a license file (repeatable)",
    )
    cmd.add_argument(
        "--chat-template", type=Path, default=None, help="path to a Jinja chat template"
    )
    cmd.add_argument(
        "--mmproj", type=Path, default=None, help="path to a multimodal projector file"
    )
    cmd.add_argument("--context-size", type=int, default=None, help="context size in tokens")
    cmd.add_argument(
        "--push",
        action="store_true",
        help="push to the registry instead of loading into the model runner",
    )
    cmd.set_defaults(func=cmd_package, parser=cmd)


def _tar_header(name: str, size: int = 0, *, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o666
    info.size = 0 if directory else size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * ((BLOCK - size % BLOCK) % BLOCK)


def _file_chunks(path: Path, size: int, on_bytes: Callable[[int], None]) -> Iterator[bytes]:
    done = 0
    try:
        with path.open("rb") as handle:
            while done < size:
                chunk = handle.read(min(CHUNK_BYTES, size - done))
                if not chunk:
                    break
                done += len(chunk)
                on_bytes(done)
                yield chunk
    except OSError as ex:
        raise errors.InvalidModelFileError(
            f"cannot read {str(path)!r}: {ex.strerror}; check the path"
        ) from ex
    if done != size:
        raise errors.InvalidModelFileError(
            f"{str(path)!r} changed while it was being packaged; package it again"
        )


class TarBody:
    """The artifact as a tar body (``blobs/``, ``blobs/sha256/``, layers, config, manifest).

    Iterating yields the archive in chunks, reading each layer file as it goes; ``len()`` is
    the exact archive size, so ``requests`` sends a ``Content-Length`` instead of chunking.

    Args:
        artifact: What ``build_gguf_artifact`` returned.
        on_progress: Receives DMR-shaped ``progress`` events (mode ``load``) as bytes go out.
    """

    def __init__(
        self, artifact: Artifact, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self._artifact = artifact
        self._on_progress = on_progress
        self._total = sum(layer.size for layer in artifact.layers)

    def _small_entries(self) -> list[tuple[str, bytes]]:
        algorithm, _, hex_digest = self._artifact.config_digest.partition(":")
        return [
            (f"blobs/{algorithm}/{hex_digest}", self._artifact.config_bytes),
            ("manifest.json", self._artifact.manifest_bytes),
        ]

    def __len__(self) -> int:
        size = len(_tar_header("blobs", directory=True))
        size += len(_tar_header("blobs/sha256", directory=True))
        for layer in self._artifact.layers:
            algorithm, _, hex_digest = layer.digest.partition(":")
            size += len(_tar_header(f"blobs/{algorithm}/{hex_digest}", layer.size))
            size += layer.size + len(_padding(layer.size))
        for name, data in self._small_entries():
            size += len(_tar_header(name, len(data))) + len(data) + len(_padding(len(data)))
        return size + 2 * BLOCK

    def _report(self, digest: str, size: int, current: int) -> None:
        if self._on_progress is not None:
            self._on_progress(
                {
                    "type": "progress",
                    "total": self._total,
                    "layer": {"id": digest, "size": size, "current": current},
                    "mode": "load",
                }
            )

    def __iter__(self) -> Iterator[bytes]:
        yield _tar_header("blobs", directory=True)
        yield _tar_header("blobs/sha256", directory=True)
        for layer in self._artifact.layers:
            algorithm, _, hex_digest = layer.digest.partition(":")
            yield _tar_header(f"blobs/{algorithm}/{hex_digest}", layer.size)
            yield from _file_chunks(
                Path(layer.path),
                layer.size,
                functools.partial(self._report, layer.digest, layer.size),
            )
            yield _padding(layer.size)
        for name, data in self._small_entries():
            yield _tar_header(name, len(data))
            yield data
            yield _padding(len(data))
        yield b"\0" * (2 * BLOCK)


def _resolve(path: Path | None) -> Path | None:
    return path.expanduser().resolve() if path is not None else None


def _build(args: argparse.Namespace, ctx: CliContext) -> Artifact:
    from orchestrator.store.builder import build_gguf_artifact

    gguf = _resolve(args.gguf)
    assert gguf is not None
    ctx.err(f"Adding GGUF file from {str(gguf)!r}")
    if args.context_size is not None:
        ctx.err(f"Setting context size {args.context_size}")
    licenses = [path.expanduser().resolve() for path in args.licenses]
    for path in licenses:
        ctx.err(f"Adding license file from {str(path)!r}")
    if args.chat_template is not None:
        ctx.err(f"Adding chat template file from {str(_resolve(args.chat_template))!r}")
    if args.mmproj is not None:
        ctx.err(f"Adding multimodal projector file from {str(_resolve(args.mmproj))!r}")
    for path in [gguf, *licenses, _resolve(args.chat_template), _resolve(args.mmproj)]:
        if path is not None and not path.is_file():
            raise errors.InvalidModelFileError(f"{str(path)!r} is not a file; check the path")
    return build_gguf_artifact(
        gguf,
        licenses=licenses,
        chat_template=_resolve(args.chat_template),
        mmproj=_resolve(args.mmproj),
        context_size=args.context_size,
    )


def _load(ctx: CliContext, artifact: Artifact, model: str) -> None:
    target = parse_reference(model)
    display = ProgressDisplay(ctx.stderr, is_tty=ctx.stderr_is_tty(), mode="load")
    ctx.err("Loading model to Model Runner...")
    response = ctx.client.request(
        "POST",
        "/models/load",
        data=TarBody(artifact, display.handle),
        headers={"Content-Type": "application/x-tar", "Accept": "application/json"},
        stream=True,
        read_timeout=LOAD_READ_TIMEOUT_SECONDS,
    )
    display.finish()
    follow_progress(ctx, response, ProgressDisplay(io.StringIO(), is_tty=False, mode="load"))
    ctx.client.request(
        "POST",
        model_path(artifact.model_id, "tag"),
        params={"repo": target.name, "tag": target.tag},
    ).close()
    ctx.err("Model loaded successfully")


def _push(ctx: CliContext, artifact: Artifact, model: str) -> None:
    from orchestrator.registry.client import RegistryClient

    target = parse_reference(model)
    insecure = tuple(
        item.strip()
        for item in ctx.environ.get("DMR_INSECURE_REGISTRIES", "").split(",")
        if item.strip()
    )
    config_dir = ctx.environ.get("DOCKER_CONFIG")
    client = RegistryClient(
        insecure_registries=insecure,
        docker_config_dir=Path(config_dir) if config_dir else None,
        environ=ctx.environ,
    )
    display = ProgressDisplay(ctx.stderr, is_tty=ctx.stderr_is_tty(), mode="push")
    ctx.err("Pushing model to registry...")
    try:
        client.push_artifact(artifact, target, progress=display.handle)
    finally:
        display.finish()
    ctx.err("Model pushed successfully")


def cmd_package(args: argparse.Namespace, ctx: CliContext) -> int:
    """``package (--gguf PATH | --from MODEL) [options] MODEL``."""
    parser: argparse.ArgumentParser = args.parser
    if (args.gguf is None) == (args.from_model is None):
        parser.error("give exactly one of --gguf or --from")
    if args.context_size is not None and args.context_size <= 0:
        parser.error("--context-size must be a positive number of tokens")
    target = parse_reference(args.model)
    if target.digest:
        parser.error("MODEL must be a name with an optional tag, not a digest")
    if args.from_model is not None:
        return package_from(args, ctx)
    artifact = _build(args, ctx)
    if args.push:
        _push(ctx, artifact, args.model)
    else:
        _load(ctx, artifact, args.model)
    return 0

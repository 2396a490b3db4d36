"""The ``model-runner`` command: run the daemon, or import a GGUF file into the store offline.

``model-runner`` (or ``model-runner serve``) starts the daemon; every setting of
:data:`orchestrator.settings.SETTINGS` is also a flag. ``model-runner package`` writes a GGUF file
into the local store without a running daemon — what ``make run`` and the packages' post-install
step use to provision the default model.

Exit statuses: 0 success, 1 an :class:`OrchestratorError`, 2 bad usage or configuration,
130 interrupted (httpie's ``ExitStatus``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from orchestrator import __version__
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.settings import SETTINGS, Config, load

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# NOTE: a fixed creation time makes `make run` idempotent: the same GGUF file always gives the
# same manifest, so the default model keeps its ID across re-imports.
PROVISIONING_CREATED = datetime(2025, 1, 1, tzinfo=UTC)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            default=None,
            metavar=setting.name.upper(),
            # argparse treats '%' as a format directive ("10%" would crash --help).
            help=f"{setting.help} [env {setting.env}]".replace("%", "%%"),
        )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``model-runner``."""
    parser = argparse.ArgumentParser(
        prog="model-runner",
        description="Local AI model runner: Docker Model Runner's API on llama.cpp.",
    )
    parser.add_argument("--version", action="version", version=f"model-runner {__version__}")
    parser.add_argument("--config", dest="config_file", help="YAML config file (env DMR_CONFIG)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon in the foreground (default)")
    _add_setting_flags(serve)

    package = commands.add_parser(
        "package", help="import a GGUF file into the local store (no daemon needed)"
    )
    package.add_argument("--gguf", required=True, type=Path, help="GGUF file (first shard)")
    package.add_argument("--license", action="append", default=[], type=Path, dest="licenses")
    package.add_argument("--chat-template", type=Path, default=None)
    package.add_argument("--mmproj", type=Path, default=None)
    package.add_argument("--context-size", type=int, default=None)
    package.add_argument("--models-path", default=None, help="store root [env MODELS_PATH]")
    package.add_argument("tags", nargs="+", metavar="TAG", help="references to tag it with")
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides = {setting.name: getattr(args, setting.name, None) for setting in SETTINGS}
    config = load(config_file=args.config_file, overrides=overrides)
    from orchestrator.runtimedir import prepare_runtime_dir
    from orchestrator.server import run  # gunicorn is imported only for the daemon

    # Before anything listens or forks: a runtime directory another user controls is refused.
    prepare_runtime_dir(config)
    return run(config)


def _package(args: argparse.Namespace) -> int:
    from orchestrator.store.builder import build_gguf_artifact, store_artifact
    from orchestrator.store.reference import parse_reference
    from orchestrator.store.store import Store

    config: Config = load(config_file=args.config_file, overrides={"models_path": args.models_path})
    targets = [parse_reference(tag).tag_string for tag in args.tags]
    artifact = build_gguf_artifact(
        args.gguf.expanduser().resolve(),
        licenses=[path.expanduser().resolve() for path in args.licenses],
        chat_template=args.chat_template,
        mmproj=args.mmproj,
        context_size=args.context_size,
        created=PROVISIONING_CREATED,
    )
    store = Store(config.store_root)
    record = store_artifact(store, artifact, targets)
    print(f"Model {record.short_id} stored in {config.store_root} as {', '.join(targets)}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``model-runner`` and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "package":
            return _package(args)
        if args.command in (None, "serve"):
            if args.command is None:
                # `model-runner` alone serves with defaults: re-parse so the flags exist.
                args = parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "serve"])
            return _serve(args)
        parser.error(f"unknown command {args.command!r}")
    except ConfigError as ex:
        print(f"model-runner: {ex.message}", file=sys.stderr)
        return EXIT_USAGE
    except OrchestratorError as ex:
        print(f"model-runner: {ex.message}", file=sys.stderr)
        for key, value in ex.details.items():
            print(f"  {key}: {value}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK

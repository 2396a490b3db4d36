"""``docker model`` / ``docker-model``: the command line of Docker Model Runner.

Runs standalone (``docker-model list``) or as a Docker CLI plugin: ``docker model list`` runs
``docker-model model list`` (the first argument, the plugin name, is dropped) and
``docker-model docker-cli-plugin-metadata`` prints the plugin metadata.

Exit statuses: 0 success, 1 an :class:`~orchestrator.errors.OrchestratorError` (its message on
stderr, one line), 2 bad usage or configuration, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from orchestrator import __version__
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.modelcli.commands import (
    bench,
    compose_provider,
    contexts,
    manage,
    package,
    plugin,
    requests,
    run,
    runner_service,
    runtime,
    search,
)
from orchestrator.modelcli.context import CliContext
from orchestrator.settings import parse_registry_host
from orchestrator.store.reference import set_default_registry

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PLUGIN_COMMAND = "model"


def build_parser(prog: str = "docker model") -> argparse.ArgumentParser:
    """Return the parser of every command (``prog`` is how the user called us)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Docker Model Runner: pull, run, package and serve AI models.",
        epilog=f"Run '{prog} COMMAND --help' for more information on a command.",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="Commands")
    manage.register(commands)
    run.register(commands)
    runtime.register(commands)
    requests.register(commands)
    package.register(commands)
    bench.register(commands)
    plugin.register(commands)
    search.register(commands)
    contexts.register(commands)
    runner_service.register(commands)
    compose_provider.register(commands)
    return parser


def split_plugin_argv(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Drop the plugin name ``docker`` puts first; return the arguments and plugin mode."""
    arguments = list(argv)
    if arguments[:1] == [PLUGIN_COMMAND]:
        return arguments[1:], True
    return arguments, False


def main(argv: Sequence[str] | None = None, ctx: CliContext | None = None) -> int:
    """Run one ``docker model`` command and return its exit status.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        ctx: Streams and environment (default: the process's).
    """
    raw = list(sys.argv[1:] if argv is None else argv)
    context = ctx or CliContext()
    if raw[:1] == [plugin.METADATA_ARGUMENT]:
        context.out(json.dumps(metadata_document(), indent=4))
        return EXIT_OK
    arguments, plugin_mode = split_plugin_argv(raw)
    is_plugin = plugin_mode or bool(context.environ.get("DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"))
    context.prog = "docker model" if is_plugin else "docker-model"
    parser = build_parser(context.prog)
    try:
        args = parser.parse_args(arguments)
    except SystemExit as ex:
        # argparse exits 2 on bad usage (after printing usage) and 0 for --help.
        return ex.code if isinstance(ex.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        parser.print_help(context.stdout)
        return EXIT_OK
    if is_plugin and ctx is None:
        plugin.watch_plugin_socket(context.environ)
    try:
        registry = parse_registry_host(context.environ.get("DEFAULT_REGISTRY", ""))
    except ValueError as ex:
        context.err(f"{context.prog}: invalid DEFAULT_REGISTRY: {ex}")
        return EXIT_USAGE
    # DMR's CLI reads DEFAULT_REGISTRY too: it names the registry whose credentials go with a
    # pull or push of 'ai/smollm2', and how local tags are matched.
    previous_registry = set_default_registry(registry)
    try:
        return int(args.func(args, context))
    except SystemExit as ex:
        # A command's own parser.error(): usage problems found after parsing.
        return ex.code if isinstance(ex.code, int) else EXIT_USAGE
    except ConfigError as ex:
        context.err(f"{context.prog}: {ex.message}")
        return EXIT_USAGE
    except OrchestratorError as ex:
        context.err(f"{context.prog}: {ex.message}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        context.err("")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `docker model ls | head -1`: the reader left; that is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain about it again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    finally:
        set_default_registry(previous_registry)
        context.close()


def metadata_document() -> dict[str, str]:
    """Return the Docker CLI plugin metadata (``docker-cli-plugin-metadata``)."""
    return plugin.metadata()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

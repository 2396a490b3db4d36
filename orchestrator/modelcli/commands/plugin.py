"""The Docker CLI plugin side: metadata, ``install-plugin``, and the plugin socket.

A Docker CLI plugin is an executable named ``docker-model`` in ``$DOCKER_CONFIG/cli-plugins``
(``~/.docker/cli-plugins`` by default, ``/usr/libexec/docker/cli-plugins`` for packages). The
``docker`` client runs it with ``docker-cli-plugin-metadata`` to list it, and with
``model <command> ...`` to run it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from orchestrator import errors
from orchestrator.atomicfile import write_atomic
from orchestrator.modelcli.context import CliContext
from orchestrator.unixhttp import connect_unix_socket

PLUGIN_NAME = "docker-model"
METADATA_ARGUMENT = "docker-cli-plugin-metadata"
PACKAGED_PLUGIN_DIR = "/usr/libexec/docker/cli-plugins"
DMR_RELEASE = "v1.2.6"
"""The docker/model-runner release whose CLI behaviour this plugin implements.

Reported as the plugin ``Version``, which Compose reads as the feature level: it passes a
model's ``runtime_flags`` to ``configure`` only from ``v1.0.6`` on (``supportsRuntimeFlags`` in
``pkg/compose/model.go``) and drops them silently below that. The daemon keeps its own version
(``orchestrator.__version__``, ``GET /version``)."""


def metadata() -> dict[str, str]:
    """Return the plugin metadata the Docker client asks for."""
    return {
        "SchemaVersion": "0.1.0",
        "Vendor": "docker-model-runner (Python)",
        "Version": DMR_RELEASE,
        "ShortDescription": "Docker Model Runner",
    }


def plugin_dir(environ: Mapping[str, str]) -> Path:
    """Return the user's plugin directory: ``$DOCKER_CONFIG/cli-plugins`` or ``~/.docker/...``."""
    config = environ.get("DOCKER_CONFIG", "").strip()
    base = Path(config).expanduser() if config else Path.home() / ".docker"
    return base / "cli-plugins"


def launcher_script(python: str) -> str:
    """Return the text of the ``docker-model`` launcher that runs this package with ``python``."""
    return (
        f"#!{python}\n"
        "# Docker CLI plugin launcher written by 'docker-model install-plugin'.\n"
        "import sys\n\n"
        "from orchestrator.modelcli.main import main\n\n"
        "sys.exit(main())\n"
    )


def install_plugin(directory: Path, python: str = sys.executable) -> Path:
    """Write the launcher into ``directory`` atomically (mode 0755); return its path.

    Raises:
        ConfigError: The directory cannot be created or written.
    """
    target = directory / PLUGIN_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(target, launcher_script(python).encode("utf-8"), mode=0o755)
    except OSError as ex:
        raise errors.ConfigError(
            f"cannot write the plugin into {str(directory)!r}: {ex.strerror}; choose another "
            f"directory with --dir or fix its permissions"
        ) from ex
    return target


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``install-plugin`` to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "install-plugin",
        help="Install docker-model as a Docker CLI plugin ('docker model ...')",
    )
    cmd.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"plugin directory (default $DOCKER_CONFIG/cli-plugins or ~/.docker/cli-plugins; "
        f"{PACKAGED_PLUGIN_DIR} for all users)",
    )
    cmd.set_defaults(func=cmd_install_plugin)


def cmd_install_plugin(args: argparse.Namespace, ctx: CliContext) -> int:
    """``install-plugin [--dir DIR]``."""
    path = install_plugin(args.dir or plugin_dir(ctx.environ))
    ctx.out(f"Installed the Docker CLI plugin at {path}; try 'docker model version'")
    return 0


def watch_plugin_socket(environ: Mapping[str, str]) -> None:
    """Interrupt ourselves when the Docker client closes the plugin socket.

    When ``docker`` is not attached to a terminal, it forwards Ctrl-C / SIGTERM to its plugin
    by closing ``DOCKER_CLI_PLUGIN_SOCKET`` (an abstract Unix socket) rather than by a signal.
    A daemon thread connects and, on end-of-file, raises SIGINT in this process so the command
    stops the way Ctrl-C stops it.
    """
    address = environ.get("DOCKER_CLI_PLUGIN_SOCKET", "")
    if not address or not sys.platform.startswith("linux"):
        return
    name = "\0" + address[1:] if address.startswith("@") else address
    try:
        sock = connect_unix_socket(name, 2.0)
    except OSError:
        return  # an older client without the socket: nothing to watch
    sock.settimeout(None)

    def wait_for_close() -> None:
        try:
            while sock.recv(64):
                pass
        except OSError:
            return
        finally:
            sock.close()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=wait_for_close, name="plugin-socket", daemon=True).start()

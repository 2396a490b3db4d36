"""``install-runner``, ``start-runner``, ``stop-runner``, ``restart-runner``,
``reinstall-runner``, ``uninstall-runner``: the systemd service instead of DMR's container.

Each accepts DMR's flags so scripts written for DMR keep working, and maps to ``systemctl``
(:mod:`orchestrator.modelcli.systemd_service`). The flags that configure DMR's container have no
effect on a service whose settings live in ``/etc/docker-model-runner/config.yaml`` and
``/etc/default/docker-model-runner``: each one given prints a ``Note:`` on stderr naming the
setting to change instead. ``--backend`` other than ``llama.cpp`` is refused (llama.cpp is the
only engine here); ``stop-runner --models`` and ``uninstall-runner --models/--images`` remove
nothing (models stay in the store: ``docker model purge`` removes them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.errors import NotSupportedError
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.systemd_service import UNIT, ServiceManager

LLAMA_CPP = "llama.cpp"
CONFIG_FILE = "/etc/docker-model-runner/config.yaml"
ENVIRONMENT_FILE = "/etc/default/docker-model-runner"

ManagerFactory = Callable[[CliContext, str], ServiceManager]


@dataclass(frozen=True)
class _Flag:
    """One DMR runner flag and what to do instead of it here."""

    dest: str
    option: str
    help: str
    instead: str
    is_bool: bool = False
    type: Callable[[str], object] = str


def _setting(key: str, variable: str) -> str:
    return (
        f"set {key} in {CONFIG_FILE} (or {variable} in {ENVIRONMENT_FILE}), then run "
        f"'docker model restart-runner'"
    )


_FLAGS = {
    "port": _Flag(
        "port",
        "--port",
        "Port of Docker Model Runner (default 12434)",
        _setting("port", "DMR_RUNNER_PORT"),
        type=int,
    ),
    "host": _Flag(
        "host",
        "--host",
        "Host address to bind Docker Model Runner (default 127.0.0.1)",
        _setting("host", "DMR_RUNNER_HOST"),
    ),
    "gpu": _Flag(
        "gpu",
        "--gpu",
        "Specify GPU support (none|auto|cuda|rocm|musa|cann; default auto)",
        "the GPU is used as the installed llama-server build allows (CUDA when an NVIDIA GPU is "
        "found); see 'docker model status'",
    ),
    "llama_server_version": _Flag(
        "llama_server_version",
        "--llama-server-version",
        "Override the llama.cpp version to install",
        "llama-server comes from the docker-model-runner-engine package (or LLAMA_SERVER_PATH); "
        "upgrade that package instead",
    ),
    "do_not_track": _Flag(
        "do_not_track",
        "--do-not-track",
        "Do not track models usage in Docker Model Runner",
        "this runner reports no usage anywhere",
        is_bool=True,
    ),
    "debug": _Flag(
        "debug",
        "--debug",
        "Enable debug logging",
        _setting("log_level: debug", "LOG_LEVEL=debug"),
        is_bool=True,
    ),
    "proxy_cert": _Flag(
        "proxy_cert",
        "--proxy-cert",
        "Path to a CA certificate file for proxy SSL inspection",
        f"set REQUESTS_CA_BUNDLE (and HTTPS_PROXY) in {ENVIRONMENT_FILE}, then run "
        f"'docker model restart-runner'",
    ),
    "tls": _Flag(
        "tls",
        "--tls",
        "Enable TLS/HTTPS for Docker Model Runner API",
        _setting("tls_cert and tls_key", "MODEL_RUNNER_TLS_CERT and MODEL_RUNNER_TLS_KEY"),
        is_bool=True,
    ),
    "tls_port": _Flag(
        "tls_port",
        "--tls-port",
        "TLS port for Docker Model Runner (default 12444)",
        _setting("tls_port", "MODEL_RUNNER_TLS_PORT"),
        type=int,
    ),
    "tls_cert": _Flag(
        "tls_cert",
        "--tls-cert",
        "Path to TLS certificate file",
        _setting("tls_cert", "MODEL_RUNNER_TLS_CERT"),
    ),
    "tls_key": _Flag(
        "tls_key",
        "--tls-key",
        "Path to TLS private key file",
        _setting("tls_key", "MODEL_RUNNER_TLS_KEY"),
    ),
    "models": _Flag(
        "models",
        "--models",
        "Remove model storage volume (no effect here)",
        "models stay in the store; remove them with 'docker model purge'",
        is_bool=True,
    ),
    "images": _Flag(
        "images",
        "--images",
        "Remove runner images (no effect here)",
        "the runner is a package, not an image; remove the docker-model-runner package instead",
        is_bool=True,
    ),
}

_START_FLAGS = ("port", "host", "gpu", "do_not_track", "debug", "proxy_cert")
_TLS_FLAGS = ("tls", "tls_port", "tls_cert", "tls_key")


@dataclass(frozen=True)
class _Command:
    """One ``*-runner`` command: its flags, its systemctl action, what it prints."""

    name: str
    help: str
    flags: tuple[str, ...]
    backend: bool
    action: Callable[[ServiceManager], None]
    done: str


COMMANDS = (
    _Command(
        "install-runner",
        "Install Docker Model Runner (enable and start the systemd service)",
        (*_START_FLAGS[:3], "llama_server_version", *_START_FLAGS[3:], *_TLS_FLAGS),
        True,
        ServiceManager.install,
        "enabled and started",
    ),
    _Command(
        "start-runner",
        "Start Docker Model Runner (the systemd service)",
        (*_START_FLAGS, *_TLS_FLAGS),
        True,
        ServiceManager.start,
        "started",
    ),
    _Command(
        "stop-runner",
        "Stop Docker Model Runner (the systemd service)",
        ("models",),
        False,
        ServiceManager.stop,
        "stopped",
    ),
    _Command(
        "restart-runner",
        "Restart Docker Model Runner (the systemd service)",
        _START_FLAGS,
        False,
        ServiceManager.restart,
        "restarted",
    ),
    _Command(
        "reinstall-runner",
        "Reinstall Docker Model Runner (reload, re-enable and restart the systemd service)",
        (*_START_FLAGS[:3], "llama_server_version", *_START_FLAGS[3:], *_TLS_FLAGS),
        True,
        ServiceManager.reinstall,
        "reloaded, re-enabled and restarted",
    ),
    _Command(
        "uninstall-runner",
        "Uninstall Docker Model Runner (stop and disable the systemd service)",
        ("models", "images"),
        True,
        ServiceManager.uninstall,
        "stopped and disabled (the package, settings and models are kept)",
    ),
)


def default_manager(ctx: CliContext, command_line: str) -> ServiceManager:
    """Return the service manager that runs the real ``systemctl``."""
    return ServiceManager(ctx.environ, retry=command_line)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the six ``*-runner`` commands to the ``docker model`` parser."""
    for spec in COMMANDS:
        cmd = commands.add_parser(
            spec.name,
            help=spec.help,
            description=f"{spec.help}: {UNIT}. Needs root (or polkit's consent).",
        )
        for key in spec.flags:
            flag = _FLAGS[key]
            if flag.is_bool:
                cmd.add_argument(flag.option, dest=flag.dest, action="store_true", help=flag.help)
            else:
                # None marks "not given": only flags the user gave get a note.
                cmd.add_argument(
                    flag.option, dest=flag.dest, type=flag.type, default=None, help=flag.help
                )
        if spec.backend:
            cmd.add_argument(
                "--backend",
                default=None,
                help=(
                    "Uninstall a deferred backend (none exist here)"
                    if spec.name == "uninstall-runner"
                    else "Specify backend (llama.cpp is the only one here)"
                ),
            )
        cmd.set_defaults(func=cmd_runner, spec=spec, manager_factory=default_manager, parser=cmd)


def ignored_flag_notes(args: argparse.Namespace, spec: _Command) -> list[str]:
    """Return one ``Note:`` line for each flag given that has no effect here."""
    notes = []
    for key in spec.flags:
        flag = _FLAGS[key]
        value = getattr(args, flag.dest, None)
        if value is None or value is False:
            continue
        notes.append(f"Note: {flag.option} has no effect on the systemd service: {flag.instead}")
    return notes


def check_backend(spec: _Command, backend: str | None) -> None:
    """Refuse backends this runner does not have.

    Raises:
        NotSupportedError: A backend other than llama.cpp (or any, for ``uninstall-runner``).
    """
    if backend is None or backend == "":
        return
    if spec.name == "uninstall-runner":
        raise NotSupportedError(
            f"there is no deferred backend {backend!r} to uninstall: llama.cpp is built in and "
            f"the only backend here"
        )
    if backend != LLAMA_CPP:
        raise NotSupportedError(
            f"backend {backend!r} is not available here: llama.cpp is the only backend of this "
            f"runner"
        )


def cmd_runner(args: argparse.Namespace, ctx: CliContext) -> int:
    """Run one ``*-runner`` command through ``systemctl``."""
    spec: _Command = args.spec
    check_backend(spec, getattr(args, "backend", None))
    for note in ignored_flag_notes(args, spec):
        ctx.err(note)
    manager: ServiceManager = args.manager_factory(ctx, f"{ctx.prog} {spec.name}")
    spec.action(manager)
    ctx.out(f"Docker Model Runner ({UNIT}) {spec.done}.")
    return 0

"""Daemon settings: one table, four sources.

Every setting is declared once in :data:`SETTINGS` (name, default, converter, environment
variable, help). From that table come the YAML keys of the config file, the environment
variables, the ``model-runner`` flags and README's settings table (a test keeps README in step).

Precedence, lowest first: defaults < config file < environment < command line.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.memory.sizes import check_reserve, parse_size
from orchestrator.store.reference import DEFAULT_REGISTRY, is_insecure_registry, parse_reference

DEFAULT_CONFIG_FILE = "/etc/docker-model-runner/config.yaml"
MiB = 1024 * 1024

log = logging.getLogger(__name__)


# --- converters: each raises ValueError with a short reason; load() adds key and source ----


def _to_str(value: object) -> str:
    return str(value).strip()


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    return int(str(value).strip())


def _to_port(value: object) -> int:
    port = _to_int(value)
    if not 0 < port < 65536:
        raise ValueError("expected a TCP port between 1 and 65535")
    return port


def _to_positive_float(value: object) -> float:
    number = float(str(value).strip())
    if number <= 0:
        raise ValueError("expected a number greater than 0")
    return number


def _to_positive_int(value: object) -> int:
    number = _to_int(value)
    if number < 1:
        raise ValueError("expected a whole number of 1 or more")
    return number


def _to_non_negative_int(value: object) -> int:
    number = _to_int(value)
    if number < 0:
        raise ValueError("expected a whole number of 0 or more")
    return number


def _to_prompt_cache(value: object) -> int:
    number = _to_int(value)
    if number < -1:
        raise ValueError(
            "expected a number of MiB, 0 (no prompt cache) or -1 (the engine's default)"
        )
    return number


def _to_wait(value: object) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        # NOTE(memory): every wait is bounded (house style); "-1" would mean forever here.
        raise ValueError("expected a duration of 0 or more, such as 10m or 30s")
    return seconds


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", "t"):
        return True
    if text in ("0", "false", "no", "off", "f", ""):
        return False
    raise ValueError("expected true or false")


def _to_list(value: object) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        items = [item.strip() for item in str(value).split(",")]
    return tuple(item for item in items if item)


_RPC_HOST = re.compile(
    r"(?:\d{1,3}(?:\.\d{1,3}){3}"  # IPv4
    r"|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)"
)
MAX_RPC_SERVERS = 16
"""Most llama.cpp RPC workers one runner may be given."""


def parse_rpc_servers(value: object) -> tuple[str, ...]:
    """Parse a comma list of llama.cpp RPC workers (``host:port,...``) into a tuple.

    Each item is an IPv4 address or a DNS name, a colon and a port from 1 to 65535:
    llama.cpp splits an endpoint at its first colon, so IPv6 addresses cannot be written. No
    spaces inside an item, no duplicates, at most :data:`MAX_RPC_SERVERS`. An empty value is
    an empty tuple (no workers).

    Raises:
        ValueError: An item is not ``host:port``, or the list is too long or repeats one.
    """
    items = _to_list(value)
    found: list[str] = []
    for item in items:
        host, colon, port = item.rpartition(":")
        if not colon or not host or not _RPC_HOST.fullmatch(host) or len(host) > 253:
            raise ValueError(
                f"RPC worker {item!r} is not host:port (an IPv4 address or a host name, then "
                f"a port, as in 192.168.1.20:50052)"
            )
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"RPC worker {item!r} needs a port between 1 and 65535")
        endpoint = f"{host.lower()}:{int(port)}"
        if endpoint in found:
            raise ValueError(f"RPC worker {item!r} is listed twice")
        found.append(endpoint)
    if len(found) > MAX_RPC_SERVERS:
        raise ValueError(f"at most {MAX_RPC_SERVERS} RPC workers, got {len(found)}")
    return tuple(found)


def parse_engine_args(value: object) -> tuple[str, ...]:
    """Split ``LLAMA_ARGS`` (shell-style quoting) and check it against the engine allow-list.

    A YAML list is taken item by item. The flags must pass the same allow-list as a model's
    ``_configure`` runtime flags (:func:`~orchestrator.runners.engineflags.validate_runtime_flags`):
    no paths, nothing the daemon sets itself (``--model``, ``--host``, ``--port``...).

    Raises:
        ValueError: Unbalanced quotes, or a flag the allow-list refuses.
    """
    # NOTE(settings): imported here because engineflags imports this module (parse_rpc_servers).
    from orchestrator.runners.engineflags import validate_runtime_flags

    if isinstance(value, (list, tuple)):
        items = [str(item) for item in value]
    else:
        try:
            items = shlex.split(str(value))
        except ValueError as ex:
            raise ValueError(f"cannot split it into arguments ({ex})") from ex
    try:
        return validate_runtime_flags(items)
    except OrchestratorError as ex:
        raise ValueError(ex.message) from ex


def parse_registry_host(value: object) -> str:
    """Return a registry host (``DEFAULT_REGISTRY``) lowercased; Docker Hub's names are
    ``docker.io``, an empty value is Docker Hub.

    Raises:
        ValueError: It is not a ``host[:port]``.
    """
    text = str(value).strip().strip("'\"").lower()
    if not text:
        return DEFAULT_REGISTRY
    try:
        ref = parse_reference(f"{text}/probe/probe")
    except OrchestratorError as ex:
        raise ValueError("expected a registry host such as registry.example.com:5000") from ex
    if ref.registry != text:
        raise ValueError("expected a registry host such as registry.example.com:5000")
    return "docker.io" if text in ("index.docker.io", "registry-1.docker.io") else text


def parse_registry_mirrors(value: object) -> tuple[str, ...]:
    """Parse ``MODEL_RUNNER_REGISTRY_MIRRORS``: a comma list of ``[http[s]://]host[:port]``.

    Each item keeps the scheme it was given (``http://`` is checked against the plain-HTTP
    registries when the whole configuration is known). A path prefix (an Artifactory
    repository path) is refused: mirrors are asked at ``/v2/`` on their host.

    Raises:
        ValueError: An item is not a host, names another scheme, or has a path.
    """
    mirrors: list[str] = []
    for item in _to_list(value):
        scheme, _, rest = item.rpartition("://")
        if scheme and scheme.lower() not in ("http", "https"):
            raise ValueError(f"mirror {item!r} must be an http:// or https:// URL or a host")
        parts = urlsplit(f"//{rest}")
        if not parts.netloc:
            raise ValueError(f"mirror {item!r} names no host")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"mirror {item!r} has a path; give only [scheme://]host[:port]")
        host = parse_registry_host(parts.netloc)
        mirrors.append(f"{scheme.lower()}://{host}" if scheme else host)
    return tuple(mirrors)


def mirror_host(mirror: str) -> str:
    """Return the ``host[:port]`` of a parsed mirror entry."""
    return mirror.rpartition("://")[2]


def _to_optional_bool(value: object) -> bool | None:
    if value is None or str(value).strip() == "":
        return None
    return _to_bool(value)


def _to_path(value: object) -> str:
    text = str(value).strip()
    return str(Path(text).expanduser()) if text else ""


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Parse a Go-style duration (``5m``, ``1h30m``, ``90s``) into seconds.

    A bare number is seconds. ``0`` means "unload as soon as idle"; any negative value
    (``-1``) means "never unload" and is returned as ``-1.0``.

    Raises:
        ValueError: The text is not a duration.
    """
    text = str(value).strip()
    if not text:
        raise ValueError("expected a duration such as 5m, 1h or -1")
    if text.startswith("-"):
        magnitude = text[1:]
        if magnitude.startswith("-"):
            raise ValueError("expected a duration such as 5m, 1h or -1")
        parse_duration(magnitude)
        return -1.0
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        # float() also takes "nan", "inf" and "1e400" (which overflows to inf): none is a
        # duration, and a stored one breaks every later comparison and rendering.
        if not math.isfinite(number):
            raise ValueError("expected a finite duration such as 5m, 1h or -1")
        return number
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError("expected a duration such as 5m, 1h or -1")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the way Go prints a duration (``5m0s``), ``-1`` for never."""
    if seconds < 0:
        return "-1"
    whole = int(seconds)
    if whole != seconds or whole == 0:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configurable value.

    Attributes:
        name: Attribute of :class:`Config` and YAML key.
        default: Value when no source sets it (already converted).
        convert: Turns a raw value from any source into the typed value.
        env: Environment variable that sets it.
        help: One line for ``--help`` and README.
        aliases: Docker Model Runner's own names for it, read when ``env`` is not set (an
            empty value counts as unset, as in DMR).
    """

    name: str
    default: Any
    convert: Callable[[object], Any]
    env: str
    help: str
    aliases: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """Return the command-line flag (``--keep-alive`` for ``keep_alive``)."""
        return "--" + self.name.replace("_", "-")


def _default_runtime_dir() -> str:
    """Return ``$XDG_RUNTIME_DIR/model-runner``, else ``/tmp/model-runner-<euid>``.

    The ``/tmp`` name is predictable, so another user may create it first:
    :func:`orchestrator.runtimedir.prepare_runtime_dir` refuses it then. The effective uid
    names it because it is the owner that check demands.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return str(Path(xdg) / "model-runner") if xdg else f"/tmp/model-runner-{os.geteuid()}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "port",
        12434,
        _to_port,
        "DMR_RUNNER_PORT",
        "TCP port of the API (DMR's MODEL_RUNNER_PORT when DMR_RUNNER_PORT is unset).",
        aliases=("MODEL_RUNNER_PORT",),
    ),
    Setting(
        "host",
        (),
        _to_list,
        "DMR_RUNNER_HOST",
        "Comma list of addresses to listen on; default 127.0.0.1 plus the docker0 bridge address "
        "when that interface exists.",
    ),
    Setting("socket", "", _to_path, "MODEL_RUNNER_SOCK", "Also listen on this Unix socket path."),
    Setting(
        "models_path", "~/.docker/models", _to_path, "MODELS_PATH", "Root of the local model store."
    ),
    Setting(
        "llama_server_path",
        "",
        _to_path,
        "LLAMA_SERVER_PATH",
        "Directory holding llama-server; else the provisioning cache, else PATH.",
    ),
    Setting(
        "origins",
        (),
        _to_list,
        "DMR_ORIGINS",
        "Extra CORS origins (comma list); '*' allows all; 'http://host:*' any port. "
        "Localhost origins are always allowed.",
    ),
    Setting(
        "allowed_hosts",
        (),
        _to_list,
        "DMR_ALLOWED_HOSTS",
        "Extra host names the API answers to (comma list; '*.example.com' for subdomains; '*' "
        "for any). IP addresses, localhost and model-runner.docker.internal always work; other "
        "names get 403 (a DNS-rebinding page cannot reach the API).",
    ),
    Setting(
        "keep_alive",
        300.0,
        parse_duration,
        "DMR_KEEP_ALIVE",
        "Idle time before a runner is stopped (Go duration; 0 = when idle, -1 = never).",
    ),
    Setting(
        "default_context_size",
        4096,
        _to_int,
        "DMR_DEFAULT_CONTEXT_SIZE",
        "Context size when neither _configure nor the model sets one.",
    ),
    Setting(
        "load_timeout_seconds",
        600.0,
        _to_positive_float,
        "DMR_LOAD_TIMEOUT_SECONDS",
        "How long a runner may take to become ready.",
    ),
    Setting(
        "stop_grace_seconds",
        5.0,
        _to_positive_float,
        "DMR_STOP_GRACE_SECONDS",
        "Time between SIGTERM and SIGKILL when stopping a runner.",
    ),
    Setting(
        "max_concurrent_requests",
        64,
        _to_int,
        "DMR_MAX_CONCURRENT_REQUESTS",
        "Threads of the work lane: inference requests (streams included), pulls, pushes and "
        "exports served at once.",
    ),
    Setting(
        "control_threads",
        16,
        _to_positive_int,
        "DMR_CONTROL_THREADS",
        "Threads kept for short management requests (list, inspect, ps, unload, configure, "
        "metrics), which stay answered while every inference thread is busy.",
    ),
    Setting(
        "header_timeout",
        10.0,
        _to_positive_float,
        "DMR_HEADER_TIMEOUT",
        "Seconds a client has to send a request's headers (and a body up to 1 MiB 30 s more); "
        "no thread waits for it meanwhile.",
    ),
    Setting(
        "client_timeout",
        60.0,
        _to_positive_float,
        "DMR_CLIENT_TIMEOUT",
        "Seconds one read of a large request body, or one write of a response, may wait for "
        "the client before the connection is closed.",
    ),
    Setting(
        "api_key",
        "",
        _to_str,
        "DMR_API_KEY",
        "When set, every request except /, /version and the dashboard's files needs "
        "'Authorization: Bearer <key>' (or 'x-api-key'); off by default, as in DMR.",
    ),
    Setting(
        "tls_cert",
        "",
        _to_path,
        "MODEL_RUNNER_TLS_CERT",
        "PEM certificate (chain) of the TLS listener; with tls_key, the daemon also serves "
        "HTTPS on tls_port.",
    ),
    Setting(
        "tls_key",
        "",
        _to_path,
        "MODEL_RUNNER_TLS_KEY",
        "PEM private key of the TLS listener.",
    ),
    Setting(
        "tls_enabled",
        None,
        _to_optional_bool,
        "MODEL_RUNNER_TLS_ENABLED",
        "DMR's TLS switch: unset = TLS when tls_cert and tls_key are both set; false = no TLS "
        "listener; true = TLS, and the certificate and key are required (none is generated).",
    ),
    Setting(
        "tls_port",
        12444,
        _to_port,
        "MODEL_RUNNER_TLS_PORT",
        "TCP port of the TLS listener (DMR's default 12444), on the same addresses as port.",
    ),
    Setting(
        "runtime_dir",
        "",
        _to_path,
        "DMR_RUNTIME_DIR",
        "Runner sockets and pid files; default $XDG_RUNTIME_DIR/model-runner or "
        "/tmp/model-runner-<uid>.",
    ),
    Setting(
        "log_dir",
        "",
        _to_path,
        "MODEL_RUNNER_LOG_DIR",
        "Daemon and engine log files; default <models_path>/logs.",
    ),
    Setting("log_level", "info", _to_str, "LOG_LEVEL", "debug, info, warning or error."),
    Setting(
        "insecure_registries",
        (),
        _to_list,
        "DMR_INSECURE_REGISTRIES",
        "Registries reached over plain HTTP besides localhost, 127.0.0.1 and *.local.",
    ),
    Setting(
        "insecure_registry",
        False,
        _to_bool,
        "INSECURE_REGISTRY",
        "DMR's switch: true reaches default_registry over plain HTTP (only that registry; "
        "list others in insecure_registries).",
    ),
    Setting(
        "default_registry",
        DEFAULT_REGISTRY,
        parse_registry_host,
        "DEFAULT_REGISTRY",
        "Registry of references that name none (ai/smollm2), instead of Docker Hub; the CLI "
        "reads the same variable.",
    ),
    Setting(
        "registry_mirrors",
        (),
        parse_registry_mirrors,
        "MODEL_RUNNER_REGISTRY_MIRRORS",
        "Comma list of [http[s]://]host[:port] mirrors a pull from default_registry tries in "
        "order before falling back to it.",
    ),
    Setting(
        "llama_args",
        (),
        parse_engine_args,
        "LLAMA_ARGS",
        "Extra llama-server flags for every runner (shell quoting), checked against the "
        "runtime-flag allow-list; a model's own runtime flags come after them.",
    ),
    Setting(
        "hf_endpoint",
        "https://huggingface.co",
        _to_str,
        "HF_ENDPOINT",
        "Base URL of the Hugging Face Hub API.",
    ),
    Setting("disable_metrics", False, _to_bool, "DISABLE_METRICS", "Turn off GET /metrics."),
    Setting(
        "memory_reserve",
        "",
        check_reserve,
        "DMR_MEMORY_RESERVE",
        "RAM kept free for the rest of the host: a size (2GiB) or a percentage (10%); "
        "default the larger of 10% and 1 GiB.",
    ),
    Setting(
        "max_ram",
        0,
        parse_size,
        "DMR_MAX_RAM",
        "Hard cap on the RAM all runners may use together (4GiB, 512MiB, bytes); 0 = total "
        "RAM minus the reserve.",
    ),
    Setting(
        "max_vram",
        0,
        parse_size,
        "DMR_MAX_VRAM",
        "Cap on the GPU memory runners may use on each GPU; 0 = GPU memory minus 512 MiB.",
    ),
    Setting(
        "max_queue",
        64,
        _to_non_negative_int,
        "DMR_MAX_QUEUE",
        "Requests per model that may wait for a loading or busy runner; more get 429 "
        "(0 = no limit).",
    ),
    Setting(
        "max_wait",
        600.0,
        _to_wait,
        "DMR_MAX_WAIT",
        "Longest a request waits for memory or a runner slot before 503 (Go duration).",
    ),
    Setting(
        "max_runners",
        0,
        _to_non_negative_int,
        "DMR_MAX_RUNNERS",
        "Most runners (engine processes) at once; 0 = the number of CPUs, at most 8.",
    ),
    Setting(
        "rpc_servers",
        (),
        parse_rpc_servers,
        "DMR_RPC_SERVERS",
        "llama.cpp RPC workers (rpc-server) every runner spreads its layers over: a comma "
        "list of host:port; none by default. rpc-server has no authentication.",
    ),
    Setting(
        "min_residency",
        30.0,
        _to_wait,
        "DMR_MIN_RESIDENCY",
        "How long a started runner stays before it may be evicted for another model.",
    ),
    Setting(
        "default_model",
        "",
        _to_str,
        "DMR_DEFAULT_MODEL",
        "A model to load again whenever no runner is loaded (empty = none).",
    ),
    Setting(
        "prompt_cache_mib",
        512,
        _to_prompt_cache,
        "DMR_PROMPT_CACHE_MIB",
        "Ceiling of llama-server's prompt cache (--cache-ram) per runner in MiB; each runner "
        "gets half its KV cache size up to this, counted in the memory estimate; 0 = off, "
        "-1 = the engine's default (8 GiB, not counted).",
    ),
    Setting(
        "registry_deadline_seconds",
        60.0,
        _to_positive_float,
        "DMR_REGISTRY_DEADLINE_SECONDS",
        "Longest a small registry or Hugging Face exchange (manifest, config, token, file list, "
        "error answer) may take, answer body included.",
    ),
    Setting(
        "registry_stall_seconds",
        60.0,
        _to_positive_float,
        "DMR_REGISTRY_STALL_SECONDS",
        "Window of the stall rule for blob downloads and uploads (see the next setting).",
    ),
    Setting(
        "registry_min_bytes_per_second",
        16384.0,
        _to_positive_float,
        "DMR_REGISTRY_MIN_BYTES_PER_SECOND",
        "A blob transfer averaging fewer bytes per second than this over the stall window is "
        "cut (a pull resumes where it stopped).",
    ),
    Setting(
        "log_max_size",
        20 * MiB,
        parse_size,
        "DMR_LOG_MAX_SIZE",
        "Size at which the daemon log and each engine log are rotated to <name>.log.1 "
        "(20MiB, bytes); 0 = never (leave it to logrotate).",
    ),
    Setting(
        "log_backups",
        3,
        _to_non_negative_int,
        "DMR_LOG_BACKUPS",
        "Rotated copies kept of each log (<name>.log.1 is the newest); 0 = none, a full log "
        "is emptied.",
    ),
    Setting(
        "max_load_size",
        256 * 1024 * MiB,
        parse_size,
        "DMR_MAX_LOAD_SIZE",
        "Largest model archive POST /models/load accepts (256GiB, bytes); larger ones get "
        "413; 0 = no limit.",
    ),
    Setting(
        "responses_max_stored",
        1000,
        _to_non_negative_int,
        "DMR_RESPONSES_MAX_STORED",
        "Responses API: most responses kept for retrieval and previous_response_id (oldest "
        "dropped first); 0 = store none.",
    ),
    Setting(
        "responses_ttl",
        3600.0,
        parse_duration,
        "DMR_RESPONSES_TTL",
        "Responses API: a stored response is dropped this long after it was last written "
        "(1h; a Go duration).",
    ),
    Setting(
        "recorder_max_per_model",
        10,
        _to_non_negative_int,
        "DMR_RECORDER_MAX_PER_MODEL",
        "Request recorder (/engines/requests): most recent requests kept per model; 0 = "
        "record nothing.",
    ),
)

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Config:
    """Effective daemon configuration (see :data:`SETTINGS` for each field)."""

    port: int = 12434
    host: tuple[str, ...] = ()
    socket: str = ""
    models_path: str = "~/.docker/models"
    llama_server_path: str = ""
    origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    keep_alive: float = 300.0
    default_context_size: int = 4096
    load_timeout_seconds: float = 600.0
    stop_grace_seconds: float = 5.0
    max_concurrent_requests: int = 64
    control_threads: int = 16
    header_timeout: float = 10.0
    client_timeout: float = 60.0
    api_key: str = dataclasses.field(default="", repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_enabled: bool | None = None
    tls_port: int = 12444
    runtime_dir: str = ""
    log_dir: str = ""
    log_level: str = "info"
    insecure_registries: tuple[str, ...] = ()
    insecure_registry: bool = False
    default_registry: str = DEFAULT_REGISTRY
    registry_mirrors: tuple[str, ...] = ()
    llama_args: tuple[str, ...] = ()
    hf_endpoint: str = "https://huggingface.co"
    disable_metrics: bool = False
    memory_reserve: str = ""
    max_ram: int = 0
    max_vram: int = 0
    max_queue: int = 64
    max_wait: float = 600.0
    max_runners: int = 0
    rpc_servers: tuple[str, ...] = ()
    min_residency: float = 30.0
    default_model: str = ""
    prompt_cache_mib: int = 512
    registry_deadline_seconds: float = 60.0
    registry_stall_seconds: float = 60.0
    registry_min_bytes_per_second: float = 16384.0
    log_max_size: int = 20 * MiB
    log_backups: int = 3
    max_load_size: int = 256 * 1024 * MiB
    responses_max_stored: int = 1000
    responses_ttl: float = 3600.0
    recorder_max_per_model: int = 10

    @property
    def store_root(self) -> Path:
        """Return the model store directory."""
        return Path(self.models_path).expanduser()

    @property
    def runtime_path(self) -> Path:
        """Return the directory for runner sockets and pid files.

        Only a path: the daemon checks it is private once, at start-up
        (:func:`orchestrator.runtimedir.prepare_runtime_dir`), before anything goes in it.
        """
        return Path(self.runtime_dir or _default_runtime_dir())

    @property
    def runner_limit(self) -> int:
        """Return the most runners at once: ``max_runners``, else the CPU count capped at 8."""
        if self.max_runners > 0:
            return self.max_runners
        return max(min(os.cpu_count() or 1, 8), 1)

    @property
    def log_path(self) -> Path:
        """Return the directory for daemon and engine logs."""
        return Path(self.log_dir) if self.log_dir else self.store_root / "logs"

    @property
    def plain_http_registries(self) -> tuple[str, ...]:
        """Return the registries reached over plain HTTP besides loopback and ``*.local``.

        ``insecure_registries``, plus ``default_registry`` when ``INSECURE_REGISTRY`` is true.
        """
        if self.insecure_registry and self.default_registry != DEFAULT_REGISTRY:
            return (*self.insecure_registries, self.default_registry)
        return self.insecure_registries


def _convert(setting: Setting, raw: object, source: str) -> Any:
    try:
        return setting.convert(raw)
    except (ValueError, TypeError) as ex:
        raise ConfigError(
            f"invalid value {raw!r} for {setting.name} from {source}: {ex}", param=setting.name
        ) from ex


def load(
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build the effective configuration.

    Args:
        config_file: YAML file to read; ``None`` reads ``DMR_CONFIG`` or the default path
            when it exists. An explicitly named file that is missing is an error.
        environ: Environment to read (default ``os.environ``).
        overrides: Values from the command line, by setting name; ``None`` values are ignored.

    Raises:
        ConfigError: A source holds an unknown key or a value its converter rejects.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}

    path = config_file or env.get("DMR_CONFIG")
    if path or Path(DEFAULT_CONFIG_FILE).is_file():
        file_path = Path(path or DEFAULT_CONFIG_FILE)
        try:
            loaded = yaml.safe_load(file_path.read_text(encoding="utf-8")) or {}
        except PermissionError as ex:
            if path:
                raise ConfigError(
                    f"cannot read config file {str(file_path)!r}: {ex.strerror}"
                ) from ex
            # The packaged file is 0640 root:docker-model-runner (it may hold DMR_API_KEY): a
            # user outside that group running the CLI or a daemon of their own goes without it.
            log.warning("config file not readable by this user, skipped path=%s", file_path)
            loaded = {}
        except OSError as ex:
            raise ConfigError(f"cannot read config file {str(file_path)!r}: {ex.strerror}") from ex
        except yaml.YAMLError as ex:
            raise ConfigError(f"config file {str(file_path)!r} is not valid YAML: {ex}") from ex
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(file_path)!r} must hold a mapping of settings")
        for key, raw in loaded.items():
            setting = SETTINGS_BY_NAME.get(str(key))
            if setting is None:
                known = ", ".join(sorted(SETTINGS_BY_NAME))
                raise ConfigError(
                    f"unknown setting {key!r} in {str(file_path)!r}; known settings: {known}"
                )
            if raw is not None:
                values[setting.name] = _convert(setting, raw, f"config file {str(file_path)!r}")

    for setting in SETTINGS:
        name = env_source(setting, env)
        if name is not None:
            raw_env = env[name].strip().strip("'\"")
            values[setting.name] = _convert(setting, raw_env, f"environment variable {name}")

    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        setting = SETTINGS_BY_NAME[name]
        values[name] = _convert(setting, raw, f"option {setting.flag}")

    config = Config(**values)
    _check_combinations(config)
    return config


def env_source(setting: Setting, environ: Mapping[str, str]) -> str | None:
    """Return the environment variable that sets ``setting``, or ``None``.

    Our own name wins when it is present (even empty: that is an explicit value); otherwise
    the first of DMR's names with a non-empty value.
    """
    if setting.env in environ:
        return setting.env
    return next((alias for alias in setting.aliases if environ.get(alias, "").strip()), None)


def _check_combinations(config: Config) -> None:
    """Refuse settings that are valid alone but not together."""
    plain = config.plain_http_registries
    for mirror in config.registry_mirrors:
        host = mirror_host(mirror)
        if mirror.startswith("http://") and not is_insecure_registry(host, plain):
            raise ConfigError(
                f"registry mirror {mirror!r} is plain HTTP but {host!r} is not an insecure "
                f"registry; use https:// or add {host!r} to DMR_INSECURE_REGISTRIES",
                param="registry_mirrors",
            )
    if config.tls_enabled and not (config.tls_cert and config.tls_key):
        raise ConfigError(
            "MODEL_RUNNER_TLS_ENABLED is true but MODEL_RUNNER_TLS_CERT and "
            "MODEL_RUNNER_TLS_KEY are not both set; this daemon does not generate certificates",
            param="tls_enabled",
        )
    if config.insecure_registry and config.default_registry == DEFAULT_REGISTRY:
        log.warning(
            "INSECURE_REGISTRY=true applies only to DEFAULT_REGISTRY, which is not set; "
            "list plain-HTTP registries in DMR_INSECURE_REGISTRIES"
        )

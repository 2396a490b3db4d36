"""Serve the API under gunicorn with fixed settings (house style 3.3).

One worker, our :class:`~orchestrator.httpserver.worker.LaneWorker` (issue 12: gthread let slow
clients and long streams take every thread): an event loop reads request heads under deadlines
and hands complete requests to two lanes of threads, ``control_threads`` for management and
``max_concurrent_requests`` for inference and transfers. No worker recycling (it would kill every
runner), no preloading (the app and the :class:`Scheduler` are built in
:meth:`DaemonApplication.load`, which runs in the worker after the fork: the master's
``waitpid(-1)`` must never see a runner).

Shutdown: on ``SIGTERM`` the master tells the worker to stop; the worker stops accepting and
lets in-flight requests finish for :data:`DRAIN_SECONDS`. Then our timer cuts the streams still
open (their clients get an error event), gives llama-server a moment to cancel those tasks (it
does not honour SIGTERM in the middle of one), and stops every runner; ``worker_exit`` runs the
same idempotent shutdown as the last word. All of it fits in the master's ``graceful_timeout``.

TLS (optional, as in DMR): with ``tls_cert`` and ``tls_key`` the worker also listens on
``tls_port`` on the same addresses and speaks TLS 1.2+ there; the plain port stays.

systemd readiness: gunicorn's arbiter sends ``READY=1`` to ``$NOTIFY_SOCKET`` itself once its
listeners are bound (20.1 and later), so we add nothing (a worker's message would be dropped
under systemd's default ``NotifyAccess=main`` anyway).
"""

from __future__ import annotations

import logging
import math
import signal
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from orchestrator.bridge import bridge_ipv4
from orchestrator.errors import ConfigError
from orchestrator.httpserver.worker import FrontDoorLimits
from orchestrator.logfiles import setup_logging
from orchestrator.proxy import abort_streams, close_idle_connections
from orchestrator.store.reference import set_default_registry

if TYPE_CHECKING:
    from orchestrator.runners.scheduler import Scheduler
    from orchestrator.settings import Config

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# In-flight requests get this long after SIGTERM before their runners are stopped.
DRAIN_SECONDS = 5.0
# Margin for the worker to leave after the runners are gone, inside the master's deadline.
_EXIT_MARGIN_SECONDS = 5.0
# After cutting streams, how long llama-server gets to notice before SIGTERM.
ABORT_SETTLE_SECONDS = 0.5
# Unix socket mode 0660: the owner and its group may use the API.
SOCKET_UMASK = 0o117


def default_hosts() -> list[str]:
    """Return 127.0.0.1 plus the IPv4 address of the ``docker0`` bridge when it exists."""
    hosts = [DEFAULT_HOST]
    bridge = bridge_ipv4()
    if bridge is not None and bridge not in hosts:
        hosts.append(bridge)
    return hosts


def tls_enabled(config: Config) -> bool:
    """Return whether the TLS listener runs: certificate and key both given, unless DMR's
    ``MODEL_RUNNER_TLS_ENABLED`` says false (true without them is refused by the settings)."""
    if config.tls_enabled is False:
        return False
    return bool(config.tls_cert and config.tls_key)


def bind_addresses(config: Config) -> list[str]:
    """Return gunicorn ``bind`` entries: every host on ``config.port`` (and on ``tls_port``
    when TLS is configured), then the socket."""
    hosts = list(config.host) or default_hosts()
    ports = [config.port] + ([config.tls_port] if tls_enabled(config) else [])
    binds = [
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for port in ports for host in hosts
    ]
    if config.socket:
        binds.append(f"unix:{config.socket}")
    return binds


def graceful_timeout_seconds(config: Config) -> float:
    """Return the master's shutdown deadline: drain, runner grace, exit margin."""
    return DRAIN_SECONDS + config.stop_grace_seconds + _EXIT_MARGIN_SECONDS


class DaemonApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn application that owns its settings and builds the app in the worker.

    Args:
        config: Effective configuration.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.scheduler: Scheduler | None = None
        self._shutdown_lock = threading.Lock()
        super().__init__()

    def load_config(self) -> None:
        """Apply the fixed worker settings and the hooks."""
        settings: dict[str, Any] = {
            "bind": bind_addresses(self.config),
            "workers": 1,
            "worker_class": "orchestrator.httpserver.worker.LaneWorker",
            "max_requests": 0,
            "preload_app": False,
            "graceful_timeout": math.ceil(graceful_timeout_seconds(self.config)),
            "keepalive": 5,
            "umask": SOCKET_UMASK,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": self.config.log_level,
            "proc_name": "model-runner",
            "post_worker_init": self._post_worker_init,
            "worker_exit": self._worker_exit,
            # gunicorn >= 25.1 opens a control socket by default, through which the worker
            # count could be changed; one daemon, one worker.
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def front_door_limits(self) -> FrontDoorLimits:
        """Return the worker's deadlines and lane sizes (called in the worker)."""
        return FrontDoorLimits(
            header_timeout=self.config.header_timeout,
            client_timeout=self.config.client_timeout,
            keepalive=float(self.cfg.keepalive),
            control_threads=self.config.control_threads,
            work_threads=max(1, self.config.max_concurrent_requests),
            tls_port=self.config.tls_port if tls_enabled(self.config) else 0,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """Return the TLS listener's context, or ``None`` without TLS."""
        return server_tls_context(self.config) if tls_enabled(self.config) else None

    def load(self) -> Callable[..., Any]:
        """Build the store, the scheduler and the app (in the worker, after the fork)."""
        from orchestrator.app import create_app, create_scheduler, locate_engine
        from orchestrator.store.store import Store

        store = Store(self.config.store_root)
        located = locate_engine(self.config)
        engine = located[0]
        self.scheduler = create_scheduler(self.config, store, engine.path if engine else None)
        return create_app(self.config, store=store, scheduler=self.scheduler, located=located)

    def shutdown_runners(self, reason: str) -> None:
        """Stop every runner (idempotent; safe from any thread)."""
        with self._shutdown_lock:
            scheduler = self.scheduler
            if scheduler is None:
                return
            cut = abort_streams()
            if cut:
                # llama-server notices a closed connection at its next token and cancels the
                # task; SIGTERM in the middle of a task is not honoured until it ends.
                time.sleep(ABORT_SETTLE_SECONDS)
            log.info("stopping runners reason=%s streams_cut=%d", reason, cut)
            # Idle kept-alive connections would hold llama-server's HTTP threads while it stops.
            close_idle_connections()
            scheduler.shutdown()

    def _post_worker_init(self, worker: Any) -> None:
        """Chain our drain timer onto the worker's SIGTERM handler."""
        original = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            if callable(original):
                original(signum, frame)
            timer = threading.Timer(DRAIN_SECONDS, self.shutdown_runners, args=("drain over",))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_term)
        # As gunicorn does: SIGTERM must not interrupt system calls of active requests.
        signal.siginterrupt(signal.SIGTERM, False)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        self.shutdown_runners("worker exit")


def server_tls_context(config: Config) -> ssl.SSLContext:
    """Return a server context for TLS 1.2 and later with the configured certificate.

    Raises:
        ConfigError: The certificate or key cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as ex:
        raise ConfigError(
            f"cannot use the TLS certificate {config.tls_cert!r} with key {config.tls_key!r}: "
            f"{ex}; check MODEL_RUNNER_TLS_CERT and MODEL_RUNNER_TLS_KEY (PEM files the daemon "
            "user can read, the key matching the certificate)"
        ) from ex
    return context


def run(config: Config) -> int:
    """Run the daemon in the foreground until it is stopped; return the exit status.

    Raises:
        ConfigError: Only one of the TLS certificate and key is set, or they are unusable.
    """
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError(
            "TLS needs both MODEL_RUNNER_TLS_CERT and MODEL_RUNNER_TLS_KEY; set both or neither"
        )
    if tls_enabled(config):
        server_tls_context(config)  # refuse a bad certificate before anything listens
    # Before the fork, so the worker parses references with it too.
    set_default_registry(config.default_registry)
    setup_logging(
        config.log_path,
        config.log_level,
        max_bytes=config.log_max_size,
        backups=config.log_backups,
    )
    log.info("starting binds=%s store=%s", ",".join(bind_addresses(config)), config.store_root)
    try:
        DaemonApplication(config).run()
    except SystemExit as ex:
        # The arbiter leaves through sys.exit(): 0 after a clean stop, else its status.
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    return 0

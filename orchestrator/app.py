"""Build the Falcon application: wiring only, no behaviour of its own.

``create_app`` runs in the gunicorn worker (never in the master, whose ``waitpid(-1)`` would
reap our runners): it opens the store, builds and starts the :class:`Scheduler` unless one is
injected, and wires middleware, the error renderer and the routes. Tests inject a store, a
scheduler and a registry factory, as Falcon's ``look`` example does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api import add_routes
from orchestrator.api import error_handlers as api_errors
from orchestrator.api.apikey import ApiKeyMiddleware
from orchestrator.api.hosts import HostCheckMiddleware, HostPolicy
from orchestrator.api.middleware import (
    CORSMiddleware,
    OriginPolicy,
    RequestContextMiddleware,
)
from orchestrator.api.recorder import new_request_log
from orchestrator.api.request_stats import RequestStats
from orchestrator.api.shared import ApiContext, RegistryFactory
from orchestrator.engine import EngineChoice, choose_engine
from orchestrator.errors import EngineNotFoundError

if TYPE_CHECKING:
    from orchestrator.registry.request_auth import RequestAuth
    from orchestrator.runners.scheduler import Scheduler
    from orchestrator.settings import Config
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)


def default_registry_factory(config: Config) -> RegistryFactory:
    """Return a factory of registry clients configured from ``config``."""
    from orchestrator.registry.client import RegistryClient

    def make(
        bearer_token: str | None, request_auth: RequestAuth | None = None
    ) -> RegistryClient:
        return RegistryClient(
            insecure_registries=config.plain_http_registries,
            bearer_token=bearer_token,
            request_auth=request_auth,
            deadline_seconds=config.registry_deadline_seconds,
            stall_seconds=config.registry_stall_seconds,
            min_bytes_per_second=config.registry_min_bytes_per_second,
        )

    return make


def locate_engine(config: Config) -> tuple[EngineChoice | None, str]:
    """Return the engine to run, or ``None`` and why none was found."""
    try:
        choice = choose_engine(config.llama_server_path)
    except EngineNotFoundError as ex:
        log.warning("engine not found: %s", ex.message)
        return None, ex.message
    log.info("engine path=%s %s", choice.path, choice.describe())
    return choice, ""


def create_scheduler(config: Config, store: Store, engine_path: Path | None) -> Scheduler:
    """Build and start the scheduler (spawns nothing until the first request)."""
    from orchestrator.runners.scheduler import Scheduler

    scheduler = Scheduler(
        config=config,
        store=store,
        # NOTE(api): without an engine the daemon still serves management routes; a runner
        # start then fails with the engine's path in the error.
        engine_path=engine_path or Path(config.llama_server_path or "llama-server"),
        runtime_dir=config.runtime_path,
        log_dir=config.log_path,
    )
    scheduler.start()
    return scheduler


def create_app(
    config: Config,
    *,
    store: Store | None = None,
    scheduler: Scheduler | None = None,
    registry_factory: RegistryFactory | None = None,
    located: tuple[EngineChoice | None, str] | None = None,
) -> falcon.App:
    """Return the WSGI application.

    Args:
        config: Effective configuration.
        store: The model store (default: opened at ``config.store_root``).
        scheduler: The runner scheduler (default: built and started here).
        registry_factory: Makes registry clients for push and remote inspect.
        located: :func:`locate_engine`'s answer when the caller already has it.
    """
    if store is None:
        from orchestrator.store.store import Store

        store = Store(config.store_root)
    engine, engine_error = located if located is not None else locate_engine(config)
    engine_path = engine.path if engine is not None else None
    if scheduler is None:
        scheduler = create_scheduler(config, store, engine_path)
    request_log = new_request_log(config.recorder_max_per_model, scheduler)
    ctx = ApiContext(
        config=config,
        store=store,
        scheduler=scheduler,
        registry_factory=registry_factory or default_registry_factory(config),
        request_stats=RequestStats(),
        engine_path=engine_path,
        engine_error=engine_error,
        engine=engine,
        recorder=request_log,
    )
    middleware: list[Any] = [
        RequestContextMiddleware(),
        # Before anything reads the request: a foreign Host is a DNS-rebinding page.
        HostCheckMiddleware(HostPolicy(config.allowed_hosts)),
        CORSMiddleware(OriginPolicy(config.origins)),
        # After CORS: a refusal still carries the CORS headers a page needs to read it, and a
        # preflight (never credentialed) is answered before any key is asked for.
        ApiKeyMiddleware(config.api_key),
    ]
    app = falcon.App(middleware=middleware)
    app.req_options.keep_blank_qs_values = True
    app.req_options.strip_url_path_trailing_slash = False
    api_errors.install(app)
    add_routes(app, ctx)
    return app

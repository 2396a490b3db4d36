"""What the API resources share: :class:`ApiContext`.

Its own module so that every resource can name it without importing the package's route
table (which imports the resources).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator.api.request_log import RequestLog
    from orchestrator.api.request_stats import RequestStats
    from orchestrator.engine import EngineChoice
    from orchestrator.registry.client import RegistryClient
    from orchestrator.registry.request_auth import RequestAuth
    from orchestrator.runners.scheduler import Scheduler
    from orchestrator.settings import Config
    from orchestrator.store.store import Store



class RegistryFactory(Protocol):
    """Makes a registry client for one request (push, remote inspect)."""

    def __call__(
        self, bearer_token: str | None, request_auth: RequestAuth | None = None
    ) -> RegistryClient:
        """Return a client using ``bearer_token``, else ``request_auth`` for its registry,
        else the daemon's stored credentials."""
        ...


@dataclasses.dataclass
class ApiContext:
    """What the resources share: configuration, store, scheduler, seams and counters.

    Attributes:
        config: Effective configuration.
        store: The local model store.
        scheduler: Owner of the runners.
        registry_factory: Makes a registry client for a bearer token (``None`` = from the
            Docker credentials).
        request_stats: Request-side metrics.
        engine_path: The llama-server binary (``None`` when it was not found).
        engine_error: Why it was not found.
        engine: Which engine it is (flavor, variant, devices), for ``/engines/status``.
        recorder: The request recorder (``/engines/requests``), ``None`` in a bare context.
    """

    config: Config
    store: Store
    scheduler: Scheduler
    registry_factory: RegistryFactory
    request_stats: RequestStats
    engine_path: Path | None = None
    engine_error: str = ""
    engine: EngineChoice | None = None
    recorder: RequestLog | None = None

"""The Ollama API face (``/api/*``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import falcon

    from orchestrator.api.shared import ApiContext


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register this face's routes (being written)."""

"""What an Ollama request asks of its model's runner: settings, load, unload.

Ollama puts runner settings in each request (``options.num_ctx``, ``keep_alive``, ``think``);
DMR turns them into a ``_configure`` of the model (spec 1.7), and so do we, through
:meth:`~orchestrator.runners.management.RunnerManagement.configure`, merged into the settings
already stored for the model and mode (so a ``num_ctx`` keeps the ``runtime-flags`` a user
configured). Like ``_configure`` the settings persist until changed.

``keep_alive`` under a second is not stored: it stops the runner once the request is done
(:func:`unload`), as Ollama's ``keep_alive: 0`` does. ``think`` only reaches a model whose chat
template knows of thinking (capability ``thinking``): on any other model a reasoning budget
changes nothing but would restart the runner.

Nothing is configured when the wish changes nothing: a ``num_ctx`` equal to the live runner's
context restarts nothing. ``num_ctx`` is held to [256, the model's training context]: llama.cpp
pads smaller contexts to 256 anyway (and aborts at load with a context of 1), and a larger one
only buys RoPE-extrapolated quality at a memory cost the guard may refuse.

A change that needs a restart while the runner serves other requests cannot be applied
(``configure`` refuses with a conflict): the request is then served by the running runner with
its current settings, and the refusal is logged. Ollama itself would queue the request until
the runner is free and then reload; refusing or failing a chat because another client is
mid-answer would be worse, and the next request after the runner goes idle applies the change.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from orchestrator.api.ollama_models import capabilities, context_length
from orchestrator.api.ollama_request import MIN_CONTEXT, RunnerWish
from orchestrator.errors import ConflictError
from orchestrator.runners.persisted import RunnerSettings

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

log = logging.getLogger(__name__)


def stored_settings(ctx: ApiContext, record: ModelRecord, mode: str) -> RunnerSettings:
    """Return the settings stored for the model in ``mode`` (defaults when none)."""
    for configuration in ctx.scheduler.management.configurations(record.id):
        if configuration.settings.mode == mode:
            return configuration.settings
    return RunnerSettings(mode=mode)


def live_context(ctx: ApiContext, record: ModelRecord, mode: str) -> int | None:
    """Return the context size the model's live runner in ``mode`` runs with, if any."""
    for status in ctx.scheduler.management.ps():
        if status.info.model_id == record.id and status.info.mode == mode:
            return status.info.context_size or None
    return None


def clamp_context(record: ModelRecord, size: int) -> int:
    """Return ``size`` held to [256, the model's training context]."""
    trained = context_length(record)
    if trained is not None:
        size = min(size, trained)
    return max(size, MIN_CONTEXT)


def wished_settings(
    ctx: ApiContext, record: ModelRecord, mode: str, wish: RunnerWish
) -> tuple[RunnerSettings, RunnerSettings]:
    """Return (stored settings, settings with the wish applied)."""
    current = wanted = stored_settings(ctx, record, mode)
    if wish.context_size is not None:
        size = clamp_context(record, wish.context_size)
        if size != (current.context_size or live_context(ctx, record, mode)):
            wanted = dataclasses.replace(wanted, context_size=size)
    if wish.keep_alive is not None:
        wanted = dataclasses.replace(wanted, keep_alive=wish.keep_alive)
    if (
        wish.reasoning_budget is not None
        and mode == "completion"
        and "thinking" in capabilities(record)
    ):
        wanted = dataclasses.replace(wanted, reasoning_budget=wish.reasoning_budget)
    return current, wanted


def apply_wish(ctx: ApiContext, record: ModelRecord, mode: str, wish: RunnerWish) -> None:
    """Configure the model's runner as the request asks, when that changes anything.

    A restart refused because the runner is busy leaves the runner as it is (module doc).

    Raises:
        StoreError: The settings file cannot be written.
    """
    if wish.empty:
        return
    current, wanted = wished_settings(ctx, record, mode, wish)
    if wanted == current:
        return
    try:
        ctx.scheduler.management.configure(record, wanted)
    except ConflictError as ex:
        log.info(
            "ollama request served with the runner's current settings id=%s reason=%s",
            record.short_id,
            ex.message,
        )


def load(ctx: ApiContext, record: ModelRecord, mode: str) -> None:
    """Start (or keep) the model's runner and wait until it is ready (Ollama's preload).

    Raises:
        OrchestratorError: Whatever acquiring a runner raises (507, 503, runner start errors).
    """
    with ctx.scheduler.acquire(record, mode):
        log.info("model loaded for the ollama api id=%s mode=%s", record.short_id, mode)


def unload(ctx: ApiContext, record: ModelRecord) -> int:
    """Stop the model's idle runners (Ollama's ``keep_alive: 0`` with no prompt).

    Runners serving requests stay (DMR's rule); returns how many stopped.
    """
    count = ctx.scheduler.management.unload(model_ids=[record.id])
    log.info("model unloaded for the ollama api id=%s runners=%d", record.short_id, count)
    return count

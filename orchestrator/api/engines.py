"""Scheduler management routes (spec 1.5): status, ps, df, unload, _configure."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import falcon

from orchestrator.api.body import query_string, read_json_object
from orchestrator.api.openai import BACKEND, check_backend, resolve_model
from orchestrator.api.runner_shapes import configuration_entry, ps_entry
from orchestrator.errors import (
    InvalidReferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    OrchestratorError,
)
from orchestrator.runners.persisted import RunnerSettings, parse_configure_request

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

log = logging.getLogger(__name__)

VERSION_TIMEOUT_SECONDS = 10.0


def engine_version(engine_path: Path) -> str:
    """Return what ``llama-server --version`` reports (``0.6.0-dev (build 0, commit x)``).

    Raises:
        OSError, subprocess.SubprocessError: The binary could not be run.
    """
    done = subprocess.run(
        [str(engine_path), "--version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=VERSION_TIMEOUT_SECONDS,
        check=False,
    )
    # llama-server prints its version on stderr.
    for line in (done.stderr + done.stdout).decode("utf-8", "replace").splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    raise subprocess.SubprocessError(
        f"no version line in the output (exit status {done.returncode})"
    )


class StatusResource:
    """``GET /engines/status``: ``{"llama.cpp": "Running: llama.cpp <version>, <engine>"}``.

    The text after the version says which engine build runs on which devices
    (:meth:`EngineChoice.describe`). An engine that crashed at load with SIGILL (see
    ``runners/crashes.py``) turns the status into ``Error: <why and the fix>`` until the binary
    changes; ``docker model status`` and the dashboard show this text as it is. With llama.cpp
    RPC workers it ends with what each last offered (``RPC workers: h:p 23.5 GiB free, ...``),
    as read when a runner was planned.
    """

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._status: str | None = None

    def _compute(self) -> str:
        if self.ctx.engine_path is None:
            return f"Not Installed: {self.ctx.engine_error or 'llama-server was not found'}"
        try:
            version = engine_version(self.ctx.engine_path)
        except (OSError, subprocess.SubprocessError) as ex:
            return f"Error: cannot run {str(self.ctx.engine_path)!r}: {ex}"
        engine = self.ctx.engine
        return f"Running: llama.cpp {version}" + (f", {engine.describe()}" if engine else "")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with self._lock:
            if self._status is None:
                # Run once: the binary does not change under a running daemon.
                self._status = self._compute()
            status = self._status
        crash = self.ctx.scheduler.crashes.engine_crash()
        if crash is not None:
            status = f"Error: {crash.error.message}"
        rpc = self.ctx.scheduler.management.rpc_status()
        if rpc and status.startswith("Running"):
            status = f"{status}; {rpc}"
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps({BACKEND: status}).encode()


class PsResource:
    """``GET /engines/ps``: the runners, DMR's shape."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps([ps_entry(s) for s in self.ctx.scheduler.management.ps()]).encode()


def engine_disk_usage(engine_path: Path | None) -> int:
    """Return the bytes of the engine binary and the shared libraries beside it."""
    if engine_path is None:
        return 0
    total = 0
    try:
        total += engine_path.stat().st_size
        for sibling in engine_path.parent.glob("lib*.so*"):
            if sibling.is_file():
                total += sibling.stat().st_size
    except OSError as ex:
        log.warning("cannot size the engine path=%s error=%s", engine_path, ex)
    return total


class DfResource:
    """``GET /engines/df``: disk used by the store and by the engine."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = {
            "models_disk_usage": self.ctx.store.disk_usage_bytes(),
            "default_backend_disk_usage": engine_disk_usage(self.ctx.engine_path),
        }
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(body).encode()


class UnloadResource:
    """``POST /engines/unload``: ``{"all", "backend", "models"}`` -> ``{"unloaded_runners"}``."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example='{"models": ["ai/smollm2"]}', allow_empty=True)
        unload_all = body.get("all", False)
        if not isinstance(unload_all, bool):
            raise InvalidRequestError(f"all must be true or false, got {unload_all!r}", param="all")
        backend = body.get("backend") or ""
        if not isinstance(backend, str):
            raise InvalidRequestError(f"backend must be a string, got {backend!r}", param="backend")
        models = body.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise InvalidRequestError(
                f"models must be a list of model names, got {models!r}", param="models"
            )
        count = 0
        if backend in ("", BACKEND):
            if unload_all:
                count = self.ctx.scheduler.management.unload(all=True)
            elif models:
                # DMR resolves each name and ignores the ones that are not local.
                ids = [record.id for record in map(self.ctx.store.find, models) if record]
                count = self.ctx.scheduler.management.unload(model_ids=ids) if ids else 0
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps({"unloaded_runners": count}).encode()


class ConfigureResource:
    """``POST /engines[/llama.cpp]/_configure`` (202, then preload); ``GET`` lists settings.

    A ``speculative`` object names a draft model, which must be in the local store (404 names
    it otherwise); it is stored by model ID, and ``GET`` shows it back in the ``Config``.
    """

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        check_backend(backend)
        body = read_json_object(req, example='{"model": "ai/smollm2", "context-size": 8192}')
        request = parse_configure_request(body)
        record = resolve_model(self.ctx.store, request.model)
        settings = self._with_draft(request.settings)
        self.ctx.scheduler.management.configure(record, settings)
        resp.status = 202
        resp.content_type = falcon.MEDIA_TEXT
        resp.data = b""
        threading.Thread(
            target=self._preload,
            args=(record, settings.mode),
            name=f"preload {record.short_id}",
            daemon=True,
        ).start()

    def _with_draft(self, settings: RunnerSettings) -> RunnerSettings:
        """Return ``settings`` with the draft model resolved to its ID (checked runnable).

        Raises:
            ModelNotFoundError: The draft is not in the local store (404, names it).
            InvalidReferenceError: The draft's name is not a valid reference.
            UnsupportedModelError: The draft has no GGUF weights.
        """
        speculative = settings.speculative
        if speculative is None:
            return settings
        name = speculative.draft_model
        param = "speculative.draft_model"
        try:
            draft = self.ctx.store.find(name)
        except InvalidReferenceError as ex:
            raise InvalidReferenceError(
                f"draft model {name!r}: {ex.message}", param=param, details=ex.details
            ) from ex
        if draft is None:
            raise ModelNotFoundError(
                f"draft model {name!r} is not in the local store; pull it first with "
                f"'docker model pull {name}'",
                param=param,
            )
        self.ctx.store.bundle(draft)  # a model without GGUF weights cannot draft: 422 now
        return dataclasses.replace(
            settings, speculative=dataclasses.replace(speculative, draft_model_id=draft.id)
        )

    def _preload(self, record: ModelRecord, mode: str) -> None:
        try:
            with self.ctx.scheduler.acquire(record, mode):
                log.info("model preloaded id=%s mode=%s", record.short_id, mode)
        except OrchestratorError as ex:
            log.warning("preload failed id=%s mode=%s error=%s", record.short_id, mode, ex.message)
        except Exception:
            log.exception("preload failed id=%s mode=%s", record.short_id, mode)

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        check_backend(backend)
        model = query_string(req, "model")
        if model:
            record = self.ctx.store.find(model)
            found = self.ctx.scheduler.management.configurations(record.id) if record else []
        else:
            found = self.ctx.scheduler.management.configurations()
        entries = [configuration_entry(configuration) for configuration in found]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(entries).encode()


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register the ``/engines`` management routes."""
    app.add_route("/engines/status", StatusResource(ctx))
    app.add_route("/engines/ps", PsResource(ctx))
    app.add_route("/engines/df", DfResource(ctx))
    app.add_route("/engines/unload", UnloadResource(ctx))
    configure = ConfigureResource(ctx)
    app.add_route("/engines/_configure", configure)
    app.add_route("/engines/{backend}/_configure", configure)

"""``POST /api/pull``: the store's pull (:func:`~orchestrator.registry.pull.pull_model`), with
progress in Ollama's NDJSON.

The pull itself is the one ``POST /models/create`` runs (same puller, same
:class:`~orchestrator.api.streaming.BackgroundStream` for the thread, the back-pressure and the
first-line wait, same never-fits warning); only the lines differ:

==========================================  ===================================================
DMR progress line                           Ollama line
==========================================  ===================================================
first line of any kind                      ``{"status": "pulling manifest"}`` before it
``progress`` of a layer                     ``{"status": "pulling <12 hex>", "digest", "total",
                                            "completed"}``
``warning``                                 ``{"status": "<message>"}``
``success`` (also "Using cached model")     one ``{"status": "success"}``, last
``error`` / a failure after the first line  ``{"error": "<message>"}``, last
==========================================  ===================================================

``"stream": false`` waits for the end and answers ``{"status": "success"}``, or the error as a
status (Ollama's python client pulls that way by default). A failure before the first line is
a status too (404 for a name the registry does not have), as on ``/models/create``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import read_json_object
from orchestrator.api.models import FIRST_LINE_WAIT_SECONDS, MAX_CONCURRENT_PULLS
from orchestrator.api.ollama_request import model_name, stream_flag
from orchestrator.api.ollama_stream import error_line, mapping, ndjson_line
from orchestrator.api.streaming import BackgroundStream
from orchestrator.errors import InvalidReferenceError, ServiceUnavailableError
from orchestrator.registry.progress import status_event
from orchestrator.registry.pull import pull_model
from orchestrator.store.reference import ModelRef, parse_reference

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext

PULL_SLOT_WAIT_SECONDS = 600.0
_SHORT_DIGEST = 12

Event = dict[str, Any]


class PullLines:
    """Turns one pull's DMR progress events into Ollama's lines (table above)."""

    def __init__(self) -> None:
        self._started = False

    def lines(self, event: Event) -> list[Event]:
        """Return the Ollama lines for one progress event."""
        lines: list[Event] = []
        if not self._started:
            self._started = True
            lines.append({"status": "pulling manifest"})
        kind = event.get("type")
        if kind == "progress":
            layer = mapping(event.get("layer"))
            digest = str(layer.get("id") or "")
            short = digest.removeprefix("sha256:")[:_SHORT_DIGEST]
            lines.append(
                {
                    "status": f"pulling {short}" if short else "pulling manifest",
                    "digest": digest,
                    "total": int(layer.get("size") or 0),
                    "completed": int(layer.get("current") or 0),
                }
            )
        elif kind == "warning":
            lines.append({"status": str(event.get("message") or "")})
        elif kind == "error":
            lines.append({"error": str(event.get("message") or "the pull failed")})
        return lines


class PullResource:
    """``POST /api/pull`` ``{"model", "stream"}`` (``insecure`` is ignored, as in DMR).

    At most :data:`~orchestrator.api.models.MAX_CONCURRENT_PULLS` Ollama pulls run at once;
    more wait for a slot (bounded).
    """

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_PULLS)

    def _job(self, ref: ModelRef) -> Callable[[Callable[[Event], None]], None]:
        store, config, management = self.ctx.store, self.ctx.config, self.ctx.scheduler.management

        def job(progress: Callable[[Event], None]) -> None:
            record = pull_model(ref, store, config=config, bearer_token=None, progress=progress)
            # A model this host can never run is still pulled; the user hears now.
            reason = management.never_fits(record)
            if reason:
                progress(status_event("warning", reason, "pull"))

        return job

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example='{"model": "ai/smollm2"}')
        name = model_name(body)
        stream = stream_flag(body)
        try:
            ref = parse_reference(name)
        except InvalidReferenceError as ex:
            raise InvalidReferenceError(ex.message, param="model", details=ex.details) from ex
        if not self._slots.acquire(timeout=PULL_SLOT_WAIT_SECONDS):
            raise ServiceUnavailableError(
                f"{MAX_CONCURRENT_PULLS} pulls are already running and none finished within "
                f"{PULL_SLOT_WAIT_SECONDS:.0f}s; try again later"
            )
        job = self._job(ref)
        if not stream:
            try:
                job(lambda event: None)
            finally:
                self._slots.release()
            resp.content_type = falcon.MEDIA_JSON
            resp.data = ndjson_line({"status": "success"})
            return
        translate = PullLines()

        def run(emit: Callable[[bytes], None]) -> None:
            def progress(event: Event) -> None:
                for line in translate.lines(event):
                    emit(ndjson_line(line))

            job(progress)
            progress({"type": "end"})  # "pulling manifest" if nothing came before
            emit(ndjson_line({"status": "success"}))

        lines = BackgroundStream(
            run, name=f"ollama pull {name}", on_error=error_line, on_exit=self._slots.release
        )
        lines.start()
        # Raises the pull's error as a status when it failed before the first line.
        lines.wait_first(FIRST_LINE_WAIT_SECONDS)
        resp.status = 200
        resp.content_type = "application/x-ndjson"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = lines

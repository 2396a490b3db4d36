"""Model management routes (``/models``, spec 1.3).

References hold slashes (``ai/smollm2:latest``, ``hf.co/org/repo``) and Falcon 3.1 has no path
converter, so everything below ``/models/`` that is not one of the fixed routes (``create``,
``load``, ``purge``) reaches :class:`ModelSink`, which splits off a trailing action segment
(``export``, ``tag``, ``push``) and dispatches on the method itself.

Pulls and pushes stream DMR progress lines (one JSON object per line, HTML-escaped unless the
client sent ``Accept: application/json``); an error before the first line is a JSON error
status, an error after it is a last ``{"type":"error"}`` line.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import (
    optional_string,
    query_bool,
    query_string,
    read_json_object,
    require_string,
)
from orchestrator.api.repackage import repackage_model
from orchestrator.api.runner_shapes import memory_report
from orchestrator.api.streaming import BackgroundStream
from orchestrator.errors import (
    ConflictError,
    InvalidReferenceError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorError,
    ServiceUnavailableError,
)
from orchestrator.registry.progress import Mode, status_event
from orchestrator.registry.pull import pull_model
from orchestrator.registry.request_auth import HEADER as REGISTRY_AUTH_HEADER
from orchestrator.registry.request_auth import RequestAuth, decode_registry_auth
from orchestrator.store.reference import parse_model_id, parse_reference
from orchestrator.store.tarball import (
    CappedReader,
    Readable,
    export_tar,
    load_tar,
    too_large_error,
)

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

log = logging.getLogger(__name__)

MAX_CONCURRENT_PULLS = 2
PULL_SLOT_WAIT_SECONDS = 600.0
# How long a pull may run before its first line; after that the 200 goes out anyway.
FIRST_LINE_WAIT_SECONDS = 30.0
EXPORT_CHUNK_BYTES = 256 * 1024
_ACTIONS = frozenset({"export", "tag", "push", "repackage"})
# The methods each kind of /models/{ref}[/action] path answers (the Allow header of a 405).
_ALLOWED_METHODS: dict[str | None, list[str]] = {
    None: ["GET", "HEAD", "DELETE"],
    "export": ["GET", "HEAD"],
    "tag": ["POST"],
    "push": ["POST"],
    "repackage": ["POST"],
}
# Go's html.EscapeString, which DMR's progress writer applies to every line.
_GO_HTML_ESCAPES = str.maketrans(
    {"&": "&amp;", "'": "&#39;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "\0": "\ufffd"}
)


def wants_json(req: falcon.Request) -> bool:
    """Return whether the client asked for unescaped JSON lines (``Accept`` exactly JSON)."""
    return (req.get_header("Accept") or "").strip() == "application/json"


def progress_line(event: dict[str, Any], *, escape: bool) -> bytes:
    """Return one progress event as a compact JSON line, HTML-escaped the Go way if asked."""
    text = json.dumps(event, separators=(",", ":"))
    if escape:
        text = text.translate(_GO_HTML_ESCAPES)
    return (text + "\n").encode()


def _error_line(mode: Mode, escape: bool) -> Callable[[BaseException], bytes]:
    def render(ex: BaseException) -> bytes:
        if isinstance(ex, OrchestratorError):
            message = ex.message
            log.warning(
                "%s failed after streaming began code=%s message=%r", mode, ex.code, message
            )
        else:
            message = "internal error; the daemon log has the details"
            log.error("%s failed after streaming began", mode, exc_info=ex)
        return progress_line(status_event("error", f"Error: {message}", mode), escape=escape)

    return render


def _start_progress_stream(
    req: falcon.Request,
    resp: falcon.Response,
    job: Callable[[Callable[[dict[str, Any]], None]], None],
    *,
    mode: Mode,
    name: str,
    on_exit: Callable[[], None] | None = None,
) -> None:
    """Run ``job(progress)`` in a thread and stream its progress events as lines."""
    escape = not wants_json(req)

    def run(emit: Callable[[bytes], None]) -> None:
        job(lambda event: emit(progress_line(event, escape=escape)))

    stream = BackgroundStream(run, name=name, on_error=_error_line(mode, escape), on_exit=on_exit)
    stream.start()
    # Raises the job's error as a JSON status when it failed before the first line.
    stream.wait_first(FIRST_LINE_WAIT_SECONDS)
    resp.status = 200
    resp.content_type = falcon.MEDIA_JSON if not escape else "text/plain; charset=utf-8"
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = stream


def request_registry_auth(req: falcon.Request) -> RequestAuth | None:
    """Return the ``X-Registry-Auth`` credentials of ``req``, for this request only.

    Raises:
        InvalidRequestError: The header is malformed (400).
    """
    value = req.get_header(REGISTRY_AUTH_HEADER)
    return decode_registry_auth(value) if value is not None else None


class ModelsResource:
    """``GET /models``: every local model (DMR Model JSON)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(
            [record.to_api() for record in self.ctx.store.list_models()]
        ).encode()


class CreateResource:
    """``POST /models/create``: pull a model, streaming progress lines.

    At most :data:`MAX_CONCURRENT_PULLS` run at once; more wait for a slot (bounded).
    """

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_PULLS)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example='{"from": "ai/smollm2"}')
        raw = require_string(body, "from", what="name the model to pull, e.g. 'ai/smollm2'")
        token = optional_string(body, "bearer-token") or None
        request_auth = request_registry_auth(req)
        try:
            ref = parse_reference(raw)
        except InvalidReferenceError as ex:
            raise InvalidReferenceError(ex.message, param="from", details=ex.details) from ex
        if not self._slots.acquire(timeout=PULL_SLOT_WAIT_SECONDS):
            raise ServiceUnavailableError(
                f"{MAX_CONCURRENT_PULLS} pulls are already running and none finished within "
                f"{PULL_SLOT_WAIT_SECONDS:.0f}s; try again later"
            )
        store, config = self.ctx.store, self.ctx.config

        def job(progress: Callable[[dict[str, Any]], None]) -> None:
            seen_success = False

            def report(event: dict[str, Any]) -> None:
                nonlocal seen_success
                seen_success = seen_success or event.get("type") == "success"
                progress(event)

            record = pull_model(
                ref,
                store,
                config=config,
                bearer_token=token,
                progress=report,
                request_auth=request_auth,
            )
            # A model this host can never run is still pulled (it may be pushed or exported),
            # but the user hears now, not at the first request.
            reason = self.ctx.scheduler.management.never_fits(record)
            if reason:
                progress(status_event("warning", reason, "pull"))
            if not seen_success:
                progress(status_event("success", "Model pulled successfully", "pull"))

        # The job thread gives the slot back when it ends, whichever way (on_exit).
        _start_progress_stream(
            req, resp, job, mode="pull", name=f"pull {raw}", on_exit=self._slots.release
        )


class LoadResource:
    """``POST /models/load``: import a tar archive (spec 3.6), answer one success line."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Not read_body's 10 MiB cap: the body is a whole model. max_load_size bounds it, from
        # Content-Length before anything is read and, for chunked uploads, as it is read;
        # load_tar deletes what a refused archive wrote.
        limit = self.ctx.config.max_load_size
        length = req.content_length
        if limit > 0 and length is not None and length > limit:
            raise too_large_error(limit, length)
        source: Readable = req.bounded_stream if length is not None else req.stream
        if limit > 0:
            source = CappedReader(source, limit)
        record = load_tar(self.ctx.store, source)
        log.info("model loaded from tar id=%s", record.id)
        resp.content_type = falcon.MEDIA_JSON if wants_json(req) else "text/plain; charset=utf-8"
        resp.data = progress_line(
            status_event("success", "Model loaded successfully", "load"), escape=not wants_json(req)
        )


class PurgeResource:
    """``DELETE /models/purge``: delete every model (refused while a runner is in use)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        busy = [status for status in self.ctx.scheduler.management.ps() if status.in_use]
        if busy:
            names = ", ".join(repr(status.info.model_name) for status in busy)
            raise ConflictError(
                f"cannot purge the store while runners are serving requests ({names}); "
                "wait for them to finish or unload them"
            )
        self.ctx.scheduler.management.unload(all=True)
        self.ctx.store.purge()
        log.info("store purged")
        resp.status = 200
        resp.content_type = falcon.MEDIA_TEXT
        resp.data = b""


class _ExportWriter:
    """File-like sink for :func:`export_tar` that emits 256 KiB chunks."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= EXPORT_CHUNK_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._emit(chunk)


class ModelSink:
    """Everything under ``/models/{ref...}``: inspect, delete, tag, push, export, repackage."""

    prefix = re.compile(r"^/models/(?P<path>.+)$")

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        # Falcon passes the prefix's named groups as keyword arguments.
        path = str(params.get("path") or "")
        head, _, last = path.rpartition("/")
        action = last if head and last in _ACTIONS else None
        ref = head if action else path
        method = req.method
        if method in ("GET", "HEAD"):
            if action == "export":
                self.export(req, resp, ref)
            elif action is None:
                self.inspect(req, resp, ref)
            else:
                raise falcon.HTTPMethodNotAllowed(_ALLOWED_METHODS[action])
        elif method == "DELETE" and action is None:
            self.delete(req, resp, ref)
        elif method == "POST":
            if action == "tag":
                self.tag(req, resp, ref)
            elif action == "push":
                self.push(req, resp, ref)
            elif action == "repackage":
                repackage_model(self.ctx, req, resp, ref)
            else:
                raise NotFoundError(
                    f"unknown action {last!r} for model {head or path!r}; use tag, push or export"
                )
        else:
            raise falcon.HTTPMethodNotAllowed(_ALLOWED_METHODS[action])

    def inspect(self, req: falcon.Request, resp: falcon.Response, ref: str) -> None:
        """``GET /models/{ref}[?remote=true]``."""
        if query_bool(req, "remote"):
            target = parse_reference(ref)
            with self.ctx.registry_factory(None) as client:
                body = client.remote_model(target)
        else:
            record = self.ctx.store.resolve(ref, partial=True)
            body = record.to_api()
            body["memory"] = self._memory(record)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(body).encode()

    def _memory(self, record: Any) -> dict[str, Any] | None:
        """Return the memory a runner of ``record`` would need here (``None`` if unknown)."""
        try:
            return memory_report(self.ctx.scheduler.management.memory_for(record))
        except OrchestratorError as ex:
            # NOTE(memory): inspect must not fail on a model whose settings the estimate
            # rejects (an unknown cache type); the runner start reports that.
            log.info("no memory estimate for model=%s reason=%s", record.id, ex.message)
            return None

    def delete(self, req: falcon.Request, resp: falcon.Response, ref: str) -> None:
        """``DELETE /models/{ref}[?force=true]``; stops idle runners of a deleted model."""
        force = query_bool(req, "force")
        result = self.ctx.store.delete(ref, force=force)
        deleted = [entry["Deleted"] for entry in result if "Deleted" in entry]
        if deleted:
            # Runners still serving keep their (unlinked) files open; idle ones go now.
            self.ctx.scheduler.management.unload(model_ids=deleted)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(result).encode()

    def tag(self, req: falcon.Request, resp: falcon.Response, ref: str) -> None:
        """``POST /models/{ref}/tag?repo=&tag=`` -> 201."""
        repo = query_string(req, "repo")
        tag = query_string(req, "tag")
        if not repo or not tag:
            raise InvalidRequestError(
                "missing repo or tag query parameter; use ?repo=<name>&tag=<tag>",
                param="repo" if not repo else "tag",
            )
        target = f"{repo}:{tag}"
        self.ctx.store.tag(ref, target)
        resp.status = 201
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(
            {"message": f'Model tagged successfully with "{target}"', "target": target}
        ).encode()

    def push(self, req: falcon.Request, resp: falcon.Response, ref: str) -> None:
        """``POST /models/{ref}/push``: streamed progress lines (mode ``push``)."""
        body = read_json_object(req, example='{"bearer-token": "..."}', allow_empty=True)
        token = optional_string(body, "bearer-token") or None
        request_auth = request_registry_auth(req)
        if parse_model_id(ref) is not None:
            raise InvalidReferenceError(
                f"cannot push {ref!r}: an ID has no repository; tag the model first "
                "(POST /models/{ref}/tag) and push the tag",
            )
        target = parse_reference(ref)
        record = self.ctx.store.resolve(ref)
        store, factory = self.ctx.store, self.ctx.registry_factory

        def job(progress: Callable[[dict[str, Any]], None]) -> None:
            seen_success = False

            def report(event: dict[str, Any]) -> None:
                nonlocal seen_success
                seen_success = seen_success or event.get("type") == "success"
                progress(event)

            bound = request_auth.bound_to(target.registry) if request_auth else None
            with factory(token, bound) as client:
                client.push(record, target, store, report)
            if not seen_success:
                progress(status_event("success", "Model pushed successfully", "push"))

        _start_progress_stream(req, resp, job, mode="push", name=f"push {ref}")

    def export(self, req: falcon.Request, resp: falcon.Response, ref: str) -> None:
        """``GET /models/{ref}/export``: the model as a tar stream (spec 3.6)."""
        record: ModelRecord = self.ctx.store.resolve(ref)
        store = self.ctx.store

        def job(emit: Callable[[bytes], None]) -> None:
            writer = _ExportWriter(emit)
            export_tar(store, record, writer)  # type: ignore[arg-type]
            writer.flush()

        stream = BackgroundStream(job, name=f"export {ref}")
        stream.start()
        stream.wait_first(FIRST_LINE_WAIT_SECONDS)
        filename = (ref + ".tar").replace("\\", "\\\\").replace('"', '\\"')
        resp.content_type = "application/x-tar"
        resp.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        resp.stream = stream


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register the ``/models`` routes."""
    app.add_route("/models", ModelsResource(ctx))
    app.add_route("/models/create", CreateResource(ctx))
    app.add_route("/models/load", LoadResource(ctx))
    app.add_route("/models/purge", PurgeResource(ctx))
    app.add_sink(ModelSink(ctx), ModelSink.prefix)

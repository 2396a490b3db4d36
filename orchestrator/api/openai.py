"""OpenAI-compatible routes: inference pass-through and the local model list.

Inference (spec 1.4): read the body once (10 MiB cap), take only ``model`` from it, resolve it
in the local store (no auto-pull), acquire a runner in the route's mode, and hand the original
bytes to :func:`orchestrator.proxy.forward`, recording the request for ``/engines/requests``
(:mod:`orchestrator.api.recorder`). ``X-Preload-Only: true`` stops after the runner is ready.

Every path answers as ``/engines/v1/...``, ``/engines/{backend}/v1/...`` and the bare
``/v1/...`` alias (DMR's ``AliasHandler`` prefixes ``/engines`` to anything under ``/v1/``).
Beyond DMR's table, rerank and score also answer under ``v1/`` (``/v1/rerank``: what
llama-server and rerank clients use; in DMR the alias lands on ``/engines/{backend}/rerank``
with backend ``v1`` and 404s). ``/v1/images/generations`` exists as in DMR and answers 501
for a local model: llama.cpp cannot generate images (DMR's diffusers backend can).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import parse_json, read_body, require_string
from orchestrator.api.recorder import begin_forward
from orchestrator.errors import (
    EngineNotFoundError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    NotSupportedError,
)
from orchestrator.proxy import forward
from orchestrator.runners.info import BACKEND
from orchestrator.store.reference import model_label

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.store import Store

# (route suffix, upstream path, mode); the suffix follows /engines[/{backend}] and, for the
# /v1 ones, the bare /v1 alias too.
_V1_INFERENCE = (
    ("/v1/chat/completions", "/v1/chat/completions", "completion"),
    ("/v1/completions", "/v1/completions", "completion"),
    ("/v1/embeddings", "/v1/embeddings", "embedding"),
)
_TOP_INFERENCE = (
    ("/rerank", "/rerank", "reranking"),
    ("/score", "/score", "reranking"),
)
# Under /engines[/{backend}]/v1 and /v1 too (not in DMR; llama-server's own /v1/rerank).
_V1_RERANK = (
    ("/v1/rerank", "/rerank", "reranking"),
    ("/v1/score", "/score", "reranking"),
)
_IMAGES_SUFFIX = "/v1/images/generations"
_MODEL_PATH = re.compile(r"^(?:/engines(?:/(?P<backend>[^/]+))?)?/v1/models/(?P<ref>.+)$")


def check_backend(backend: str | None) -> None:
    """Accept no backend segment or ``llama.cpp``.

    Raises:
        NotFoundError: Any other backend name.
    """
    if backend is not None and backend != BACKEND:
        raise NotFoundError(
            f"backend {backend!r} is not available; this runner only has {BACKEND!r} "
            f"(use /engines/v1/... or /engines/{BACKEND}/v1/...)",
        )


def resolve_model(store: Store, model: str) -> ModelRecord:
    """Return the local model named in an inference request.

    Raises:
        ModelNotFoundError: Not in the local store (the message says how to pull it).
        InvalidReferenceError: Not a valid reference.
    """
    try:
        return store.resolve(model)
    except ModelNotFoundError as ex:
        raise ModelNotFoundError(
            f"model {model!r} is not in the local store; pull it first with "
            f"'docker model pull {model}' (POST /models/create)",
            param="model",
            details=ex.details,
        ) from ex


def openai_model(record: ModelRecord) -> dict[str, Any]:
    """Return the OpenAI model object of ``record`` with DMR's ``dmr`` block (spec 1.4)."""
    body: dict[str, Any] = {
        "id": record.tags[0] if record.tags else record.id,
        "object": "model",
        "created": record.created,
        "owned_by": "docker",
    }
    config = record.model_config
    if config:
        dmr: dict[str, Any] = {}
        if config.get("context_size"):
            dmr["context_window"] = config["context_size"]
        for key in ("architecture", "parameters", "quantization", "size"):
            if config.get(key):
                dmr[key] = config[key]
        body["dmr"] = dmr
    return body


def check_engine_input(upstream_path: str, payload: dict[str, Any]) -> None:
    """Refuse a body that would make llama-server abort instead of answering.

    A rerank of an empty query against an empty document trips an assertion in llama-server
    (``GGML_ASSERT(dynamic_cast<server_task_result_rerank*>...)`` in ``server-context.cpp``):
    the runner dies and every request it was serving fails. Found by the API fuzzer.

    Raises:
        InvalidRequestError: The query and a document are both empty.
    """
    if upstream_path != "/rerank" or payload.get("query") != "":
        return
    for key in ("documents", "texts"):  # llama-server reads either name
        documents = payload.get(key)
        if isinstance(documents, list) and "" in documents:
            raise InvalidRequestError(
                f"the query and document {documents.index('')} are both empty; the engine "
                "cannot rank empty text against an empty query: send text in one of them",
                param=key,
            )


def read_model_request(req: falcon.Request, example: str) -> tuple[bytes, dict[str, Any], str]:
    """Read an inference body: (the bytes, the JSON object, its non-empty ``model``).

    Raises:
        InvalidRequestError: Not a JSON object (``example`` shows one), or no ``model``.
        RequestTooLargeError: Over the 10 MiB cap.
    """
    body = read_body(req)
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidRequestError(f"the request body must be a JSON object such as {example}")
    model = require_string(payload, "model", what="name a local model, e.g. 'ai/smollm2'")
    return body, payload, model


class InferenceResource:
    """``POST`` to an engine path: chat/completions, completions, embeddings, rerank.

    Args:
        ctx: Shared API context.
        upstream_path: Path on llama-server.
        mode: Runner mode this route needs.
    """

    def __init__(self, ctx: ApiContext, upstream_path: str, mode: str) -> None:
        self.ctx = ctx
        self.upstream_path = upstream_path
        self.mode = mode

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        check_backend(backend)
        body, payload, model = read_model_request(req, '{"model": "ai/smollm2", ...}')
        record = resolve_model(self.ctx.store, model)
        check_engine_input(self.upstream_path, payload)
        if self.upstream_path == "/score":
            raise NotSupportedError(
                "the llama.cpp engine has no /score endpoint; use /rerank for reranking",
            )
        if self.ctx.engine_path is None:
            raise EngineNotFoundError(self.ctx.engine_error or "llama-server was not found")
        timer = self.ctx.request_stats.begin(model_label(record.tags, record.id), self.mode)
        try:
            lease = self.ctx.scheduler.acquire(record, self.mode)
        except BaseException as ex:
            timer.status = getattr(ex, "status", 500)
            timer.finish()
            raise
        if (req.get_header("X-Preload-Only") or "").strip().lower() == "true":
            lease.release()
            timer.status = 200
            timer.finish()
            resp.status = 200
            resp.content_type = falcon.MEDIA_TEXT
            resp.data = b""
            return
        recording = begin_forward(self.ctx, req, record, model, self.mode, lease, body)
        try:
            forward(
                req,
                resp,
                lease,
                upstream_path=self.upstream_path,
                body=body,
                model=model,
                timer=timer,
                recording=recording,
            )
        except BaseException as ex:
            if recording is not None:
                recording.fail_with(ex)
                recording.finish()
            raise
        if recording is not None and resp.stream is None:
            # An engine error read whole (the stream, when there is one, records itself).
            recording.respond(http_status(resp.status), False)
            recording.capture(resp.data or b"")
            recording.finish()


class ImagesResource:
    """``POST .../v1/images/generations``: DMR's image route; llama.cpp cannot, so 501.

    The body is read and the model resolved first, so a bad request or an unknown model gets
    the same 400/404 as on the other inference routes.
    """

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        check_backend(backend)
        _body, _payload, model = read_model_request(req, '{"model": "...", "prompt": "..."}')
        resolve_model(self.ctx.store, model)
        raise NotSupportedError(
            f"model {model!r} cannot generate images: the llama.cpp engine has no "
            "/v1/images/generations (Docker Model Runner serves it with its diffusers backend, "
            "which this runner does not have)"
        )


def http_status(status: Any) -> int:
    """Return a Falcon status (``200``, ``"200 OK"`` or ``HTTPStatus``) as an int."""
    return int(str(getattr(status, "value", status)).split(" ", 1)[0])


class ModelListResource:
    """``GET .../v1/models``: every local model, OpenAI list shape."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        # DMR does not validate the backend segment here (spec 1.4).
        data = [openai_model(record) for record in self.ctx.store.list_models()]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps({"object": "list", "data": data}).encode()


class ModelSink:
    """``GET .../v1/models/{ref...}``: one local model (no partial-name fallback)."""

    prefix = _MODEL_PATH

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        # Falcon passes the prefix's named groups (backend, ref) as keyword arguments.
        ref = str(params.get("ref") or "")
        if req.method not in ("GET", "HEAD"):
            raise falcon.HTTPMethodNotAllowed(["GET"])
        try:
            record = self.ctx.store.resolve(ref)
        except ModelNotFoundError as ex:
            raise ModelNotFoundError(
                f"model {ref!r} is not in the local store; pull it first with "
                f"'docker model pull {ref}'",
                details=ex.details,
            ) from ex
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(openai_model(record)).encode()


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register the inference routes, their aliases and the model list routes."""
    for suffix, upstream, mode in _V1_INFERENCE:
        resource = InferenceResource(ctx, upstream, mode)
        app.add_route("/engines" + suffix, resource)
        app.add_route("/engines/{backend}" + suffix, resource)
        app.add_route(suffix, resource)
    for suffix, upstream, mode in _TOP_INFERENCE + _V1_RERANK:
        resource = InferenceResource(ctx, upstream, mode)
        app.add_route("/engines" + suffix, resource)
        app.add_route("/engines/{backend}" + suffix, resource)
        app.add_route(suffix, resource)
    images = ImagesResource(ctx)
    app.add_route("/engines" + _IMAGES_SUFFIX, images)
    app.add_route("/engines/{backend}" + _IMAGES_SUFFIX, images)
    app.add_route(_IMAGES_SUFFIX, images)
    models = ModelListResource(ctx)
    app.add_route("/engines/v1/models", models)
    app.add_route("/engines/{backend}/v1/models", models)
    app.add_route("/v1/models", models)
    app.add_sink(ModelSink(ctx), ModelSink.prefix)

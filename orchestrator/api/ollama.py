"""The Ollama API face (``/api/*``, spec 1.7), so Ollama's clients can use the daemon.

==========================  ======  ==========================================================
Route                       Method  What it does
==========================  ======  ==========================================================
``/api/version``            GET     ``{"version": OLLAMA_VERSION}``
``/api/tags``               GET     local models, one entry per tag (:mod:`.ollama_models`)
``/api/ps``                 GET     live runners
``/api/show``               POST    one model: details, model_info, template, capabilities
``/api/chat``               POST    chat completions, translated both ways (NDJSON stream)
``/api/generate``           POST    ``prompt`` (+ ``system``) as a chat; empty prompt loads,
                                    with ``keep_alive: 0`` unloads
``/api/embed``              POST    ``/v1/embeddings`` (``input``: text or list)
``/api/embeddings``         POST    the legacy form: ``prompt`` -> ``embedding``
``/api/pull``               POST    the store's pull, progress as Ollama's NDJSON
``/api/delete``             DELETE  unload, then delete (a tag: untag)
``/api/copy``               POST    tag ``source`` as ``destination``
==========================  ======  ==========================================================

Inference goes through :func:`~orchestrator.api.engine_call.call_engine` (the one path to a
runner for translating faces); request and answer translation live in
:mod:`.ollama_request` and :mod:`.ollama_stream`, runner settings in :mod:`.ollama_runner`,
pulls in :mod:`.ollama_pull`. Errors are raised as :class:`~orchestrator.errors.OrchestratorError`
and rendered as ``{"error": "<message>"}`` by the one error renderer; an unknown model is a
404 ``model '<name>' not found`` (Ollama's words, which its clients look for).

``OLLAMA_VERSION`` is 0.6.8, the last 0.6 release: clients gate features on the server's
version (VS Code's Copilot refuses an Ollama older than 0.6.4; structured outputs need 0.5),
while 0.9's ``think`` protocol (separate ``thinking`` streams, levels) is only partly here.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import read_json_object
from orchestrator.api.engine_call import call_engine
from orchestrator.api.faces import Face
from orchestrator.api.ollama_models import capabilities, ps_entry, show_body, tag_entries
from orchestrator.api.ollama_pull import PullResource
from orchestrator.api.ollama_request import (
    RunnerWish,
    chat_payload,
    dimensions_of,
    embed_inputs,
    generate_payload,
    model_name,
    optional_text,
    options_of,
    runner_wish,
    stream_flag,
)
from orchestrator.api.ollama_runner import apply_wish, load, stored_settings, unload
from orchestrator.api.ollama_stream import NdjsonStream, Translator, created_at, ndjson_line
from orchestrator.api.recorder import client_request
from orchestrator.api.request_log import ClientRequest
from orchestrator.errors import InvalidRequestError, ModelNotFoundError, RunnerCrashedError

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext
    from orchestrator.store.records import ModelRecord

OLLAMA_VERSION = "0.6.8"
MEDIA_NDJSON = "application/x-ndjson"


def resolve(ctx: ApiContext, name: str, param: str = "model") -> ModelRecord:
    """Return the local model ``name`` names.

    Raises:
        ModelNotFoundError: Not in the store, in Ollama's words.
        InvalidReferenceError: Not a valid name.
    """
    try:
        return ctx.store.resolve(name)
    except ModelNotFoundError as ex:
        raise ModelNotFoundError(
            f"model {name!r} not found", param=param, details=ex.details
        ) from ex


def send_json(resp: falcon.Response, body: object, status: int = 200) -> None:
    """Answer ``body`` as JSON."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(body).encode()


class VersionResource:
    """``GET /api/version``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_json(resp, {"version": OLLAMA_VERSION})


class TagsResource:
    """``GET /api/tags``: every local model, one entry per tag."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = [entry for record in self.ctx.store.list_models() for entry in tag_entries(record)]
        send_json(resp, {"models": models})


class PsResource:
    """``GET /api/ps``: the live runners."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        find = self.ctx.store.find
        models = [ps_entry(s, find(s.info.model_id)) for s in self.ctx.scheduler.management.ps()]
        send_json(resp, {"models": models})


class ShowResource:
    """``POST /api/show``: one model's description."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example='{"model": "ai/smollm2"}')
        record = resolve(self.ctx, model_name(body))
        context = stored_settings(self.ctx, record, "completion").context_size
        send_json(resp, show_body(record, context))


def has_images(payload: dict[str, Any]) -> bool:
    """Return whether an OpenAI chat body holds an ``image_url`` part."""
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in payload.get("messages", [])
        if isinstance(message.get("content"), list)
        for part in message["content"]
    )


class ChatResource:
    """``POST /api/chat`` and ``POST /api/generate`` (``generate=True``).

    Args:
        ctx: Shared API context.
        generate: Serve ``/api/generate`` (``prompt`` in, ``response`` out).
    """

    def __init__(self, ctx: ApiContext, *, generate: bool) -> None:
        self.ctx = ctx
        self.generate = generate

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        body = read_json_object(req, example='{"model": "ai/smollm2", "prompt": "Hi"}')
        name = model_name(body)
        stream = stream_flag(body)
        options = options_of(body)
        wish = runner_wish(body, options)
        build = generate_payload if self.generate else chat_payload
        payload = build(body, name, stream, options)
        record = resolve(self.ctx, name)
        if has_images(payload) and "vision" not in capabilities(record):
            raise InvalidRequestError(
                f"model {name!r} cannot read images (it has no multimodal projector); send "
                "text only, or use a vision model",
                param="images",
            )
        if self._is_empty(body):
            self._load_or_unload(resp, record, name, wish, stream)
            return
        apply_wish(self.ctx, record, "completion", wish)
        answer = call_engine(
            self.ctx,
            face=Face.OLLAMA,
            model=name,
            mode="completion",
            upstream_path="/v1/chat/completions",
            payload=payload,
            record=record,
            client=client_request(req, body, Face.OLLAMA),
        )
        translator = Translator(
            name, generate=self.generate, started=started, load_seconds=answer.acquire_seconds
        )

        def unload_now() -> None:
            unload(self.ctx, record)

        done = unload_now if wish.unload_after else None
        if stream:
            resp.status = 200
            resp.content_type = MEDIA_NDJSON
            resp.set_header("Cache-Control", "no-cache")
            resp.set_header("X-Accel-Buffering", "no")
            resp.stream = NdjsonStream(answer, translator, on_close=done)
            return
        try:
            send_json(resp, translator.whole(answer.json()))
        finally:
            if done is not None:
                done()

    def _is_empty(self, body: dict[str, Any]) -> bool:
        """Return whether the request only loads or unloads (no prompt, no messages)."""
        if self.generate:
            return not optional_text(body, "prompt") and not body.get("images")
        return not body.get("messages")

    def _load_or_unload(
        self,
        resp: falcon.Response,
        record: ModelRecord,
        name: str,
        wish: RunnerWish,
        stream: bool,
    ) -> None:
        """Answer a request without input as Ollama does: unload (``keep_alive`` 0) or load."""
        if wish.unload_after:
            unload(self.ctx, record)
            reason = "unload"
        else:
            apply_wish(self.ctx, record, "completion", wish)
            load(self.ctx, record, "completion")
            reason = "load"
        answer: dict[str, Any] = {"model": name, "created_at": created_at()}
        if self.generate:
            answer["response"] = ""
        else:
            answer["message"] = {"role": "assistant", "content": ""}
        answer.update(done=True, done_reason=reason)
        if stream:
            resp.content_type = MEDIA_NDJSON
            resp.data = ndjson_line(answer)
        else:
            send_json(resp, answer)


def _normalized(vector: list[float], dimensions: int | None) -> list[float]:
    """Return ``vector`` cut to ``dimensions`` and scaled to unit length (Ollama's rule)."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in cut))
    return [value / norm for value in cut] if norm > 0 else cut


class EmbedResource:
    """``POST /api/embed`` (``input`` -> ``embeddings``) and the legacy ``/api/embeddings``.

    Args:
        ctx: Shared API context.
        legacy: Serve ``/api/embeddings`` (``prompt`` in, one ``embedding`` out).
    """

    def __init__(self, ctx: ApiContext, *, legacy: bool) -> None:
        self.ctx = ctx
        self.legacy = legacy

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        body = read_json_object(req, example='{"model": "ai/smollm2", "input": "Hi"}')
        name = model_name(body)
        options = options_of(body)
        wish = runner_wish(body, options)
        if self.legacy:
            prompt = optional_text(body, "prompt")
            inputs = [prompt] if prompt else []
            dimensions = None
        else:
            inputs = embed_inputs(body)
            dimensions = dimensions_of(body)
        record = resolve(self.ctx, name)
        apply_wish(self.ctx, record, "embedding", wish)
        try:
            client = client_request(req, body, Face.OLLAMA)
            vectors, prompt_tokens = (
                self._embed(name, record, inputs, client) if inputs else ([], 0)
            )
        finally:
            if wish.unload_after:
                unload(self.ctx, record)
        if self.legacy:
            send_json(resp, {"embedding": vectors[0] if vectors else []})
            return
        total = max(int((time.monotonic() - started) * 1e9), 0)
        send_json(
            resp,
            {
                "model": name,
                "embeddings": [_normalized(vector, dimensions) for vector in vectors],
                "total_duration": total,
                "prompt_eval_count": prompt_tokens,
            },
        )

    def _embed(
        self, name: str, record: ModelRecord, inputs: list[str], client: ClientRequest
    ) -> tuple[list[list[float]], int]:
        answer = call_engine(
            self.ctx,
            face=Face.OLLAMA,
            model=name,
            mode="embedding",
            upstream_path="/v1/embeddings",
            payload={"model": name, "input": inputs, "encoding_format": "float"},
            record=record,
            client=client,
        ).json()
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise RunnerCrashedError(f"the runner of model {name!r} answered without embeddings")
        rows = sorted(
            (item for item in data if isinstance(item, dict)), key=lambda item: item.get("index", 0)
        )
        vectors = [list(item.get("embedding") or []) for item in rows]
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens")
        return vectors, tokens if isinstance(tokens, int) else 0


class DeleteResource:
    """``DELETE /api/delete``: unload the model's idle runners, then delete (or untag) it."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example='{"model": "ai/smollm2"}')
        name = model_name(body)
        record = resolve(self.ctx, name)
        unload(self.ctx, record)
        self.ctx.store.delete(name)
        send_json(resp, {})


def _required_name(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(
            f"{key} is required: a model name such as 'ai/smollm2:latest'", param=key
        )
    return value.strip()


class CopyResource:
    """``POST /api/copy``: give the model ``source`` names the tag ``destination``."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, example='{"source": "ai/smollm2", "destination": "mine:v1"}')
        source, destination = (_required_name(body, key) for key in ("source", "destination"))
        resolve(self.ctx, source, param="source")
        self.ctx.store.tag(source, destination)
        send_json(resp, {})


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register the ``/api`` routes."""
    app.add_route("/api/version", VersionResource())
    app.add_route("/api/tags", TagsResource(ctx))
    app.add_route("/api/ps", PsResource(ctx))
    app.add_route("/api/show", ShowResource(ctx))
    app.add_route("/api/chat", ChatResource(ctx, generate=False))
    app.add_route("/api/generate", ChatResource(ctx, generate=True))
    app.add_route("/api/embed", EmbedResource(ctx, legacy=False))
    app.add_route("/api/embeddings", EmbedResource(ctx, legacy=True))
    app.add_route("/api/pull", PullResource(ctx))
    app.add_route("/api/delete", DeleteResource(ctx))
    app.add_route("/api/copy", CopyResource(ctx))

"""The OpenAI Responses API face (spec 1.9), for clients of ``client.responses``.

Routes, under each prefix ``/responses``, ``/v1/responses``, ``/engines/responses``,
``/engines/v1/responses`` and ``/engines/{backend}/v1/responses`` (backend ``llama.cpp``):

=================================  ======  =====================================================
Route                              Method  What it does
=================================  ======  =====================================================
``<p>``                            POST    create (``stream``: server-sent events)
``<p>/{response_id}``              GET     a stored response (``?stream=true``: its events)
``<p>/{response_id}``              DELETE  forget it
``<p>/{response_id}/input_items``  GET     its input items (``after``, ``limit``, ``order``)
=================================  ======  =====================================================

Why chat completions and not llama-server's own ``/v1/responses``: this build has one, but it
is stateless (it refuses ``previous_response_id``, has no ``GET``), reports a response cut by
``max_output_tokens`` as ``completed``, and its events carry no ``sequence_number`` nor
``output_index``, which the ``openai`` package's stream helper needs. The store, the chaining
and the events must be ours either way, so the request is translated to
``/v1/chat/completions`` (as DMR does) through
:func:`~orchestrator.api.engine_call.call_engine`, the one path to a runner (model resolution,
memory guard, queue limits, metrics labelled ``responses``). Translation lives in
:mod:`.responses_request` (checking the body) and :mod:`.responses_translate` (both
directions), events in :mod:`.responses_stream`, the bounded store in :mod:`.responses_store`.

Beyond DMR: ``input_items`` lists the real input items (DMR's is always empty), a
``previous_response_id`` chain replays every step's input and output (DMR's only the outputs),
and a chain keeps its history when an ancestor leaves the store.

Errors are raised as :class:`~orchestrator.errors.OrchestratorError`; the error renderer gives
them the OpenAI shape on these paths (``face_of_path`` maps every route above to
``Face.RESPONSES``). An unknown, deleted, expired or unstored id is 404 ``not_found``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import query_bool, query_string, read_json_object
from orchestrator.api.engine_call import call_engine
from orchestrator.api.faces import Face
from orchestrator.api.openai import check_backend
from orchestrator.api.recorder import client_request
from orchestrator.api.responses_request import ResponsesRequest, new_id, parse_request
from orchestrator.api.responses_store import ResponseStore, StoredResponse, entry
from orchestrator.api.responses_stream import EventStream, ResponseEvents, replay
from orchestrator.api.responses_translate import chat_payload, from_chat_answer, response_object
from orchestrator.errors import InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext

PREFIXES = (
    "/responses",
    "/v1/responses",
    "/engines/responses",
    "/engines/v1/responses",
    "/engines/{backend}/v1/responses",
)
MEDIA_SSE = "text/event-stream"
_EXAMPLE = '{"model": "ai/smollm2", "input": "Say hello"}'
_MAX_LIMIT = 100


def send_json(resp: falcon.Response, body: object) -> None:
    """Answer ``body`` as JSON with status 200."""
    resp.status = 200
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(body).encode()


def not_found(store: ResponseStore, response_id: str, param: str | None = None) -> NotFoundError:
    """Return the 404 for an id the store does not hold, saying why it may be gone."""
    kept = "forever" if store.ttl < 0 else f"for {store.ttl:g}s after they are written"
    return NotFoundError(
        f"response {response_id!r} was not found: it was created with store=false, deleted, "
        f"or dropped (this daemon keeps at most {store.max_count} responses, {kept}, in "
        "memory; a restart forgets them)",
        param=param,
    )


class CreateResource:
    """``POST <p>``: a response from the model, stored unless ``store`` is false.

    Args:
        ctx: Shared API context.
        store: The response store.
    """

    def __init__(self, ctx: ApiContext, store: ResponseStore) -> None:
        self.ctx = ctx
        self.store = store

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, backend: str | None = None
    ) -> None:
        check_backend(backend)
        body = read_json_object(req, example=_EXAMPLE)
        request = parse_request(body)
        parent = self._parent(request)
        payload = chat_payload(request, parent.history_items() if parent else [])
        response = response_object(request, new_id("resp"), int(time.time()), "in_progress")
        answer = call_engine(
            self.ctx,
            face=Face.RESPONSES,
            model=request.model,
            mode="completion",
            upstream_path="/v1/chat/completions",
            payload=payload,
            client=client_request(req, body, Face.RESPONSES),
        )
        if not request.stream:
            finished = from_chat_answer(response, answer.json())
            self._save(request, finished, parent)
            send_json(resp, finished)
            return
        resp.status = 200
        resp.content_type = MEDIA_SSE
        resp.set_header("Cache-Control", "no-cache")
        resp.stream = EventStream(
            answer,
            ResponseEvents(response),
            lambda final: self._save(request, final, parent),
        )

    def _parent(self, request: ResponsesRequest) -> StoredResponse | None:
        if request.previous_response_id is None:
            return None
        parent = self.store.get(request.previous_response_id)
        if parent is None:
            raise not_found(self.store, request.previous_response_id, "previous_response_id")
        return parent

    def _save(
        self, request: ResponsesRequest, response: dict[str, Any], parent: StoredResponse | None
    ) -> None:
        if request.store:
            self.store.save(entry(response, request.input_items, parent))


class ItemResource:
    """``GET``/``DELETE <p>/{response_id}``: one stored response."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        response_id: str,
        backend: str | None = None,
    ) -> None:
        check_backend(backend)
        stored = self.store.get(response_id)
        if stored is None:
            raise not_found(self.store, response_id)
        if query_bool(req, "stream"):
            resp.content_type = MEDIA_SSE
            resp.set_header("Cache-Control", "no-cache")
            resp.data = b"".join(replay(stored.response))
            return
        send_json(resp, stored.response)

    def on_delete(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        response_id: str,
        backend: str | None = None,
    ) -> None:
        check_backend(backend)
        if not self.store.delete(response_id):
            raise not_found(self.store, response_id)
        send_json(resp, {"id": response_id, "object": "response.deleted", "deleted": True})


def _limit(req: falcon.Request) -> int:
    text = query_string(req, "limit")
    if text is None:
        return 20
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_LIMIT:
        raise InvalidRequestError(
            f"limit must be a whole number from 1 to {_MAX_LIMIT}, got {text!r}", param="limit"
        )
    return value


def list_page(
    items: list[dict[str, Any]], *, after: str | None, limit: int, order: str
) -> dict[str, Any]:
    """Return OpenAI's cursor page of ``items`` (``first_id``, ``last_id``, ``has_more``).

    Raises:
        InvalidRequestError: ``after`` names no item of the list.
    """
    ordered = list(reversed(items)) if order == "desc" else list(items)
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise InvalidRequestError(
                f"after {after!r} is not an item of this response", param="after"
            )
        start = ids.index(after) + 1
    page = ordered[start : start + limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": start + limit < len(ordered),
    }


class InputItemsResource:
    """``GET <p>/{response_id}/input_items``: the request's own input items, paged."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def on_get(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        response_id: str,
        backend: str | None = None,
    ) -> None:
        check_backend(backend)
        order = query_string(req, "order") or "desc"
        if order not in ("asc", "desc"):
            raise InvalidRequestError(f"order must be asc or desc, got {order!r}", param="order")
        limit = _limit(req)
        stored = self.store.get(response_id)
        if stored is None:
            raise not_found(self.store, response_id)
        after = query_string(req, "after")
        send_json(resp, list_page(stored.input_items, after=after, limit=limit, order=order))


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register this face's routes under every prefix; one store for the app."""
    store = ResponseStore(ctx.config.responses_max_stored, ctx.config.responses_ttl)
    create = CreateResource(ctx, store)
    item = ItemResource(store)
    input_items = InputItemsResource(store)
    for prefix in PREFIXES:
        app.add_route(prefix, create)
        app.add_route(prefix + "/{response_id}", item)
        app.add_route(prefix + "/{response_id}/input_items", input_items)

"""The HTTP API: resources, middleware, the error renderer and the route table.

Route table (every path also answers under the ``/exp/vDD4.40`` prefix; ``{ref}`` may hold
slashes; ``[/{backend}]`` means both with and without a backend segment, ``llama.cpp`` being
the only backend):

======================================================  ======  =================================
Path                                                    Method  Resource
======================================================  ======  =================================
``/``                                                   GET     health.RootResource
``/ui``, ``/ui/``, ``/ui/{name}``                       GET     ui.UIResource (dashboard)
``/version``                                            any     health.VersionResource
``/openapi.json``                                       GET     openapi.OpenAPIResource
``/engines[/{backend}]/v1/chat/completions``            POST    openai.InferenceResource
``/engines[/{backend}]/v1/completions``                 POST    openai.InferenceResource
``/engines[/{backend}]/v1/embeddings``                  POST    openai.InferenceResource
``/v1/chat/completions``, ``/v1/completions``,          POST    openai.InferenceResource
``/v1/embeddings``
``/engines[/{backend}]/rerank``, ``/rerank``            POST    openai.InferenceResource
``/engines[/{backend}]/score``, ``/score``              POST    openai.InferenceResource (501)
``/engines[/{backend}]/v1/models``, ``/v1/models``      GET     openai.ModelListResource
``/engines[/{backend}]/v1/models/{ref}``,               GET     openai.model_sink
``/v1/models/{ref}``
``/models``                                             GET     models.ModelsResource
``/models/create``                                      POST    models.CreateResource (pull)
``/models/load``                                        POST    models.LoadResource
``/models/purge``                                       DELETE  models.PurgeResource
``/models/{ref}``                                       GET     models.ModelSink (inspect)
``/models/{ref}``                                       DELETE  models.ModelSink (delete)
``/models/{ref}/tag``                                   POST    models.ModelSink
``/models/{ref}/push``                                  POST    models.ModelSink
``/models/{ref}/export``                                GET     models.ModelSink
``/engines/status``                                     GET     engines.StatusResource
``/engines/ps``                                         GET     engines.PsResource
``/engines/df``                                         GET     engines.DfResource
``/engines/unload``                                     POST    engines.UnloadResource
``/engines[/{backend}]/_configure``                     POST    engines.ConfigureResource
``/engines/_configure``                                 GET     engines.ConfigureResource
``/metrics``                                            GET     metrics.MetricsResource
``/logs``                                               GET     logs.LogsResource
``/engines[/{backend}]/v1/rerank``, ``/v1/rerank``      POST    openai.InferenceResource
``/engines[/{backend}]/v1/score``, ``/v1/score``        POST    openai.InferenceResource (501)
``/engines[/{backend}]/v1/images/generations``,         POST    openai.ImagesResource (501)
``/v1/images/generations``
``/engines/requests``                                   GET     recorder.RequestsResource
``/api/version``, ``/api/tags``, ``/api/ps``            GET     ollama (see ollama.py's table)
``/api/show``, ``/api/chat``, ``/api/generate``,        POST    ollama
``/api/embed``, ``/api/embeddings``, ``/api/pull``,
``/api/copy``
``/api/delete``                                         DELETE  ollama
``/anthropic/v1/messages``,                             POST    anthropic.MessagesResource
``/engines[/{backend}]/v1/messages``, ``/v1/messages``
(each also ``/count_tokens``)
``[/engines[/{backend}]][/v1]/responses``               POST    responses (create)
``.../responses/{id}``                                  GET/DEL  responses (retrieve, delete)
``.../responses/{id}/input_items``                      GET     responses
======================================================  ======  =================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import falcon

    from orchestrator.api.shared import ApiContext


def add_routes(app: falcon.App, ctx: ApiContext) -> None:
    """Register every route of the table above on ``app``."""
    # Imported here: every api module loads this package first, and a module such as
    # api.shared must not drag every resource (and their imports) in with it.
    from orchestrator.api import (
        anthropic,
        engines,
        health,
        logs,
        metrics,
        models,
        ollama,
        openai,
        openapi,
        recorder,
        responses,
        ui,
    )

    app.add_route("/", health.RootResource())
    ui.add_routes(app, ctx)
    app.add_route("/version", health.VersionResource())
    app.add_route(openapi.OPENAPI_PATH, openapi.OpenAPIResource())
    openai.add_routes(app, ctx)
    ollama.add_routes(app, ctx)
    anthropic.add_routes(app, ctx)
    responses.add_routes(app, ctx)
    recorder.add_routes(app, ctx)
    models.add_routes(app, ctx)
    engines.add_routes(app, ctx)
    app.add_route("/metrics", metrics.MetricsResource(ctx))
    app.add_route("/logs", logs.LogsResource(ctx))

"""``GET /openapi.json`` is valid OpenAPI and lists exactly what the app answers.

Drift is impossible in both directions:

- Routes: ``falcon.inspect.inspect_app`` gives every route template and the methods its
  resource has responders for (Falcon's own default responders, OPTIONS and the 405 ones, are
  ``internal`` and left out: OPTIONS is answered on every path by the framework and the CORS
  preflight). The document must list exactly those templates with exactly those methods.
- Sinks (the routes whose references hold slashes): Falcon cannot say which methods a sink
  answers, so each documented path that is no route template must reach a sink, every sink
  must be reached by some documented path, and each such path is asked with every method: a
  documented one must not get 405, an undocumented one must get 405 (or DMR's 404
  ``unknown action`` for a POST to a reference).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import falcon.inspect
import openapi_spec_validator
import pytest

from orchestrator.api.middleware import EXPERIMENTAL_PREFIX
from orchestrator.api.openapi import OPENAPI_PATH, load_document
from tests.support.api_app import ApiHarness, build_harness

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_PARAM = re.compile(r"\{([^}/]+)\}")


@pytest.fixture(scope="module")
def harness() -> Iterator[ApiHarness]:
    """One app for the module; nothing here changes the store."""
    harness = build_harness()
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as the daemon serves it."""
    return load_document()


def documented_methods(document: dict[str, Any]) -> dict[str, set[str]]:
    """Return ``{path: {METHOD, ...}}`` of the document."""
    return {
        path: {key.upper() for key in item if key.upper() in HTTP_METHODS}
        for path, item in document["paths"].items()
    }


def app_routes(app: falcon.App) -> dict[str, set[str]]:
    """Return ``{template: {METHOD, ...}}`` of the app's routes (own responders only)."""
    info = falcon.inspect.inspect_app(app)
    return {
        route.path: {method.method for method in route.methods if not method.internal}
        for route in info.routes
    }


def app_sinks(app: falcon.App) -> list[re.Pattern[str]]:
    """Return the prefixes of the app's sinks."""
    return [re.compile(sink.prefix) for sink in falcon.inspect.inspect_app(app).sinks]


def _resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    ref = item.get("$ref")
    if ref is None:
        return item
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def sample_path(document: dict[str, Any], path: str) -> str:
    """Return ``path`` with each parameter replaced by its documented example."""
    examples: dict[str, str] = {}
    item = document["paths"][path]
    for operation in [item, *(item[key] for key in item if key.upper() in HTTP_METHODS)]:
        for parameter in operation.get("parameters", []):
            parameter = _resolve(document, parameter)
            if parameter["in"] == "path":
                schema = parameter.get("schema", {})
                value = parameter.get("example") or (schema.get("enum") or ["x"])[0]
                examples[parameter["name"]] = str(value)
    return _PARAM.sub(lambda match: examples[match.group(1)], path)


def template_regex(template: str) -> re.Pattern[str]:
    """Return a regex matching the concrete paths of a route template."""
    parts = _PARAM.split(template)
    # Even indexes are literal text, odd ones parameter names (one path segment each).
    return re.compile(
        "".join(re.escape(part) if index % 2 == 0 else "[^/]+" for index, part in enumerate(parts))
        + r"\Z"
    )


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    """openapi-spec-validator accepts it (3.1: schemas, refs, unique operationIds)."""
    openapi_spec_validator.validate(document)
    assert document["openapi"].startswith("3.1")


def test_served_document_is_the_file(harness: ApiHarness, document: dict[str, Any]) -> None:
    """GET /openapi.json serves the document, also under the Docker Desktop prefix."""
    result = harness.client.simulate_get(OPENAPI_PATH)
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert json.loads(result.text) == document
    prefixed = harness.client.simulate_get(EXPERIMENTAL_PREFIX + OPENAPI_PATH)
    assert json.loads(prefixed.text) == document


def test_prefix_is_a_server(document: dict[str, Any]) -> None:
    """The /exp/vDD4.40 alias of every path is documented as a second server."""
    assert [server["url"] for server in document["servers"]] == ["/", EXPERIMENTAL_PREFIX]


def test_every_route_is_documented_with_its_methods(
    harness: ApiHarness, document: dict[str, Any]
) -> None:
    """Route templates and their methods are exactly the document's (no more, no less)."""
    routes = app_routes(harness.app)
    documented = documented_methods(document)
    missing = sorted(set(routes) - set(documented))
    assert not missing, f"routes missing from openapi.yaml: {missing}"
    wrong = {
        path: {"app": sorted(methods), "document": sorted(documented[path])}
        for path, methods in routes.items()
        if documented[path] != methods
    }
    assert not wrong, f"methods differ between the app and openapi.yaml: {wrong}"


def test_every_other_documented_path_reaches_a_sink(
    harness: ApiHarness, document: dict[str, Any]
) -> None:
    """A documented path that is no route is served by a sink; every sink is documented."""
    templates = app_routes(harness.app)
    routes = [template_regex(template) for template in templates]
    sinks = app_sinks(harness.app)
    reached: set[str] = set()
    for path in documented_methods(document):
        if path in templates:
            continue
        concrete = sample_path(document, path)
        assert not any(route.match(concrete) for route in routes), (
            f"{path} ({concrete}) is served by a route template the document does not list"
        )
        matching = [sink.pattern for sink in sinks if sink.match(concrete)]
        assert matching, f"{path} ({concrete}) matches no route and no sink: it does not exist"
        reached.update(matching)
    assert reached == {sink.pattern for sink in sinks}, "a sink has no documented path"


def _refused(result: falcon.testing.Result) -> bool:
    """Return whether the app refused the method (405, or DMR's 404 for an unknown action)."""
    if result.status_code == 405:
        return True
    if result.status_code != 404 or not result.text:
        return False
    return "unknown action" in json.loads(result.text)["error"]["message"]


def test_sink_paths_answer_exactly_the_documented_methods(
    harness: ApiHarness, document: dict[str, Any]
) -> None:
    """Each sink path answers its documented methods and refuses the others.

    The examples name models this store does not hold, so nothing is changed: every
    documented method answers 4xx without 405 (no registry is contacted: a push resolves the
    model locally first).
    """
    routes = app_routes(harness.app)
    wrong = []
    for path, methods in documented_methods(document).items():
        if path in routes:
            continue
        concrete = sample_path(document, path)
        for method in HTTP_METHODS:
            result = harness.client.simulate_request(method, concrete)
            if (method in methods) == _refused(result):
                wrong.append(f"{method} {concrete}: {result.status_code} {result.text[:120]}")
    assert not wrong, "sink answers differ from openapi.yaml:\n" + "\n".join(wrong)


def test_api_key_answers_are_documented(document: dict[str, Any]) -> None:
    """With DMR_API_KEY set, exactly the operations that document 401 refuse a keyless request.

    The open ones (``/``, ``/version``, the dashboard) say ``security: []`` instead.
    """
    harness = build_harness(api_key="fuzz-key")
    wrong = []
    try:
        for path, methods in documented_methods(document).items():
            concrete = sample_path(document, path)
            for method in sorted(methods):
                operation = document["paths"][path][method.lower()]
                open_route = operation.get("security") == []
                documented_401 = "401" in operation["responses"]
                if open_route == documented_401:
                    wrong.append(f"{method} {path}: security and 401 disagree in openapi.yaml")
                status = harness.client.simulate_request(method, concrete).status_code
                if (status == 401) != documented_401:
                    wrong.append(f"{method} {concrete}: {status} without the key")
    finally:
        harness.close()
    assert not wrong, "\n".join(wrong)

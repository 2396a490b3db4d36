"""``GET /openapi.json``: the OpenAPI 3.1 document of the whole API.

The document is data: ``openapi.yaml`` beside this module. YAML rather than a Python dict
because it carries comments and anchors, so an operation served under three alias paths is
written once and still listed under each concrete path, and a schema reads as a schema. It is
read once when the routes are built, stripped of its ``x-fragments`` (the anchors' home), given
the package version and served as compact JSON.

``tests/component/test_openapi.py`` checks that it is valid OpenAPI and lists exactly the routes
and methods the app answers; ``tests/functional/test_api_fuzz.py`` fuzzes a real daemon from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon
import yaml

from orchestrator import __version__

DOCUMENT_PATH = Path(__file__).with_name("openapi.yaml")
OPENAPI_PATH = "/openapi.json"


def load_document(path: Path = DOCUMENT_PATH) -> dict[str, Any]:
    """Return the OpenAPI document as served: without ``x-fragments``, with our version."""
    with open(path, encoding="utf-8") as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    document.pop("x-fragments", None)
    document["info"]["version"] = __version__
    return document


class OpenAPIResource:
    """``GET /openapi.json``.

    Args:
        document: The document to serve (default: :func:`load_document`).
    """

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        # Serialized once: the document does not change under a running daemon.
        self._body = json.dumps(
            document if document is not None else load_document(), separators=(",", ":")
        ).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body

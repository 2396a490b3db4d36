"""``GET /openapi.json``: the OpenAPI 3.1 document of the whole API.

The document is data: ``openapi.yaml`` beside this module, plus one part per API face
(``openapi-ollama.yaml``...). YAML rather than a Python dict
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


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        document: dict[str, Any] = yaml.safe_load(handle)
    document.pop("x-fragments", None)
    return document


def _merge_part(document: dict[str, Any], part: dict[str, Any], name: str) -> None:
    """Add a part's paths, tags and components to ``document``; a name given twice is a bug."""
    for path, item in (part.get("paths") or {}).items():
        if path in document["paths"]:
            raise ValueError(f"{name}: path {path} is already in the OpenAPI document")
        document["paths"][path] = item
    document.setdefault("tags", []).extend(part.get("tags") or [])
    for section, entries in (part.get("components") or {}).items():
        target = document.setdefault("components", {}).setdefault(section, {})
        for key, value in entries.items():
            if key in target:
                raise ValueError(f"{name}: components/{section}/{key} is already defined")
            target[key] = value


def load_document(path: Path = DOCUMENT_PATH) -> dict[str, Any]:
    """Return the OpenAPI document as served: without ``x-fragments``, with our version.

    Each API face other than OpenAI keeps its paths in a part beside the main file
    (``openapi-<face>.yaml``: ``paths``, ``tags`` and ``components`` of its own, which may
    ``$ref`` the main file's components); the parts are merged in name order.
    """
    document = _read_yaml(path)
    for part_path in sorted(path.parent.glob(f"{path.stem}-*{path.suffix}")):
        _merge_part(document, _read_yaml(part_path), part_path.name)
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

"""``POST /models/{ref}/repackage``: a variant of a local model, weights shared (spec 1.3).

DMR's body is ``{"target": "<ref>", "context_size": <n>}``; this daemon also takes a new chat
template and licenses as text, which DMR's CLI can only add by exporting the whole model and
loading it back (``docker model package --from`` sends them here instead)::

    {"target": "myorg/smollm2:8k", "context_size": 8192,
     "chat_template": "{% for m in messages %}...",
     "licenses": [{"name": "LICENSE", "content": "MIT ..."}]}

Success is DMR's ``201 {"message", "source", "target"}`` plus ``id``, the variant's model ID.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.body import read_json_object, require_string
from orchestrator.errors import InvalidReferenceError, InvalidRequestError
from orchestrator.store.reference import parse_model_id, parse_reference
from orchestrator.store.repackage import (
    TEMPLATE_FILE_NAME,
    Changes,
    TextFile,
    check_context_size,
    check_text,
    repackage,
)

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext

log = logging.getLogger(__name__)

EXAMPLE = '{"target": "myorg/smollm2:8k", "context_size": 8192}'


def _target(body: dict[str, Any]) -> str:
    target = require_string(body, "target", what="name the new model, e.g. 'myorg/smollm2:8k'")
    try:
        ref = parse_reference(target)
    except InvalidReferenceError as ex:
        raise InvalidReferenceError(ex.message, param="target", details=ex.details) from ex
    if ref.digest is not None or parse_model_id(target) is not None:
        raise InvalidReferenceError(
            f"target {target!r} must be a name with an optional tag, not a digest or an ID",
            param="target",
        )
    return target


def _licenses(value: object) -> tuple[TextFile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequestError(
            'licenses must be a list such as [{"name": "LICENSE", "content": "..."}]',
            param="licenses",
        )
    files = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequestError(
                'each license must be an object such as {"name": "LICENSE", "content": "..."}',
                param="licenses",
            )
        files.append(check_text(item["name"], item.get("content"), param="licenses"))
    return tuple(files)


def parse_changes(body: dict[str, Any]) -> Changes:
    """Return the :class:`Changes` a repackage body asks for.

    Raises:
        InvalidRequestError: A value has the wrong type or is out of range.
    """
    size = body.get("context_size")
    template = body.get("chat_template")
    return Changes(
        context_size=None if size is None else check_context_size(size),
        chat_template=(
            None
            if template is None
            else check_text(TEMPLATE_FILE_NAME, template, param="chat_template")
        ),
        licenses=_licenses(body.get("licenses")),
    )


def repackage_model(ctx: ApiContext, req: falcon.Request, resp: falcon.Response, ref: str) -> None:
    """Answer ``POST /models/{ref}/repackage`` (201, or the JSON error of the failure)."""
    body = read_json_object(req, example=EXAMPLE)
    target = _target(body)
    changes = parse_changes(body)
    source = ctx.store.resolve(ref)
    record = repackage(ctx.store, source, target, changes)
    log.info(
        "model repackaged source=%s target=%s id=%s context_size=%s template=%s licenses=%d",
        source.id, target, record.id, changes.context_size,
        changes.chat_template is not None, len(changes.licenses),
    )  # fmt: skip
    resp.status = 201
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(
        {
            "message": f"Model repackaged successfully as {json.dumps(target)}",
            "source": ref,
            "target": target,
            "id": record.id,
        }
    ).encode()

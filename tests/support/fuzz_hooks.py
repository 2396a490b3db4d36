"""Schemathesis hooks for ``tests/functional/test_api_fuzz.py`` (``SCHEMATHESIS_HOOKS``).

``application/x-tar`` bodies (``POST /models/load``) are sent as raw bytes, as
``application/octet-stream`` ones are.

One check, ``not_a_server_error_except_named``: schemathesis's ``not_a_server_error`` with two
exceptions, each limited to the operations and the error ``code`` that explain it:

- ``registry_error`` (502) from a pull, a push or a remote inspect: the fuzz daemon's registry
  traffic goes to a loopback port that refuses, so "registry unreachable" is the right answer
  (a HEAD has no body to read the code from; its 502 is accepted on those operations alone);
- ``not_supported`` (501) from ``/score`` and image generation: features llama.cpp does not
  have.

Every other 5xx fails the run.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error

ALLOWED_SERVER_ERRORS: tuple[tuple[re.Pattern[str], int, str], ...] = (
    (re.compile(r"(pullModel|pushModel\d|inspectModel\d|headModel\d)\Z"), 502, "registry_error"),
    (re.compile(r"score\w*\Z"), 501, "not_supported"),
    # /v1/images/generations: DMR's route; llama.cpp cannot generate images (api/openai.py).
    (re.compile(r"createImage\w*\Z"), 501, "not_supported"),
)

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


def error_code(response: Any) -> str | None:
    """Return ``error.code`` of a JSON error body, ``None`` when there is none."""
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


@schemathesis.check
def not_a_server_error_except_named(ctx: Any, response: Any, case: Any) -> bool | None:
    """Fail on a 5xx unless it is one of :data:`ALLOWED_SERVER_ERRORS`."""
    operation_id = case.operation.schema.get_operation_id(case.operation) or ""
    for operations, status, code in ALLOWED_SERVER_ERRORS:
        if response.status_code != status or not operations.match(operation_id):
            continue
        if error_code(response) == code or (case.method.upper() == "HEAD" and not response.content):
            return None
    return not_a_server_error(ctx, response, case)


# Ollama face: POST /api/pull is a pull like pullModel's, so the fuzz daemon's refusing
# registry makes it a 502 too; its error body is Ollama's {"error": "<message>"}, which has
# no code (error_code() gives None), so the operation and the status alone name it.
ALLOWED_SERVER_ERRORS += ((re.compile(r"pullModelOllama\Z"), 502, None),)  # type: ignore[assignment]

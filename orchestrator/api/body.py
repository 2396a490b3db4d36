"""Reading request bodies and query parameters, with our errors instead of Falcon's.

Every route reads its body once through :func:`read_body` (size-capped before and while
reading) and parses JSON with :func:`read_json_object`, so a malformed request is always a 400
with ``param`` set where one field is at fault, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

import falcon

from orchestrator.errors import ClientTimeoutError, InvalidRequestError, RequestTooLargeError

MAX_BODY_BYTES = 10 * 1024 * 1024
_TRUE = frozenset({"", "1", "t", "true", "yes", "y", "on"})
_FALSE = frozenset({"0", "f", "false", "no", "n", "off"})


def read_body(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Return the whole request body, at most ``limit`` bytes.

    Raises:
        RequestTooLargeError: Content-Length or the bytes read exceed ``limit``.
        ClientTimeoutError: The client sent nothing for the client timeout mid-body.
        InvalidRequestError: The client ended the body early or sent broken chunking.
    """
    length = req.content_length
    if length is not None and length > limit:
        raise RequestTooLargeError(
            f"the request body is {length} bytes, more than the {limit} allowed; send less"
        )
    try:
        # Without Content-Length (chunked upload) gunicorn's input reads to the end of the
        # body; Falcon's bounded_stream would read nothing.
        stream = req.bounded_stream if length is not None else req.stream
        data = stream.read(limit + 1)
    except (TimeoutError, BlockingIOError) as ex:
        # BlockingIOError: the socket's kernel timeout (SO_RCVTIMEO) expired.
        raise ClientTimeoutError(
            "the client sent no part of the request body for the server's client timeout "
            "(DMR_CLIENT_TIMEOUT); send the body without pausing"
        ) from ex
    except (OSError, ValueError) as ex:
        raise InvalidRequestError(f"the request body could not be read: {ex}") from ex
    if len(data) > limit:
        raise RequestTooLargeError(
            f"the request body is more than the {limit} bytes allowed; send less"
        )
    return data


def parse_json(data: bytes) -> Any:
    """Return the JSON value in ``data``.

    Raises:
        InvalidRequestError: The bytes are not UTF-8 JSON.
    """
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise InvalidRequestError(f"the request body is not valid JSON: {ex}") from ex
    except ValueError as ex:
        # Python refuses to convert integers of more than 4300 digits (CVE-2020-10735).
        raise InvalidRequestError(
            "a number in the request body is too long (more than 4300 digits)"
        ) from ex
    except RecursionError as ex:
        raise InvalidRequestError("the request body nests JSON too deeply") from ex


def read_json_object(
    req: falcon.Request, *, example: str, allow_empty: bool = False
) -> dict[str, Any]:
    """Read the body as one JSON object.

    Args:
        req: The request.
        example: A sample body for the error message.
        allow_empty: Whether an empty body means ``{}``.

    Raises:
        InvalidRequestError: Not JSON, or not an object.
        RequestTooLargeError: Over the size cap.
    """
    data = read_body(req)
    if not data.strip() and allow_empty:
        return {}
    value = parse_json(data)
    if not isinstance(value, dict):
        raise InvalidRequestError(f"the request body must be a JSON object such as {example}")
    return value


def require_string(body: dict[str, Any], key: str, *, what: str) -> str:
    """Return ``body[key]`` as a non-empty string.

    Raises:
        InvalidRequestError: Missing, empty or not a string (``param`` = ``key``).
    """
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if value is None else f"{value!r}"
        raise InvalidRequestError(f"{key} is required: {what} (got {shown})", param=key)
    return value.strip()


def optional_string(body: dict[str, Any], key: str) -> str | None:
    """Return ``body[key]`` when it is a string, ``None`` when absent or null.

    Raises:
        InvalidRequestError: Present but not a string.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"{key} must be a string, got {value!r}", param=key)
    return value


def query_bool(req: falcon.Request, name: str, *, default: bool = False) -> bool:
    """Return a boolean query parameter (``?x`` alone is true, as Go's handlers read it).

    Raises:
        InvalidRequestError: The value is not a boolean word.
    """
    values = req.params.get(name)
    if values is None:
        return default
    value = values[-1] if isinstance(values, list) else values
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidRequestError(
        f"query parameter {name!r} must be true or false, got {value!r}", param=name
    )


def query_string(req: falcon.Request, name: str) -> str | None:
    """Return the last value of a query parameter, or ``None``."""
    values = req.params.get(name)
    if values is None:
        return None
    return str(values[-1] if isinstance(values, list) else values)

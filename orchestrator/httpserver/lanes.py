"""Which thread pool serves a request: the control lane, kept free for management, or the work
lane, where inference and other long requests run.

Why two lanes: a stream holds its thread until the last token, so 64 streams used to take every
thread and ``GET /models``, ``/engines/ps``, unload and health went unanswered until one ended
(issue 12). The control lane has threads of its own that only short requests can take, so
management always answers, whatever inference is doing. The control lane is an allow-list: a route
nobody listed (a new API face, say) is served in the work lane, where it works and simply has no
reserved capacity; nothing long can slip into the control lane by being forgotten.
"""

from __future__ import annotations

import enum
import re

from orchestrator.api.middleware import clean_path


class Lane(enum.Enum):
    """A thread pool of the worker."""

    CONTROL = "control"
    WORK = "work"


# Short reads: status, lists, inspection, the dashboard's files, metrics, the API document,
# Ollama's version/tags/ps, and a stored Responses API response (a dict lookup).
_CONTROL_READS = re.compile(
    r"^/(?:|version|metrics|openapi\.json|models|ui(?:/.*)?"
    r"|engines/(?:ps|df|status)"
    r"|(?:engines/(?:[^/]+/)?)?v1/models(?:/.*)?"
    r"|api/(?:version|tags|ps)"
    r"|(?:engines/(?:[^/]+/)?)?(?:v1/)?responses/[^/]+(?:/input_items)?)$"
)
# Short changes: unload, configure, tag, purge; Ollama's show and copy (a tag). Pulls, pushes,
# loads and exports are long.
_CONTROL_WRITES = re.compile(
    r"^/(?:engines/unload|engines/(?:[^/]+/)?_configure|models/purge|models/.+/tag"
    r"|api/(?:show|copy))$"
)
# Short deletes: a model (Ollama's too: unload of idle runners, then delete), a stored response.
_CONTROL_DELETES = re.compile(
    r"^/(?:models/.+|api/delete|(?:engines/(?:[^/]+/)?)?(?:v1/)?responses/[^/]+)$"
)
_TRUE_WORDS = frozenset({"1", "t", "true", "yes", "on"})


def lane_for(method: str, path: str, query: dict[str, str]) -> Lane:
    """Return the lane that serves ``method path?query``.

    Args:
        method: Upper-case request method ("" when the request line was unreadable: gunicorn's
            400 is short, so the control lane answers it).
        path: Request path as sent (the ``/exp/vDD4.40`` prefix and ``//`` are cleaned here).
        query: Query parameters.
    """
    if method in ("", "OPTIONS"):
        return Lane.CONTROL
    path = clean_path(path)
    if method in ("GET", "HEAD"):
        if path == "/logs":
            follow = query.get("follow", "").lower() in _TRUE_WORDS
            return Lane.WORK if follow else Lane.CONTROL
        if _CONTROL_READS.match(path):
            return Lane.CONTROL
        # GET /models/{ref}: inspect (short); /models/{ref}/export streams a tar, and
        # ?remote=true asks a registry, whose answer may take its deadline (both work).
        remote = query.get("remote", "").lower() in _TRUE_WORDS
        if path.startswith("/models/") and not path.endswith("/export") and not remote:
            return Lane.CONTROL
        return Lane.WORK
    if method == "DELETE" and _CONTROL_DELETES.match(path):
        return Lane.CONTROL
    if method == "POST" and _CONTROL_WRITES.match(path):
        return Lane.CONTROL
    return Lane.WORK

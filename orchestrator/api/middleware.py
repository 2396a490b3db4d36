"""Request middleware: request id, path clean-up, access log, CORS.

Order matters and is fixed in :func:`orchestrator.app.create_app`:

1. :class:`RequestContextMiddleware` assigns the request id, strips the Docker Desktop prefix
   ``/exp/vDD4.40``, cleans ``//`` the way Go's ``path.Clean`` does (both before routing, which
   Falcon allows by rewriting ``req.path`` in ``process_request``) and writes one access-log line
   per request when the response leaves.
2. :class:`CORSMiddleware` applies the allow-list of :class:`OriginPolicy` to the routes DMR
   protects (``/models``, ``/engines``, ``/v1``, ``/rerank``, ``/score``).

CORS follows DMR's *intended* semantics (spec 1.2, a deliberate divergence from its code):
localhost, 127.0.0.1 and 0.0.0.0 origins on any port are always allowed, ``*`` allows every
origin, and an entry ``http://host:*`` allows that host on any port.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

import falcon

from orchestrator.api.faces import face_of_path
from orchestrator.errors import OriginNotAllowedError

log = logging.getLogger("orchestrator.access")

EXPERIMENTAL_PREFIX = "/exp/vDD4.40"
_REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_DEFAULT_ORIGIN_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
# Path prefixes that get CORS treatment: DMR's sub-handlers plus every API face a browser app
# may call (Ollama's /api, Anthropic's /anthropic, the bare /responses alias).
_CORS_PREFIXES = (
    "/models",
    "/engines",
    "/v1",
    "/rerank",
    "/score",
    "/api",
    "/anthropic",
    "/responses",
)
_ALLOW_METHODS = "GET, POST, DELETE"


def clean_path(path: str) -> str:
    """Return ``path`` without the ``/exp/vDD4.40`` prefix and, if it holds ``//``, cleaned.

    Cleaning happens only when the path contains ``//``, as DMR does (``path.Clean``): runs of
    slashes collapse, ``.`` and ``..`` resolve and a trailing slash goes.
    """
    if path == EXPERIMENTAL_PREFIX or path.startswith(EXPERIMENTAL_PREFIX + "/"):
        path = path[len(EXPERIMENTAL_PREFIX) :] or "/"
    if "//" in path:
        # posixpath keeps a leading "//" (POSIX allows it a meaning); Go's Clean does not.
        path = posixpath.normpath(re.sub(r"/{2,}", "/", path))
    return path


class OriginPolicy:
    """Decide whether a browser ``Origin`` may call the API.

    Args:
        extra_origins: Entries of ``DMR_ORIGINS``: exact origins (``https://app.example``),
            port wildcards (``http://host:*``) or ``*`` for every origin.
    """

    def __init__(self, extra_origins: Iterable[str] = ()) -> None:
        self.allow_all = False
        self._exact: set[str] = set()
        self._any_port: set[tuple[str, str]] = set()
        for host in _DEFAULT_ORIGIN_HOSTS:
            for scheme in ("http", "https"):
                self._any_port.add((scheme, host))
        for entry in extra_origins:
            entry = entry.strip().rstrip("/")
            if entry == "*":
                self.allow_all = True
            elif entry.endswith(":*"):
                parts = urlsplit(entry[:-2])
                if parts.scheme and parts.hostname:
                    self._any_port.add((parts.scheme.lower(), parts.hostname.lower()))
            elif entry:
                self._exact.add(entry.lower())

    def is_allowed(self, origin: str) -> bool:
        """Return whether ``origin`` (the header's value) is allowed."""
        if self.allow_all:
            return True
        origin = origin.strip().lower()
        if origin in self._exact:
            return True
        try:
            parts = urlsplit(origin)
            # Reading the port validates it: "http://localhost:abc" raises here.
            parts.port  # noqa: B018
        except ValueError:
            return False
        if parts.path or parts.query or parts.fragment or parts.username or not parts.hostname:
            return False
        if parts.scheme not in ("http", "https"):
            return False
        # An any-port entry also covers the scheme's default port (no port in the Origin).
        return (parts.scheme, parts.hostname) in self._any_port


def is_cors_path(path: str) -> bool:
    """Return whether DMR applies CORS to ``path`` (not to ``/``, ``/version``, logs, metrics)."""
    for prefix in _CORS_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False


class RequestContextMiddleware:
    """Assign a request id, clean the path before routing, log one line per request."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Set ``req.context.request_id``/``started`` and rewrite ``req.path``."""
        req.context.started = time.monotonic()
        offered = req.get_header(_REQUEST_ID_HEADER)
        if offered and _VALID_REQUEST_ID.match(offered):
            req.context.request_id = offered
        else:
            req.context.request_id = uuid.uuid4().hex[:16]
        resp.set_header(_REQUEST_ID_HEADER, req.context.request_id)
        req.path = clean_path(req.path)

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Write the access-log line (for streams: when the headers leave)."""
        if not log.isEnabledFor(logging.INFO):
            return
        started = getattr(req.context, "started", None)
        elapsed_ms = (time.monotonic() - started) * 1000 if started is not None else 0.0
        log.info(
            '%s "%s %s" %s %.1fms rid=%s face=%s%s',
            req.remote_addr or "-",
            req.method,
            req.path,
            str(resp.status).split(" ", 1)[0],
            elapsed_ms,
            getattr(req.context, "request_id", "-"),
            face_of_path(req.path).value,
            " stream" if resp.stream is not None else "",
        )


class CORSMiddleware:
    """Apply the CORS allow-list to the routes DMR protects.

    Args:
        policy: Which origins are allowed.
    """

    def __init__(self, policy: OriginPolicy) -> None:
        self.policy = policy

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Refuse a disallowed Origin (403); answer an allowed preflight with 204."""
        origin = req.get_header("Origin")
        if origin is None or not is_cors_path(req.path):
            return
        if not self.policy.is_allowed(origin):
            raise OriginNotAllowedError(
                f"origin {origin!r} is not allowed; add it to DMR_ORIGINS "
                "(comma list, 'http://host:*' for any port, '*' for all)"
            )
        req.context.cors_origin = origin
        if req.method == "OPTIONS":
            resp.status = 204
            resp.set_header("Access-Control-Allow-Credentials", "true")
            resp.set_header("Access-Control-Allow-Methods", _ALLOW_METHODS)
            # "*" does not cover Authorization (Fetch standard), which DMR_API_KEY needs.
            resp.set_header("Access-Control-Allow-Headers", "*, Authorization")
            resp.complete = True

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Echo the allowed origin on every answer, errors included."""
        origin = getattr(req.context, "cors_origin", None)
        if origin is not None:
            resp.set_header("Access-Control-Allow-Origin", origin)
            resp.append_header("Vary", "Origin")

"""Optional API key (``DMR_API_KEY``): off by default, as in DMR.

When set, every request must carry the key, as ``Authorization: Bearer <key>`` (the OpenAI SDKs,
curl ``-H``, our CLI) or ``x-api-key: <key>`` (the Anthropic SDKs). Open without it: ``/`` (the
health answer probes and Compose look for), ``/version``, the dashboard's static files (the page
asks for the key and sends it on its API calls) and CORS preflights, which browsers send without
credentials by design. The comparison is constant-time (:func:`hmac.compare_digest`), so the
answer's timing says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
import re

import falcon

from orchestrator.api.middleware import clean_path
from orchestrator.errors import AuthenticationError

_OPEN_PATHS = re.compile(r"^/(?:|version|ui(?:/.*)?)$")


def presented_key(req: falcon.Request) -> str | None:
    """Return the key the request carries (Bearer token or ``x-api-key``), if any."""
    authorization = req.get_header("Authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return req.get_header("X-Api-Key")


class ApiKeyMiddleware:
    """Refuse requests without the configured key (401 ``invalid_api_key``).

    Args:
        api_key: The key; empty disables the check.
    """

    def __init__(self, api_key: str) -> None:
        self._key = api_key.encode()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Raise :class:`AuthenticationError` unless the request may pass."""
        if not self._key or req.method == "OPTIONS" or _OPEN_PATHS.match(clean_path(req.path)):
            return
        presented = presented_key(req)
        # compare_digest on bytes of different lengths still takes time independent of content.
        if presented is not None and hmac.compare_digest(presented.encode(), self._key):
            return
        resp.set_header("WWW-Authenticate", 'Bearer realm="model-runner"')
        raise AuthenticationError(
            "this daemon needs its API key: send 'Authorization: Bearer <key>' or "
            "'x-api-key: <key>' (the value of DMR_API_KEY where the daemon runs)"
            if presented is None
            else "the API key is wrong; send the value of DMR_API_KEY where the daemon runs",
        )

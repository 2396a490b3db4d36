"""The ``Host`` allow-list: the API answers only to names that mean this machine.

A web page can make a browser send requests to the daemon through DNS rebinding: its own name
first resolves to the page's server, then to 127.0.0.1, and the browser, seeing the same name,
lets the page read the answers (logs with prompts, model lists, registry metadata). Such a
request carries the page's name in ``Host``. So a request is served only when ``Host`` is an IP
address, ``localhost`` (or a ``*.localhost`` name, which browsers resolve to loopback
themselves), ``model-runner.docker.internal``/``host.docker.internal`` (how containers reach
the host), or a name listed in ``DMR_ALLOWED_HOSTS``; otherwise it gets 403
``host_not_allowed``. A request without ``Host`` (HTTP/1.0, some Unix-socket clients) does not
come from a browser and is served.
"""

from __future__ import annotations

import functools
import ipaddress

import falcon

from orchestrator.errors import HostNotAllowedError

ALWAYS_ALLOWED: frozenset[str] = frozenset(
    {"localhost", "model-runner.docker.internal", "host.docker.internal"}
)


def host_name(header: str) -> str:
    """Return the name in a ``Host`` header: lower case, without port, brackets or final dot."""
    text = header.strip().lower()
    if text.startswith("["):  # [::1]:12434
        return text[1:].partition("]")[0]
    if text.count(":") == 1:  # name:port or 1.2.3.4:port (a bare IPv6 address has more)
        text = text.partition(":")[0]
    return text.rstrip(".")


# PERF: clients send the same Host on every request; parsing it as an address each time was
# ~1 % of a small request's CPU (issue 18). Bounded: the header is the client's to choose.
@functools.lru_cache(maxsize=256)
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` names the API answers to.

    Args:
        extra: ``DMR_ALLOWED_HOSTS``: names, ``*.domain`` for its subdomains, ``*`` for any.
    """

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        names = {host_name(item) for item in extra if item.strip()}
        self.allow_all = "*" in names
        self._suffixes = tuple(name[1:] for name in names if name.startswith("*."))
        self._names = ALWAYS_ALLOWED | {name for name in names if not name.startswith("*")}

    def is_allowed(self, header: str | None) -> bool:
        """Return whether a request with this ``Host`` header may be served."""
        if self.allow_all or not header:
            return True
        name = host_name(header)
        return (
            name in self._names
            or name.endswith(".localhost")
            or name.endswith(self._suffixes)
            or _is_ip(name)
        )


class HostCheckMiddleware:
    """Refuse requests whose ``Host`` the policy does not allow (403, the one error shape)."""

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Raise :class:`HostNotAllowedError` for a name this daemon does not answer to."""
        header = req.get_header("Host")
        if not self.policy.is_allowed(header):
            shown = (header or "")[:100]
            raise HostNotAllowedError(
                f"this daemon does not answer to the host name {shown!r}; use localhost or an "
                f"IP address, or add the name to DMR_ALLOWED_HOSTS"
            )

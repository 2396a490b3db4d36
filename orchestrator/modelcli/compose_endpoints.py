"""The two OpenAI base URLs ``docker model status --json`` reports, for Compose.

Compose's ``models:`` support runs ``docker-model status --json`` and hands the ``endpoint``
field to every service that uses a model (as ``<MODEL>_URL``); ``endpointHost`` is the same API
as seen from the host. The daemon listens on loopback (and on the ``docker0`` address by
default), so a URL naming ``localhost`` is useless inside a container:

* ``endpointHost``: the URL the CLI itself reaches the daemon at, plus ``/v1/``;
* ``endpoint``: for a daemon on this host (a loopback URL), the same port on the ``docker0``
  address when that bridge exists (``http://172.17.0.1:12434/v1/``), else on
  ``model-runner.docker.internal``, the name a service maps with
  ``extra_hosts: ["model-runner.docker.internal:host-gateway"]``; for a daemon elsewhere
  (``MODEL_RUNNER_HOST=http://gpu-box:12434``) the host URL, which containers reach as well.

The path is ``/engines/v1/``, the one DMR's documentation gives containers and Compose's
``provider`` services get (``compose up``); DMR's ``status`` has reported the ``/v1/`` alias since
its 2025-12 releases, which the daemon serves too, so either works for a client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from orchestrator.bridge import CONTAINER_HOST_NAME, bridge_ipv4

OPENAI_PATH = "/engines/v1/"


@dataclass(frozen=True)
class StatusEndpoints:
    """What ``status --json`` reports.

    Attributes:
        endpoint: OpenAI base URL for containers.
        endpoint_host: OpenAI base URL for processes on the host.
    """

    endpoint: str
    endpoint_host: str


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` (a name or an address, IPv6 without brackets) is this machine."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _join(scheme: str, host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}{f':{port}' if port else ''}{OPENAI_PATH}"


def status_endpoints(
    base_url: str, *, bridge: Callable[[], str | None] = bridge_ipv4
) -> StatusEndpoints:
    """Return the container and host URLs for a daemon the CLI reaches at ``base_url``.

    Args:
        base_url: ``http://host:port``, ``https://...`` or ``unix:///path.sock``.
        bridge: Returns the ``docker0`` IPv4 address or ``None`` (a seam for tests).
    """
    if base_url.startswith("unix://"):
        # NOTE(compose): no URL reaches a Unix socket from a container; report what we use.
        return StatusEndpoints(base_url, base_url)
    parts = urlsplit(base_url)
    host = parts.hostname or "localhost"
    scheme = parts.scheme or "http"
    host_url = _join(scheme, host, parts.port)
    if not is_loopback_host(host):
        return StatusEndpoints(host_url, host_url)
    container_host = bridge() or CONTAINER_HOST_NAME
    return StatusEndpoints(_join(scheme, container_host, parts.port), host_url)

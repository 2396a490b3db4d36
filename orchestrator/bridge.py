"""The host's Docker bridge: where containers on the default network reach the host.

Two callers need the same answer: the daemon, which listens on the bridge address by default so
that containers can reach it, and ``docker model status --json``, which tells Compose the URL to
hand those containers. Docker names the default bridge ``docker0`` and gives it the gateway
address of ``172.17.0.0/16`` (``172.17.0.1``) unless the daemon was configured otherwise, so the
address is read from the interface, never assumed.
"""

from __future__ import annotations

import logging
import socket

import psutil

log = logging.getLogger(__name__)

BRIDGE_INTERFACE = "docker0"
CONTAINER_HOST_NAME = "model-runner.docker.internal"
"""The name containers use without a ``docker0`` bridge, mapped by Compose's
``extra_hosts: ["model-runner.docker.internal:host-gateway"]`` (and by Docker Desktop)."""


def bridge_ipv4(interface: str = BRIDGE_INTERFACE) -> str | None:
    """Return the first IPv4 address of ``interface``, or ``None`` when it has none.

    An interface that does not exist, or a host whose interfaces cannot be listed, has none.
    """
    try:
        addresses = psutil.net_if_addrs().get(interface, [])
    except OSError as ex:
        log.warning("cannot list network interfaces error=%s", ex)
        return None
    for address in addresses:
        if address.family == socket.AF_INET:
            return str(address.address)
    return None

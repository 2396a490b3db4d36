"""What every command receives: the streams, the environment and a lazily built client."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from orchestrator.modelcli.daemon_client import DaemonClient
from orchestrator.modelcli.endpoint import SOURCE_DEFAULT, Endpoint, resolve_endpoint


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class CliContext:
    """Streams, environment and daemon client of one CLI invocation.

    Tests build one with ``io.StringIO`` streams and a fixed ``clock``; ``main()`` builds one
    from ``sys`` and ``os.environ``.

    Attributes:
        prog: How the user invoked us (``docker model`` or ``docker-model``), for messages.
        stdout: Command output (tables, JSON, answers).
        stderr: Progress, prompts for attention and errors.
        stdin: Prompt input (``run``, ``purge`` confirmation).
        environ: Environment variables (``MODEL_RUNNER_HOST``, ``HF_TOKEN``, ``DOCKER_CONFIG``).
        clock: Wall clock for relative times (``3 weeks ago``).
    """

    prog: str = "docker model"
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Callable[[], float] = time.time
    _client: DaemonClient | None = None
    _endpoint: Endpoint | None = None

    @property
    def endpoint(self) -> Endpoint:
        """Return the daemon's address: ``MODEL_RUNNER_HOST`` > selected context > default."""
        if self._endpoint is None:
            self._endpoint = resolve_endpoint(self.environ, warn=self.err)
        return self._endpoint

    @property
    def client(self) -> DaemonClient:
        """Return the daemon client, created on first use."""
        if self._client is None:
            endpoint = self.endpoint
            self._client = DaemonClient(endpoint.base_url, tls_verify=endpoint.tls_verify)
        return self._client

    @property
    def host_is_explicit(self) -> bool:
        """Return whether the environment or a context names the daemon (DMR's "manual install")."""
        return self.endpoint.source != SOURCE_DEFAULT

    def out(self, text: str = "", *, end: str = "\n") -> None:
        """Write to stdout and flush (answers stream token by token)."""
        self.stdout.write(text + end)
        self.stdout.flush()

    def err(self, text: str = "", *, end: str = "\n") -> None:
        """Write to stderr and flush."""
        self.stderr.write(text + end)
        self.stderr.flush()

    def stdin_is_tty(self) -> bool:
        """Return whether stdin is a terminal."""
        return _is_tty(self.stdin)

    def stdout_is_tty(self) -> bool:
        """Return whether stdout is a terminal."""
        return _is_tty(self.stdout)

    def stderr_is_tty(self) -> bool:
        """Return whether stderr is a terminal (progress bars are drawn there)."""
        return _is_tty(self.stderr)

    def close(self) -> None:
        """Close the daemon client's connections."""
        if self._client is not None:
            self._client.close()

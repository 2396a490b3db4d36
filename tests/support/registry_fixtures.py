"""Fixtures that start a real OCI registry (Debian's docker-registry) on 127.0.0.1.

* ``registry``: open registry, deletes enabled;
* ``basic_registry``: htpasswd (Basic) auth, user ``testuser`` / ``testpass``;
* ``token_registry``: Bearer token auth against :mod:`tests.support.token_server`;
* ``docker_config_dir``: an empty ``DOCKER_CONFIG`` folder (no stray credentials);
* :func:`write_docker_config`: write credentials into such a folder.

Each registry runs in its own temporary folder; teardown is ``stop_process`` (TERM, KILL).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from orchestrator.store.reference import ModelRef, parse_reference
from tests.support.processes import free_port, stop_process, wait_until
from tests.support.token_server import SERVICE, TokenServer

USERNAME = "testuser"
PASSWORD = "testpass"
_ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+)'
)


@dataclasses.dataclass(frozen=True)
class AccessEntry:
    """One line of the registry's access log."""

    method: str
    uri: str
    status: int
    bytes: int


@dataclasses.dataclass
class RegistryServer:
    """A running registry process.

    Attributes:
        host: ``127.0.0.1:<port>``, the registry part of references.
        root: Its storage folder.
        log_path: Its combined log (access log included).
        proc: The process.
        username: User that may push (auth registries), else ``None``.
        password: That user's password.
        token_server: The token server (token registries only).
    """

    host: str
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None

    @property
    def url(self) -> str:
        """Return ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}"

    def ref(self, name: str) -> ModelRef:
        """Return the parsed reference ``<host>/<name>``."""
        return parse_reference(f"{self.host}/{name}")

    def access_log(self) -> list[AccessEntry]:
        """Return the requests the registry has answered so far."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _ACCESS_LINE.search(line)
            if match and not line.startswith("time="):
                entries.append(
                    AccessEntry(
                        match["method"], match["uri"], int(match["status"]), int(match["bytes"])
                    )
                )
        return entries

    def stop(self) -> None:
        """Stop the registry (and its token server)."""
        stop_process(self.proc)
        if self.token_server is not None:
            self.token_server.stop()


def _config(root: Path, port: int, auth: str) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "  secret: test-only\n" + auth
    )


def start_registry(binary: str, root: Path, auth: str = "", **fields: object) -> RegistryServer:
    """Start ``docker-registry serve`` in ``root`` and wait until ``/v2/`` answers."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "registry.yml"
    config.write_text(_config(root, port, auth))
    log_path = root / "registry.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    server = RegistryServer(f"127.0.0.1:{port}", root, log_path, proc, **fields)  # type: ignore[arg-type]

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return requests.get(f"{server.url}/v2/", timeout=1).status_code in (200, 401)
        except requests.RequestException:
            return False

    if not wait_until(ready, timeout=15) or proc.poll() is not None:
        stop_process(proc)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"docker-registry did not start:\n{tail}")
    return server


def write_docker_config(
    directory: Path, host: str, username: str, password: str, **extra: object
) -> Path:
    """Write ``config.json`` with ``auths[host]`` (plus ``extra`` keys); return the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    data: dict[str, object] = {"auths": {host: {"auth": auth}}, **extra}
    (directory / "config.json").write_text(json.dumps(data))
    return directory


@pytest.fixture
def docker_config_dir(tmp_path: Path) -> Path:
    """Return an empty DOCKER_CONFIG folder, so no real credentials leak into tests."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    return directory


@pytest.fixture
def registry(docker_registry_bin: str, tmp_path: Path) -> Iterator[RegistryServer]:
    """Start an open registry on 127.0.0.1 (deletes enabled)."""
    server = start_registry(docker_registry_bin, tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture
def basic_registry(docker_registry_bin: str, tmp_path: Path) -> Iterator[RegistryServer]:
    """Start a registry with htpasswd (Basic) auth for testuser/testpass."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    root = tmp_path / "basic-registry"
    root.mkdir()
    # Only bcrypt (-B) entries are accepted by the registry.
    line = subprocess.run(
        [htpasswd, "-Bbn", USERNAME, PASSWORD], capture_output=True, check=True, timeout=30
    ).stdout
    (root / "htpasswd").write_bytes(line)
    auth = f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {root / 'htpasswd'}\n"
    server = start_registry(docker_registry_bin, root, auth, username=USERNAME, password=PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def token_registry(docker_registry_bin: str, tmp_path: Path) -> Iterator[RegistryServer]:
    """Start a registry with Bearer token auth backed by an in-process token server."""
    root = tmp_path / "token-registry"
    tokens = TokenServer(root / "token", username=USERNAME, password=PASSWORD).start()
    auth = (
        "auth:\n  token:\n"
        f"    realm: {tokens.realm}\n"
        f"    service: {SERVICE}\n"
        "    issuer: test-token-issuer\n"
        f"    rootcertbundle: {tokens.cert_path}\n"
    )
    try:
        server = start_registry(
            docker_registry_bin,
            root,
            auth,
            username=USERNAME,
            password=PASSWORD,
            token_server=tokens,
        )
    except BaseException:
        tokens.stop()
        raise
    yield server
    server.stop()

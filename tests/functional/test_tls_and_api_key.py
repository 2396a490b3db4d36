"""The optional TLS listener and API key on the real daemon, with curl, the openai client and the
CLI (issue 12). Both are off by default, as in DMR."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.daemon_fixtures import MODEL, Daemon
from tests.support.processes import free_port

pytestmark = pytest.mark.llama_server

API_KEY = "test-key-6f1c2d"


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a certificate for localhost/127.0.0.1 and its key (PEM); return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_daemon(
    daemon_factory: Callable[..., Daemon], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Daemon, int, Path]:
    cert, key = write_self_signed(tmp_path_factory.mktemp("tls"))
    tls_port = free_port()
    daemon = daemon_factory(
        MODEL_RUNNER_TLS_CERT=str(cert),
        MODEL_RUNNER_TLS_KEY=str(key),
        MODEL_RUNNER_TLS_PORT=str(tls_port),
        DMR_API_KEY=API_KEY,
        DMR_HEADER_TIMEOUT="3",
    )
    return daemon, tls_port, cert


def test_https_answers_with_the_key_and_refuses_without(tls_daemon: tuple[Daemon, int, Path]) -> None:
    daemon, tls_port, cert = tls_daemon
    url = f"https://127.0.0.1:{tls_port}/models"
    refused = requests.get(url, verify=str(cert), timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    served = requests.get(
        url, verify=str(cert), timeout=10, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert served.status_code == 200
    assert any(MODEL in tag for model in served.json() for tag in model["tags"])
    # The plain port stays, with the same key rule; health stays open on both.
    assert daemon.get("/models").status_code == 401
    assert daemon.get("/").status_code == 200
    assert requests.get(f"https://127.0.0.1:{tls_port}/", verify=str(cert), timeout=10).ok


def test_the_tls_listener_refuses_old_protocols_and_plain_http(
    tls_daemon: tuple[Daemon, int, Path],
) -> None:
    _daemon, tls_port, _cert = tls_daemon
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # deprecated on purpose: the daemon must refuse it
        warnings.simplefilter("ignore", DeprecationWarning)
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw).do_handshake()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{tls_port}/", timeout=10)


def test_a_client_stuck_in_the_handshake_holds_nothing(
    tls_daemon: tuple[Daemon, int, Path],
) -> None:
    daemon, tls_port, cert = tls_daemon
    stuck = [socket.create_connection(("127.0.0.1", tls_port), timeout=10) for _ in range(100)]
    try:
        started = time.monotonic()
        assert requests.get(
            f"https://127.0.0.1:{tls_port}/version", verify=str(cert), timeout=5
        ).ok
        assert time.monotonic() - started < 1.0
        stuck[0].settimeout(10)
        assert stuck[0].recv(1) == b""  # closed at the header deadline (3 s)
    finally:
        for sock in stuck:
            sock.close()
    assert daemon.proc.poll() is None


def test_the_openai_client_sends_the_key_over_tls(tls_daemon: tuple[Daemon, int, Path]) -> None:
    import openai

    _daemon, tls_port, cert = tls_daemon
    base = f"https://127.0.0.1:{tls_port}/engines/v1"
    with openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(cert))) as http_client:
        client = openai.OpenAI(base_url=base, api_key=API_KEY, http_client=http_client)
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert answer.choices[0].message.content
        wrong = openai.OpenAI(base_url=base, api_key="wrong", http_client=http_client)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_the_cli_sends_the_key_and_trusts_the_given_ca(
    tls_daemon: tuple[Daemon, int, Path],
) -> None:
    _daemon, tls_port, cert = tls_daemon
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_RUNNER_", "DMR_"))}
    env.update(
        MODEL_RUNNER_HOST=f"https://127.0.0.1:{tls_port}",
        MODEL_RUNNER_TLS_CA_CERT=str(cert),
    )
    command = [sys.executable, "-m", "orchestrator.modelcli", "ls"]
    without = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert without.returncode != 0
    assert "DMR_API_KEY" in without.stderr
    env["DMR_API_KEY"] = API_KEY
    listed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "smollm2" in listed.stdout

"""A Docker-style token server for a local registry's Bearer auth (``oci.md`` section 1c).

``GET /token?service=..&scope=repository:NAME:ACTIONS[&scope=...]`` with optional Basic
credentials answers ``{"token", "access_token", "expires_in", "issued_at"}``: an RS256 JWT whose
header carries the signing certificate as ``x5c``, which the registry checks against its
``rootcertbundle``. Grants: the configured user gets every action asked for; anonymous callers
get ``pull`` on ``public/*`` only; wrong credentials get 401.

Runs in a thread of the test process (``TokenServer.start()``), on 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISSUER = "test-token-issuer"
SERVICE = "test-registry"


def make_signing_cert(directory: Path) -> tuple[Path, bytes, bytes]:
    """Write ``cert.pem`` into ``directory``; return (cert path, key PEM, cert DER)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_path, key_pem, cert.public_bytes(serialization.Encoding.DER)


class TokenServer:
    """Token server for one user, in a background thread.

    Args:
        directory: Where the signing certificate is written (``cert.pem``).
        username: The one user who may push.
        password: Their password.
        lifetime_seconds: ``expires_in`` of the tokens.

    Attributes:
        requests: ``(scopes, user)`` of every token request, for assertions.
    """

    def __init__(
        self, directory: Path, *, username: str, password: str, lifetime_seconds: int = 300
    ) -> None:
        self.cert_path, self._key_pem, self._cert_der = make_signing_cert(directory)
        self.username = username
        self.password = password
        self.lifetime_seconds = lifetime_seconds
        self.requests: list[tuple[list[str], str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def realm(self) -> str:
        """Return the token URL the registry sends in its challenge."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def start(self) -> TokenServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (bounded by the serve loop's poll interval)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def grant(self, scope: str, user: str) -> dict[str, object] | None:
        """Return the ``access`` entry granted for one scope (``None`` grants nothing)."""
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            return None
        _, name, actions = parts
        wanted = [a for a in actions.split(",") if a]
        if user != self.username:
            wanted = ["pull"] if name.startswith("public/") and "pull" in wanted else []
        return {"type": "repository", "name": name, "actions": wanted}

    def issue(self, scopes: list[str], user: str, service: str) -> str:
        """Return a signed JWT for ``scopes``."""
        now = int(time.time())
        access = [entry for scope in scopes if (entry := self.grant(scope, user)) is not None]
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": service,
            "exp": now + self.lifetime_seconds,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        headers = {"x5c": [base64.b64encode(self._cert_der).decode("ascii")]}
        return jwt.encode(claims, self._key_pem, algorithm="RS256", headers=headers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path != "/token":
                    self._reply(404, {"error": "not found"})
                    return
                query = parse_qs(parts.query)
                user = "anonymous"
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    try:
                        decoded = base64.b64decode(header[6:]).decode()
                    except ValueError:
                        decoded = ":"
                    name, _, password = decoded.partition(":")
                    if name != server.username or password != server.password:
                        self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                        return
                    user = name
                scopes = query.get("scope", [])
                with server._lock:
                    server.requests.append((scopes, user))
                service = query.get("service", [SERVICE])[0]
                token = server.issue(scopes, user, service)
                self._reply(
                    200,
                    {
                        "token": token,
                        "access_token": token,
                        "expires_in": server.lifetime_seconds,
                        "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                    },
                )

        return Handler

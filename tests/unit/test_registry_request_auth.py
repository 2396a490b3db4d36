"""``X-Registry-Auth``: the header's format, where its credentials may go, and how the CLI
resolves the user's ``docker login`` (auths, credHelpers, credsStore) into it."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.modelcli.compose_endpoints import status_endpoints
from orchestrator.modelcli.registry_credentials import registry_auth_headers
from orchestrator.registry.auth import Credentials
from orchestrator.registry.request_auth import (
    HEADER,
    decode_registry_auth,
    encode_registry_auth,
)
from orchestrator.store.reference import set_default_registry

# A credential helper that speaks the real protocol: `get` reads the server URL on stdin and
# answers {"ServerURL","Username","Secret"}, or exits 1 with "credentials not found".
FAKE_HELPER = """#!/bin/sh
[ "$1" = get ] || exit 2
read server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  registry.example.com) echo '{"ServerURL":"registry.example.com","Username":"helper-user","Secret":"helper-pass"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"https://index.docker.io/v1/","Username":"<token>","Secret":"refresh-token"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def b64url(document: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


@pytest.fixture(autouse=True)
def docker_hub_default() -> Iterator[None]:
    previous = set_default_registry("docker.io")
    yield
    set_default_registry(previous)


def test_round_trip_keeps_user_password_and_server() -> None:
    value = encode_registry_auth(Credentials("u", "p:w"), "127.0.0.1:5000")
    decoded = decode_registry_auth(value)
    assert decoded is not None and decoded.credentials == Credentials("u", "p:w")
    assert decoded.server_address == "127.0.0.1:5000"
    assert "p:w" not in repr(decoded)


def test_identity_tokens_and_registry_tokens_are_understood() -> None:
    identity = decode_registry_auth(b64url({"identitytoken": "refresh", "serveraddress": "r.io"}))
    assert identity is not None and identity.credentials is not None
    assert identity.credentials.identity_token == "refresh"
    token = decode_registry_auth(b64url({"registrytoken": "bearer"}))
    assert token is not None and token.registry_token == "bearer" and token.credentials is None


def test_auth_field_and_missing_padding_are_accepted() -> None:
    auth = base64.b64encode(b"user:secret").decode()
    value = b64url({"auth": auth, "serveraddress": "r.io", "email": "x@y"}).rstrip("=")
    decoded = decode_registry_auth(value)
    assert decoded is not None and decoded.credentials == Credentials("user", "secret")


def test_an_empty_header_or_object_is_anonymous() -> None:
    assert decode_registry_auth("") is None
    assert decode_registry_auth(b64url({})) is None
    assert decode_registry_auth(b64url({"serveraddress": "r.io"})) is None


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        base64.b64encode(b"\xff\xfe").decode(),
        b64url([1, 2]),
        b64url({"username": 1, "password": "x"}),
        b64url({"auth": "%%%"}),
        "A" * 20000,
    ],
)
def test_malformed_headers_are_refused_without_quoting_them(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_registry_auth(value)
    assert caught.value.param == HEADER and caught.value.status == 400
    assert value[:12] not in caught.value.message


def test_credentials_apply_to_their_own_registry_only() -> None:
    decoded = decode_registry_auth(b64url({"username": "u", "password": "p",
                                           "serveraddress": "https://index.docker.io/v1/"}))  # fmt: skip
    assert decoded is not None
    assert decoded.applies_to("docker.io") and decoded.applies_to("registry-1.docker.io")
    assert not decoded.applies_to("mirror.example.com")
    unbound = decode_registry_auth(b64url({"username": "u", "password": "p"}))
    assert unbound is not None and not unbound.applies_to("127.0.0.1:5000")
    bound = unbound.bound_to("127.0.0.1:5000")
    assert bound.applies_to("127.0.0.1:5000") and not bound.applies_to("127.0.0.1:5001")
    assert decoded.bound_to("other.io").server_address == "https://index.docker.io/v1/"


def header_document(headers: dict[str, str]) -> dict[str, str]:
    padded = headers[HEADER] + "=" * (-len(headers[HEADER]) % 4)
    return dict(json.loads(base64.urlsafe_b64decode(padded)))


def test_cli_sends_the_auths_entry_docker_login_writes(tmp_path: Path) -> None:
    auth = base64.b64encode(b"testuser:testpass").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    env = {"DOCKER_CONFIG": str(tmp_path)}
    document = header_document(registry_auth_headers("127.0.0.1:5000/team/model:v1", env))
    assert document == {"serveraddress": "127.0.0.1:5000", "username": "testuser",
                        "password": "testpass"}  # fmt: skip
    assert registry_auth_headers("127.0.0.1:5001/team/model", env) == {}
    assert registry_auth_headers("hf.co/org/repo", env) == {}


@pytest.fixture
def helper_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-test"
    helper.write_text(FAKE_HELPER)
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    return {"DOCKER_CONFIG": str(tmp_path), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_cli_asks_cred_helpers_for_their_registry(helper_env: dict[str, str]) -> None:
    config = Path(helper_env["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"credHelpers": {"registry.example.com": "test"}}))
    document = header_document(registry_auth_headers("registry.example.com/org/m", helper_env))
    assert document["username"] == "helper-user" and document["password"] == "helper-pass"
    assert document["serveraddress"] == "registry.example.com"
    # A registry without a helper entry and no credsStore: nothing is asked, nothing sent.
    assert registry_auth_headers("other.example.com/org/m", helper_env) == {}
    asked = (Path(helper_env["PATH"].split(os.pathsep)[0]) / "asked").read_text().split()
    assert asked == ["registry.example.com"]


def test_cli_asks_the_creds_store_with_docker_hubs_key(helper_env: dict[str, str]) -> None:
    config = Path(helper_env["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"credsStore": "test"}))
    document = header_document(registry_auth_headers("ai/smollm2", helper_env))
    assert document == {"serveraddress": "https://index.docker.io/v1/",
                        "identitytoken": "refresh-token"}  # fmt: skip
    # The store knows nothing of this registry: anonymous, no error.
    assert registry_auth_headers("127.0.0.1:5000/team/model", helper_env) == {}


def test_cli_without_a_helper_binary_sends_nothing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "absent-helper"}))
    assert registry_auth_headers("ai/smollm2", {"DOCKER_CONFIG": str(tmp_path), "PATH": ""}) == {}


@pytest.mark.parametrize(
    ("base_url", "bridge", "endpoint", "host"),
    [
        ("http://localhost:12434", "172.17.0.1", "http://172.17.0.1:12434/engines/v1/",
         "http://localhost:12434/engines/v1/"),
        ("http://127.0.0.1:5555", None, "http://model-runner.docker.internal:5555/engines/v1/",
         "http://127.0.0.1:5555/engines/v1/"),
        ("http://[::1]:12434", "10.9.0.1", "http://10.9.0.1:12434/engines/v1/", "http://[::1]:12434/engines/v1/"),
        ("https://gpu-box.lan:12444", "172.17.0.1", "https://gpu-box.lan:12444/engines/v1/",
         "https://gpu-box.lan:12444/engines/v1/"),
        ("unix:///run/dmr.sock", "172.17.0.1", "unix:///run/dmr.sock", "unix:///run/dmr.sock"),
    ],
)  # fmt: skip
def test_status_endpoints_for_containers_and_the_host(
    base_url: str, bridge: str | None, endpoint: str, host: str
) -> None:
    found = status_endpoints(base_url, bridge=lambda: bridge)
    assert (found.endpoint, found.endpoint_host) == (endpoint, host)

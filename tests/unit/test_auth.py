"""Credentials lookup and WWW-Authenticate handling, without any network."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests

from orchestrator.errors import RegistryError
from orchestrator.registry.auth import (
    Authenticator,
    Credentials,
    api_host,
    credentials_key,
    docker_config_path,
    load_credentials,
    merge_scopes,
    parse_challenges,
)


def write_config(directory: Path, data: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(data))
    return directory


def unauthorized(header: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 401
    response.headers["WWW-Authenticate"] = header
    return response


def test_docker_hub_names_map_to_api_host_and_credentials_key() -> None:
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert api_host(name) == "registry-1.docker.io"
        assert credentials_key(name) == "https://index.docker.io/v1/"
    assert api_host("127.0.0.1:5000") == "127.0.0.1:5000"
    assert credentials_key("ghcr.io") == "ghcr.io"


def test_parse_bearer_challenge_with_commas_in_quotes() -> None:
    header = (
        'Bearer realm="http://127.0.0.1:5057/token",service="svc",'
        'scope="repository:priv/m:pull,push",error="insufficient_scope"'
    )
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "http://127.0.0.1:5057/token",
        "service": "svc",
        "scope": "repository:priv/m:pull,push",
        "error": "insufficient_scope",
    }


def test_parse_several_challenges_and_basic() -> None:
    challenges = parse_challenges('Basic realm="basic-realm", Bearer realm="https://a/t"')
    assert [(c.scheme, c.params["realm"]) for c in challenges] == [
        ("basic", "basic-realm"),
        ("bearer", "https://a/t"),
    ]
    assert parse_challenges("") == []


def test_merge_scopes_unites_actions_per_repository() -> None:
    assert merge_scopes("repository:a/b:pull,push", "repository:a/b:pull") == [
        "repository:a/b:pull,push"
    ]
    assert merge_scopes("repository:a/b:pull", None, "repository:c/d:pull") == [
        "repository:a/b:pull",
        "repository:c/d:pull",
    ]
    assert merge_scopes(None, "") == []


def test_config_path_order(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(tmp_path / "dc")}
    assert docker_config_path(tmp_path / "x", env) == tmp_path / "x" / "config.json"
    assert docker_config_path(None, env) == tmp_path / "dc" / "config.json"
    assert docker_config_path(None, {"HOME": str(tmp_path)}) == tmp_path / ".docker/config.json"


def test_auths_base64_entry(tmp_path: Path) -> None:
    auth = base64.b64encode(b"user:pa:ss").decode()
    write_config(tmp_path, {"auths": {"127.0.0.1:5000": {"auth": auth}}})
    found = load_credentials("127.0.0.1:5000", docker_config_dir=tmp_path)
    assert found == Credentials("user", "pa:ss")
    assert load_credentials("127.0.0.1:5001", docker_config_dir=tmp_path) is None


def test_auths_username_password_and_url_keys(tmp_path: Path) -> None:
    write_config(
        tmp_path, {"auths": {"https://reg.example.com/v2/": {"username": "u", "password": "p"}}}
    )
    assert load_credentials("reg.example.com", docker_config_dir=tmp_path) == Credentials("u", "p")


def test_docker_hub_credentials_under_index_key(tmp_path: Path) -> None:
    auth = base64.b64encode(b"hubuser:hubpass").decode()
    write_config(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": auth}}})
    assert load_credentials("docker.io", docker_config_dir=tmp_path) == Credentials(
        "hubuser", "hubpass"
    )


def test_identity_token_entry(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"reg.example.com": {"identitytoken": "refresh"}}})
    found = load_credentials("reg.example.com", docker_config_dir=tmp_path)
    assert found is not None and found.identity_token == "refresh"


def test_missing_config_is_anonymous_and_broken_config_is_an_error(tmp_path: Path) -> None:
    assert load_credentials("x.io", docker_config_dir=tmp_path / "none") is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RegistryError, match="config.json"):
        load_credentials("x.io", docker_config_dir=tmp_path)


def test_bad_base64_is_an_error(tmp_path: Path) -> None:
    write_config(tmp_path, {"auths": {"x.io": {"auth": "!!!"}}})
    with pytest.raises(RegistryError, match="base64"):
        load_credentials("x.io", docker_config_dir=tmp_path)


def test_missing_credential_helper_means_anonymous(tmp_path: Path) -> None:
    write_config(tmp_path, {"credsStore": "does-not-exist-anywhere"})
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    assert load_credentials("x.io", docker_config_dir=tmp_path, environ=env) is None


def test_helper_name_with_path_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path, {"credHelpers": {"x.io": "../../bin/sh"}})
    assert load_credentials("x.io", docker_config_dir=tmp_path, environ={"PATH": "/bin"}) is None


def test_explicit_bearer_token_is_sent_and_never_exchanged() -> None:
    auth = Authenticator(requests.Session(), "x.io", bearer_token="tok")
    assert auth.authorization("repository:a:pull") == "Bearer tok"
    assert not auth.handle_unauthorized(unauthorized('Bearer realm="https://a/t"'), None, None)


def test_basic_challenge_resends_once_then_sends_up_front() -> None:
    auth = Authenticator(requests.Session(), "x.io", credentials=Credentials("u", "p"))
    assert auth.authorization("s") is None
    assert auth.handle_unauthorized(unauthorized('Basic realm="r"'), "s", None)
    header = auth.authorization("s")
    assert header == "Basic " + base64.b64encode(b"u:p").decode()
    # The same credentials failing again is a denial, not a loop.
    assert not auth.handle_unauthorized(unauthorized('Basic realm="r"'), "s", header)


def test_basic_challenge_without_credentials_is_not_retried() -> None:
    auth = Authenticator(requests.Session(), "x.io")
    assert not auth.handle_unauthorized(unauthorized('Basic realm="r"'), "s", None)


def test_http_realm_refused_for_a_secure_registry() -> None:
    auth = Authenticator(requests.Session(), "x.io", credentials=Credentials("u", "p"))
    with pytest.raises(RegistryError, match="realm"):
        auth.handle_unauthorized(unauthorized('Bearer realm="http://x.io/token"'), "s", None)
    with pytest.raises(RegistryError, match="realm"):
        auth.handle_unauthorized(unauthorized('Bearer realm="file:///etc/passwd"'), "s", None)


def test_credentials_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(Credentials("u", "hunter2", "tok"))


def test_endpoint_scheme_and_host_selection() -> None:
    from orchestrator.registry.client import RegistryClient
    from orchestrator.store.reference import parse_reference

    with RegistryClient(insecure_registries=("reg.example.com",)) as client:
        url = client._repo_url  # noqa: SLF001 (the URL rule is the unit under test)
        assert url(parse_reference("smollm2")) == "https://registry-1.docker.io/v2/ai/smollm2"
        assert url(parse_reference("ghcr.io/o/m")) == "https://ghcr.io/v2/o/m"
        assert url(parse_reference("127.0.0.1:5000/o/m")) == "http://127.0.0.1:5000/v2/o/m"
        assert url(parse_reference("localhost:5000/o/m")) == "http://localhost:5000/v2/o/m"
        assert url(parse_reference("box.local/o/m")) == "http://box.local/v2/o/m"
        assert url(parse_reference("reg.example.com/o/m")) == "http://reg.example.com/v2/o/m"

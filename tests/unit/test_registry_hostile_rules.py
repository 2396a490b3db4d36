"""Pure rules behind the hostile-registry hardening (issue 12): no sockets here.

Origins, the https->http refusal, the token-realm trust rule, the stall rule's arithmetic, the
capped body readers and the watch's error conversion. The behaviour against real (hostile)
servers on loopback is in ``tests/functional/test_registry_hostile.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.errors import RegistryError
from orchestrator.registry import watchdog
from orchestrator.registry.auth import realm_may_receive_credentials, stored_credential_hosts
from orchestrator.registry.manifest import error_codes, read_error_prefix, read_limited
from orchestrator.registry.transport import (
    check_next_url,
    open_following_redirects,
    origin,
    same_origin,
)
from orchestrator.registry.watchdog import StallRule, Watch
from orchestrator.settings import Config


def test_origin_fills_default_ports_and_ignores_case_and_user_info() -> None:
    assert origin("https://Registry.Example.com/v2/") == ("https", "registry.example.com", 443)
    assert same_origin("http://h/v2/x", "http://u:p@H:80/other?q=1")
    assert not same_origin("http://h:5000/", "http://h:5001/")
    assert not same_origin("http://h/", "https://h/")
    assert not same_origin("http://127.0.0.1:5000/", "http://localhost:5000/")


@pytest.mark.parametrize(
    ("current", "following"),
    [
        ("https://r.io/v2/x", "http://r.io/v2/x"),
        ("https://r.io/v2/x", "ftp://r.io/blob"),
        ("http://r.io/v2/x", "file:///etc/passwd"),
        ("http://r.io/v2/x", "http:///no-host"),
    ],
)
def test_next_url_refuses_downgrades_and_other_schemes(current: str, following: str) -> None:
    with pytest.raises(RegistryError):
        check_next_url(current, following, "a redirect")


def test_next_url_allows_upgrades_and_same_scheme_hops() -> None:
    check_next_url("http://r.io/v2/x", "https://cdn.example/blob", "a redirect")
    check_next_url("https://r.io/v2/x", "https://cdn.example/blob", "a redirect")


class FakeResponse:
    """Just what open_following_redirects reads of a response."""

    def __init__(self, status: int, location: str | None = None) -> None:
        self.status_code = status
        self.headers = {"Location": location} if location else {}
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeSession:
    """Records the cross-origin GETs (which must carry no Authorization)."""

    def __init__(self, answers: Iterator[FakeResponse]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, Mapping[str, str]]] = []

    def get(self, url: str, *, headers: Mapping[str, str], **kwargs: Any) -> FakeResponse:
        self.sent.append((url, headers))
        return next(self.answers)


def test_redirect_chain_authorizes_only_the_first_origin() -> None:
    fetched: list[str] = []

    def fetch(url: str, headers: Mapping[str, str]) -> Any:
        fetched.append(url)
        if url.endswith("/blobs/a"):
            return FakeResponse(307, "/moved/a")  # same origin, relative
        return FakeResponse(302, "https://cdn.example/signed/a")

    session = FakeSession(iter([FakeResponse(200)]))
    response = open_following_redirects(
        fetch,
        session,
        "https://r.io/v2/x/blobs/a",
        {"Range": "bytes=5-"},
        timeout=(1, 1),  # type: ignore[arg-type]
    )
    assert response.status_code == 200
    assert fetched == ["https://r.io/v2/x/blobs/a", "https://r.io/moved/a"]
    assert session.sent == [("https://cdn.example/signed/a", {"Range": "bytes=5-"})]


def test_redirect_from_https_to_http_is_refused_before_any_request() -> None:
    def fetch(url: str, headers: Mapping[str, str]) -> Any:
        return FakeResponse(302, "http://r.io/v2/x/blobs/a")

    session = FakeSession(iter([]))
    with pytest.raises(RegistryError, match="downgrade"):
        open_following_redirects(fetch, session, "https://r.io/v2/x/blobs/a", {}, timeout=(1, 1))  # type: ignore[arg-type]
    assert session.sent == []


@pytest.mark.parametrize(
    ("registry", "realm", "trusted"),
    [
        ("127.0.0.1:5000", "http://127.0.0.1:5001/token", True),  # same host, other port
        ("ghcr.io", "https://ghcr.io/token", True),
        ("docker.io", "https://auth.docker.io/token", True),  # known pair
        ("index.docker.io", "https://auth.docker.io/token", True),
        ("nvcr.io", "https://authn.nvidia.com/token", True),  # known pair
        ("registry.gitlab.com", "https://gitlab.com/jwt/auth", True),  # parent domain
        ("Registry.Example.com:443", "https://EXAMPLE.com./t", True),
        ("127.0.0.1:5000", "http://localhost:5001/token", False),  # unrelated host
        ("ghcr.io", "https://evil.example/token", False),
        ("myreg.azurecr.io", "https://evil.azurecr.io/t", False),  # sibling: no PSL, no trust
        ("registry.example.com", "https://gitlab.example.com/jwt", False),  # sibling
        ("gitlab.com", "https://registry.gitlab.com/t", False),  # child, not parent
        ("r.io", "https://io/t", False),  # a bare TLD is never a parent to trust
        ("10.0.0.5:5000", "https://0.5/t", False),  # IP addresses have no parent domains
        ("quay.io", "not a url", False),
    ],
)
def test_realm_trust_rule(registry: str, realm: str, trusted: bool) -> None:
    assert realm_may_receive_credentials(registry, realm) is trusted


def test_realm_hosts_named_in_config_json_are_trusted(tmp_path: Path) -> None:
    config = {
        "auths": {"registry.example.com": {"auth": "dTpw"}, "gitlab.example.com": {}},
        "credHelpers": {"https://other.example:8443/v1/": "pass"},
        "credsStore": "desktop",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    hosts = stored_credential_hosts(tmp_path)
    assert hosts == {"registry.example.com", "gitlab.example.com", "other.example"}
    realm = "https://gitlab.example.com/jwt/auth"
    assert realm_may_receive_credentials("registry.example.com", realm, hosts)
    assert stored_credential_hosts(tmp_path / "missing") == frozenset()


def test_stall_rule_waits_for_the_first_window_then_needs_the_floor() -> None:
    rule = StallRule(window_seconds=10, min_bytes_per_second=100)
    assert rule.shortfall([(0, 0), (5, 0)], 5) is None  # first window not over
    assert rule.shortfall([(0, 0), (10, 999)], 10) == 999  # 999 < 1000 bytes in 10 s
    assert rule.shortfall([(0, 0), (10, 1000)], 10) is None
    # The window slides: 5000 bytes early, then nothing for more than a window.
    samples = [(0.0, 0), (2.0, 5000), (12.0, 5000), (13.0, 5000)]
    assert rule.shortfall(samples, 13.0) == 0
    assert rule.shortfall([(0.0, 0), (2.0, 5000), (11.0, 5000)], 11.0) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watch_turns_the_failure_it_caused_into_a_clear_error() -> None:
    clock = FakeClock()
    tripped = threading.Event()
    with pytest.raises(RegistryError) as caught:
        with Watch(
            subject="registry 'r.io'", what="the manifest", deadline_seconds=5, clock=clock
        ) as watch:
            clock.now += 6
            for _ in range(200):
                if watch.reason is not None:
                    tripped.set()
                    break
                threading.Event().wait(0.01)
            raise requests.ConnectionError("connection reset by the cut")
    assert tripped.is_set()
    message = caught.value.message
    assert message.startswith("registry 'r.io' took more than 5s over the manifest")
    assert "DMR_REGISTRY_DEADLINE_SECONDS" in message
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_watch_that_tripped_fails_even_when_the_read_ended_quietly() -> None:
    """urllib3 1.26 ends a cut Content-Length body without an error: the data may be short."""
    clock = FakeClock()
    with pytest.raises(RegistryError, match="took more than 5s"):
        with Watch(subject="registry 'r.io'", what="x", deadline_seconds=5, clock=clock) as watch:
            clock.now += 6
            for _ in range(200):
                if watch.reason is not None:
                    break
                threading.Event().wait(0.01)


def test_watch_that_did_not_trip_leaves_errors_alone() -> None:
    with pytest.raises(ValueError, match="unrelated"):
        with Watch(subject="registry 'r.io'", what="x", deadline_seconds=60):
            raise ValueError("unrelated")


def test_watch_answer_within_and_transfer_again_switch_rules() -> None:
    watch = Watch(subject="s", what="w", stall=StallRule(60, 1024))
    watch.answer_within(30)
    assert watch.stall is None and watch.deadline_seconds == 30
    watch.transfer_again()
    assert watch.stall == StallRule(60, 1024) and watch.deadline_seconds is None


class BrokenRaw:
    """A body that yields ``data`` and then fails like a connection cut mid-chunk."""

    def __init__(self, data: bytes, error: BaseException) -> None:
        self.data = data
        self.error = error

    def read(self, amount: int = -1, **kwargs: Any) -> bytes:
        if self.data:
            piece, self.data = self.data[:amount], self.data[amount:]
            return piece
        raise self.error


def response_with(raw: Any, status: int = 500) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.raw = raw
    response.url = "http://r.io/v2/x"
    return response


def test_error_prefix_is_capped_and_never_raises() -> None:
    endless = BrokenRaw(b"x" * (1 << 20), OSError("reset"))
    assert len(read_error_prefix(response_with(endless), limit=1000)) == 1000
    broken = BrokenRaw(b'{"errors":[{"code":"DENIED"}]}', OSError("reset"))
    assert error_codes(response_with(broken)) == ["DENIED"]
    cut = BrokenRaw(b'{"errors":[', requests.exceptions.ChunkedEncodingError("cut"))
    assert error_codes(response_with(cut)) == []


def test_read_limited_refuses_oversized_and_broken_bodies() -> None:
    big = BrokenRaw(b"x" * 5000, OSError("unused"))
    with pytest.raises(RegistryError, match="larger than 4096 bytes"):
        read_limited(response_with(big, 200), 4096, "the manifest")
    broken = BrokenRaw(b"{", OSError("reset"))
    with pytest.raises(RegistryError, match="connection broke"):
        read_limited(response_with(broken, 200), 4096, "the manifest")


def test_settings_defaults_match_the_clients_defaults() -> None:
    config = Config()
    assert config.registry_deadline_seconds == watchdog.DEFAULT_DEADLINE_SECONDS
    assert config.registry_stall_seconds == watchdog.DEFAULT_STALL_SECONDS
    assert config.registry_min_bytes_per_second == watchdog.DEFAULT_MIN_BYTES_PER_SECOND


def test_registry_sessions_never_read_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests would put a ~/.netrc entry in Authorization (and Debian 12's 2.28 leaks it:
    # CVE-2024-47081); our sessions keep the proxy variables but never consult .netrc.
    from orchestrator.registry.transport import new_session

    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    plain = requests.Session().prepare_request(requests.Request("GET", "http://127.0.0.1:9/v2/"))
    assert "Authorization" in plain.headers  # the attack works on a bare session
    ours = new_session().prepare_request(requests.Request("GET", "http://127.0.0.1:9/v2/"))
    assert "Authorization" not in ours.headers
    with_header = new_session().prepare_request(
        requests.Request("GET", "http://127.0.0.1:9/v2/", headers={"Authorization": "Bearer t"})
    )
    assert with_header.headers["Authorization"] == "Bearer t"

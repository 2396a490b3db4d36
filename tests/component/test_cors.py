"""CORS with DMR's intended semantics (spec 1.2): localhost always, ``*``, port wildcards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.api.middleware import OriginPolicy
from tests.support.api_app import ApiHarness, assert_error_shape, build_harness

# (DMR_ORIGINS entries, Origin header, allowed?)
POLICY_CASES: list[tuple[tuple[str, ...], str, bool]] = [
    ((), "http://localhost", True),
    ((), "http://localhost:3000", True),
    ((), "https://localhost:8443", True),
    ((), "http://127.0.0.1:5173", True),
    ((), "https://127.0.0.1", True),
    ((), "http://0.0.0.0:8080", True),
    ((), "HTTP://LOCALHOST:3000", True),
    ((), "http://evil.example", False),
    ((), "http://localhost.evil.example", False),
    ((), "http://evil.example?localhost", False),
    ((), "http://localhost:3000/path", False),
    ((), "ftp://localhost", False),
    ((), "null", False),
    ((), "", False),
    ((), "http://localhost:notaport", False),
    ((), "http://user@localhost", False),
    (("*",), "http://evil.example", True),
    (("*",), "null", True),
    (("https://app.example",), "https://app.example", True),
    (("https://app.example",), "https://app.example:444", False),
    (("https://app.example",), "http://app.example", False),
    (("https://app.example",), "http://localhost:1", True),
    (("http://app.example:*",), "http://app.example:8080", True),
    (("http://app.example:*",), "http://app.example", True),
    (("http://app.example:*",), "https://app.example:8080", False),
    (("http://app.example:*",), "http://other.example:8080", False),
    ((" https://a.example ", "https://b.example/"), "https://b.example", True),
]


@pytest.mark.parametrize(("origins", "origin", "allowed"), POLICY_CASES)
def test_origin_policy(origins: tuple[str, ...], origin: str, allowed: bool) -> None:
    """The allow-list decides each Origin as documented."""
    assert OriginPolicy(origins).is_allowed(origin) is allowed


@pytest.fixture(scope="module")
def harness() -> Iterator[ApiHarness]:
    harness = build_harness(origins=("http://app.example:*",))
    yield harness
    harness.close()


def test_no_origin_means_no_cors_headers(harness: ApiHarness) -> None:
    """Without an Origin the answer carries no Access-Control header."""
    result = harness.client.simulate_get("/models")
    assert result.status_code == 200
    assert not [name for name in result.headers if name.lower().startswith("access-control")]


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://app.example:9000"])
def test_allowed_origin_is_echoed(harness: ApiHarness, origin: str) -> None:
    """An allowed Origin is echoed in Access-Control-Allow-Origin."""
    result = harness.client.simulate_get("/engines/v1/models", headers={"Origin": origin})
    assert result.status_code == 200
    assert result.headers["access-control-allow-origin"] == origin


def test_allowed_origin_is_echoed_on_errors_too(harness: ApiHarness) -> None:
    """Errors for an allowed Origin still carry the CORS header, so browsers can read them."""
    result = harness.client.simulate_get("/models/ai/nope", headers={"Origin": "http://localhost"})
    assert_error_shape(result, 404, "model_not_found")
    assert result.headers["access-control-allow-origin"] == "http://localhost"


@pytest.mark.parametrize(
    "path", ["/models", "/engines/ps", "/v1/models", "/engines/v1/chat/completions", "/rerank"]
)
def test_disallowed_origin_is_refused(harness: ApiHarness, path: str) -> None:
    """A disallowed Origin gets 403 origin_not_allowed on every CORS-protected route."""
    result = harness.client.simulate_get(path, headers={"Origin": "http://evil.example"})
    assert_error_shape(result, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in result.headers


@pytest.mark.parametrize("path", ["/", "/version", "/metrics", "/logs"])
def test_unprotected_routes_ignore_origin(harness: ApiHarness, path: str) -> None:
    """/, /version, /metrics and /logs do not apply CORS (as DMR)."""
    result = harness.client.simulate_get(path, headers={"Origin": "http://evil.example"})
    # /logs answers 404 here (no daemon log in the harness); what matters is: not refused.
    assert result.status_code in (200, 404)
    assert "access-control-allow-origin" not in result.headers


def test_preflight_allowed(harness: ApiHarness) -> None:
    """An allowed preflight answers 204 with DMR's four CORS headers."""
    result = harness.client.simulate_options(
        "/engines/v1/chat/completions",
        headers={"Origin": "http://127.0.0.1:8080", "Access-Control-Request-Method": "POST"},
    )
    assert result.status_code == 204
    assert result.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    assert result.headers["access-control-allow-credentials"] == "true"
    assert result.headers["access-control-allow-methods"] == "GET, POST, DELETE"
    # DMR sends "*"; Authorization is named too, as "*" does not cover it (DMR_API_KEY).
    assert result.headers["access-control-allow-headers"] == "*, Authorization"
    assert result.text == ""


def test_preflight_disallowed(harness: ApiHarness) -> None:
    """A preflight from a disallowed Origin is refused with the JSON error."""
    result = harness.client.simulate_options("/models", headers={"Origin": "https://evil.example"})
    assert_error_shape(result, 403, "origin_not_allowed")


def test_preflight_under_prefix(harness: ApiHarness) -> None:
    """The /exp/vDD4.40 prefix is stripped before CORS applies."""
    result = harness.client.simulate_options(
        "/exp/vDD4.40/models", headers={"Origin": "http://localhost:1234"}
    )
    assert result.status_code == 204


def test_allow_all() -> None:
    """DMR_ORIGINS='*' lets any Origin through."""
    harness = build_harness(origins=("*",))
    try:
        result = harness.client.simulate_get(
            "/models", headers={"Origin": "https://anything.example"}
        )
        assert result.status_code == 200
        assert result.headers["access-control-allow-origin"] == "https://anything.example"
    finally:
        harness.close()

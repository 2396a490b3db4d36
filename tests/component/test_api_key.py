"""DMR_API_KEY: off by default; when set, every route but health, version and the dashboard's files
needs the key, as a Bearer token or x-api-key, and a refusal is a 401 in the one shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.api_app import ApiHarness, assert_error_shape, build_harness

KEY = "s3cret-key-0123456789"


@pytest.fixture
def harness() -> Iterator[ApiHarness]:
    made = build_harness(api_key=KEY)
    yield made
    made.close()


@pytest.mark.parametrize(
    "path", ["/models", "/engines/ps", "/metrics", "/logs", "/v1/models", "/exp/vDD4.40/models"]
)
def test_a_request_without_the_key_gets_401(harness: ApiHarness, path: str) -> None:
    result = harness.client.simulate_get(path)
    error = assert_error_shape(result, 401, "invalid_api_key")
    assert "DMR_API_KEY" in error["message"]
    assert result.headers["www-authenticate"].startswith("Bearer")


def test_a_wrong_key_gets_401_and_says_so(harness: ApiHarness) -> None:
    result = harness.client.simulate_get("/models", headers={"Authorization": f"Bearer {KEY}x"})
    assert "wrong" in assert_error_shape(result, 401, "invalid_api_key")["message"]
    result = harness.client.simulate_get("/models", headers={"Authorization": f"Basic {KEY}"})
    assert_error_shape(result, 401, "invalid_api_key")


def test_the_key_as_bearer_or_x_api_key_is_served(harness: ApiHarness) -> None:
    bearer = harness.client.simulate_get("/models", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    anthropic_style = harness.client.simulate_get("/models", headers={"x-api-key": KEY})
    assert anthropic_style.status_code == 200


def test_inference_needs_the_key_too(harness: ApiHarness) -> None:
    body = {"model": "ai/tiny", "messages": [{"role": "user", "content": "hi"}]}
    refused = harness.client.simulate_post("/engines/v1/chat/completions", json=body)
    assert_error_shape(refused, 401, "invalid_api_key")
    served = harness.client.simulate_post(
        "/engines/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert served.status_code == 200, served.text


@pytest.mark.parametrize("path", ["/", "/version", "/ui/", "/exp/vDD4.40/version"])
def test_health_version_and_the_dashboard_page_stay_open(harness: ApiHarness, path: str) -> None:
    assert harness.client.simulate_get(path).status_code == 200


def test_a_cors_preflight_needs_no_key(harness: ApiHarness) -> None:
    result = harness.client.simulate_options(
        "/engines/v1/chat/completions",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert result.status_code == 204
    assert "Authorization" in result.headers["access-control-allow-headers"]


def test_without_a_key_nothing_is_asked() -> None:
    harness = build_harness()
    try:
        assert harness.client.simulate_get("/models").status_code == 200
    finally:
        harness.close()


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check must go through hmac.compare_digest (not ==), whose time does not depend on
    # how many leading characters of a guess are right.
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("orchestrator.api.apikey.hmac.compare_digest", spy)
    harness = build_harness(api_key=KEY)
    try:
        harness.client.simulate_get("/models", headers={"Authorization": "Bearer guess"})
        assert calls == [(b"guess", KEY.encode())]
    finally:
        harness.close()

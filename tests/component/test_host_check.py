"""A request naming the daemon by a foreign host name (DNS rebinding) is refused in the one shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.api_app import ApiHarness, assert_error_shape, build_harness


@pytest.fixture
def harness() -> Iterator[ApiHarness]:
    made = build_harness(allowed_hosts=())  # the default: no extra names
    yield made
    made.close()


@pytest.mark.parametrize("path", ["/models", "/logs", "/engines/ps", "/engines/_configure", "/"])
def test_a_rebinding_host_gets_403_on_every_route(harness: ApiHarness, path: str) -> None:
    result = harness.client.simulate_get(path, host="rebind.evil.example")
    error = assert_error_shape(result, 403, "host_not_allowed")
    assert "DMR_ALLOWED_HOSTS" in error["message"] and "rebind.evil.example" in error["message"]
    assert result.headers.get("x-request-id")  # rendered by the one error handler


def test_localhost_and_addresses_are_served(harness: ApiHarness) -> None:
    for host in ("localhost", "127.0.0.1", "model-runner.docker.internal"):
        assert harness.client.simulate_get("/models", host=host).status_code == 200, host


def test_a_configured_name_is_served() -> None:
    harness = build_harness(allowed_hosts=("models.lan",))
    try:
        assert harness.client.simulate_get("/models", host="models.lan").status_code == 200
        assert harness.client.simulate_get("/models", host="other.lan").status_code == 403
    finally:
        harness.close()

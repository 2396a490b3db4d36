"""The Host allow-list that keeps DNS-rebinding pages away from the API."""

from __future__ import annotations

import pytest

from orchestrator.api.hosts import HostPolicy, host_name


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:12434", "localhost"),
        ("LOCALHOST.", "localhost"),
        ("127.0.0.1:12434", "127.0.0.1"),
        ("[::1]:12434", "::1"),
        ("::1", "::1"),
        ("rebind.evil.example:12434", "rebind.evil.example"),
    ],
)
def test_host_name_drops_port_brackets_case_and_final_dot(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "header",
    [
        None,  # HTTP/1.0 or a Unix-socket client: not a browser
        "",
        "localhost:12434",
        "app.localhost",  # browsers resolve *.localhost to loopback themselves
        "127.0.0.1:12434",
        "172.17.0.1:12434",  # the docker0 bridge
        "[::1]:12434",
        "model-runner.docker.internal:12434",
        "host.docker.internal",
    ],
)
def test_loopback_addresses_and_docker_names_are_served(header: str | None) -> None:
    assert HostPolicy().is_allowed(header)


@pytest.mark.parametrize(
    "header",
    ["rebind.evil.example", "rebind.evil.example:12434", "localhost.evil.example", "evil-localhost"],
)
def test_other_names_are_refused(header: str) -> None:
    assert not HostPolicy().is_allowed(header)


def test_extra_names_subdomains_and_the_wildcard() -> None:
    policy = HostPolicy(("models.lan", "*.corp.example", " "))
    assert policy.is_allowed("models.lan:12434") and policy.is_allowed("gpu1.corp.example")
    assert not policy.is_allowed("corp.example") and not policy.is_allowed("evilcorp.example")
    assert HostPolicy(("*",)).is_allowed("anything.example")

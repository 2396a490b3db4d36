"""The daemon's fixed gunicorn settings and listen addresses (nothing is started)."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import bridge, server
from orchestrator.errors import ConfigError
from orchestrator.settings import Config


def test_bind_addresses_from_hosts_and_socket() -> None:
    config = Config(port=12434, host=("127.0.0.1", "::1"), socket="/run/dmr.sock")
    assert server.bind_addresses(config) == ["127.0.0.1:12434", "[::1]:12434", "unix:/run/dmr.sock"]


def test_default_hosts_add_the_docker_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_addrs() -> dict[str, list[object]]:
        v4 = SimpleNamespace(family=socket.AF_INET, address="172.17.0.1")
        v6 = SimpleNamespace(family=socket.AF_INET6, address="fe80::1")
        return {"docker0": [v4, v6], "lo": []}

    monkeypatch.setattr(bridge.psutil, "net_if_addrs", fake_addrs)
    assert server.default_hosts() == ["127.0.0.1", "172.17.0.1"]
    assert server.bind_addresses(Config(port=1)) == ["127.0.0.1:1", "172.17.0.1:1"]


def test_default_hosts_without_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge.psutil, "net_if_addrs", lambda: {"lo": []})
    assert server.default_hosts() == ["127.0.0.1"]


def test_fixed_worker_settings() -> None:
    config = Config(host=("127.0.0.1",), max_concurrent_requests=7, stop_grace_seconds=2.0)
    application = server.DaemonApplication(config)
    cfg = application.cfg
    assert cfg.workers == 1
    assert cfg.worker_class_str == "orchestrator.httpserver.worker.LaneWorker"
    limits = application.front_door_limits()
    assert (limits.work_threads, limits.control_threads) == (7, config.control_threads)
    assert limits.tls_port == 0
    assert cfg.max_requests == 0
    assert cfg.preload_app is False
    assert cfg.graceful_timeout >= server.DRAIN_SECONDS + config.stop_grace_seconds
    assert cfg.settings["worker_exit"].get() == application._worker_exit
    if "control_socket_disable" in cfg.settings:
        assert cfg.control_socket_disable is True


def test_tls_listener_binds_the_tls_port_on_every_host(tmp_path: Path) -> None:
    config = Config(
        host=("127.0.0.1", "::1"), port=12434, tls_port=12444,
        tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem"),
    )
    assert server.bind_addresses(config) == [
        "127.0.0.1:12434", "[::1]:12434", "127.0.0.1:12444", "[::1]:12444",
    ]


def test_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set both or neither"):
        server.run(Config(host=("127.0.0.1",), tls_cert=str(tmp_path / "c.pem")))


def test_unreadable_tls_certificate_is_refused_before_listening(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    config = Config(
        host=("127.0.0.1",), tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")
    )
    with pytest.raises(ConfigError, match="MODEL_RUNNER_TLS_CERT"):
        server.run(config)

"""Checks of docker-model-rpc-server.service: llama.cpp's RPC worker as a service.

rpc-server has no authentication, so the unit must listen on loopback unless an address is
given, say so plainly, run as the service user and keep the main unit's hardening.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.processes import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "docker-model-rpc-server.service"
MAIN_UNIT = ROOT / "systemd" / "docker-model-runner.service"
ENV_FILE = ROOT / "systemd" / "docker-model-rpc-server.env"
WORKER = "/usr/libexec/docker-model-runner/rpc-server"

needs_systemd_tools = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _values(unit: Path, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", unit.read_text(encoding="utf-8"), flags=re.MULTILINE)


def _environment() -> dict[str, str]:
    return dict(value.split("=", 1) for value in _values(UNIT, "Environment"))


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    stub = root / WORKER.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n", encoding="utf-8")
    stub.chmod(0o755)
    shutil.copy(UNIT, root / "etc" / "systemd" / "system" / UNIT.name)
    return root


@needs_systemd_tools
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT.name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd_tools
def test_unit_security_exposure_is_ok_or_better(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", UNIT.name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_listens_on_loopback_unless_told_and_says_why() -> None:
    env = _environment()
    assert env["DMR_RPC_SERVER_HOST"] == "127.0.0.1"
    (exec_start,) = _values(UNIT, "ExecStart")
    assert exec_start.startswith(f"{WORKER} --host ${{DMR_RPC_SERVER_HOST}} ")
    text = UNIT.read_text(encoding="utf-8") + ENV_FILE.read_text(encoding="utf-8")
    assert text.count("NO AUTHENTICATION") >= 2
    assert "Never expose it to an open network" in text
    # The env file widens it only when an admin uncomments an explicit address.
    assert re.search(r"^#DMR_RPC_SERVER_HOST=\d", ENV_FILE.read_text(), re.MULTILINE)
    assert not re.search(r"^DMR_RPC_SERVER_HOST=", ENV_FILE.read_text(), re.MULTILINE)


def test_unit_runs_as_the_service_user_with_the_main_units_hardening() -> None:
    assert _values(UNIT, "User") == _values(MAIN_UNIT, "User") == ["docker-model-runner"]
    hardening = (
        "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem",
        "ProtectHome", "PrivateTmp", "PrivateMounts", "ProtectProc", "ProtectKernelTunables",
        "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
        "ProtectHostname", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
        "LockPersonality", "RemoveIPC", "KeyringMode", "SystemCallArchitectures",
    )  # fmt: skip
    for key in hardening:
        assert _values(UNIT, key) == _values(MAIN_UNIT, key), key
    assert "@system-service" in _values(UNIT, "SystemCallFilter")
    # The worker needs no netlink (the daemon does, to find docker0).
    assert _values(UNIT, "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6"]


def test_packages_install_the_unit_and_its_environment_file() -> None:
    rules = (ROOT / "debian" / "rules").read_text(encoding="utf-8")
    assert "systemd/docker-model-rpc-server.service \\\n\t\t$(PKG)/lib/systemd/system/" in rules
    assert "systemd/docker-model-rpc-server.env $(PKG)/etc/default/docker-model-rpc-server" in rules
    spec = (ROOT / "rpm" / "docker-model-plugin.spec").read_text(encoding="utf-8")
    assert "%{_unitdir}/docker-model-rpc-server.service\n" in spec.split("%files", 1)[1]
    assert "%{_sysconfdir}/sysconfig/docker-model-rpc-server" in spec.split("%files", 1)[1]


def test_exec_start_runs_the_real_worker_on_loopback(llama_server_bin: Path, tmp_path: Path) -> None:
    """The unit's command line, with its defaults, starts rpc-server listening on 127.0.0.1."""
    binary = llama_server_bin.parent / "rpc-server"
    if not binary.is_file():
        pytest.skip("this engine build has no rpc-server")
    env = {**_environment(), "DMR_RPC_SERVER_PORT": str(free_port())}
    (exec_start,) = _values(UNIT, "ExecStart")
    # systemd's rules: ${VAR} is one word, $VAR splits on spaces (and vanishes when empty).
    words: list[str] = []
    for word in shlex.split(exec_start):
        if word.startswith("${"):
            words.append(env[word[2:-1]])
        elif word.startswith("$"):
            words += env.get(word[1:], "").split()
        else:
            words.append(word)
    words[0] = str(binary)
    with open(tmp_path / "rpc.log", "wb") as log:
        proc = subprocess.Popen(
            words, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "GGML_NO_BACKTRACE": "1"},
        )  # fmt: skip
    try:
        port = int(env["DMR_RPC_SERVER_PORT"])

        def listening() -> list[str]:
            return [
                conn.laddr.ip
                for conn in psutil.Process(proc.pid).net_connections(kind="inet")
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
            ]

        assert wait_until(lambda: bool(listening()), timeout=15), (tmp_path / "rpc.log").read_text()
        assert listening() == ["127.0.0.1"]
        assert "WARNING" not in (tmp_path / "rpc.log").read_text()
    finally:
        stop_process(proc, grace_seconds=5.0)

"""Packaging of secrets, logs and dependency floors (issue 12, "Packaging").

Static checks of the package files, plus the logrotate snippet run by the real logrotate in a
scratch directory. ``make package-test`` checks the installed result (modes, owners, a
reinstall, ``logrotate --debug`` and a forced rotation of the service's real logs).
"""

from __future__ import annotations

import getpass
import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator import logfiles
from orchestrator.settings import SETTINGS_BY_NAME

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "docker-model-runner"
POSTINST = ROOT / "debian" / "docker-model-plugin.postinst"
POSTRM = ROOT / "debian" / "docker-model-plugin.postrm"
RULES = ROOT / "debian" / "rules"
CONTROL = ROOT / "debian" / "control"
SPEC = ROOT / "rpm" / "docker-model-plugin.spec"
LOGROTATE = ROOT / "systemd" / f"{SERVICE}.logrotate"
UNIT = ROOT / "systemd" / f"{SERVICE}.service"
CONFIG_FILES = (f"/etc/default/{SERVICE}", f"/etc/{SERVICE}/config.yaml")

LOGROTATE_BIN = shutil.which("logrotate") or (
    "/usr/sbin/logrotate" if Path("/usr/sbin/logrotate").exists() else None
)
needs_logrotate = pytest.mark.skipif(
    LOGROTATE_BIN is None, reason="logrotate not installed (apt-get install logrotate)"
)


# --- configuration files hold secrets: 0640 root:docker-model-runner ---------------------------


def test_debian_postinst_gives_the_config_files_to_the_service_group() -> None:
    text = POSTINST.read_text(encoding="utf-8")
    # After #DEBHELPER#: that is where systemd-sysusers creates the group.
    debhelper = text.index("#DEBHELPER#")
    override = text.index("dpkg-statoverride --update --add root docker-model-runner 0640")
    assert debhelper < override
    for path in CONFIG_FILES:
        assert path in text[debhelper:]
    # An admin's choice wins: an existing override, or an owner/mode changed by hand.
    assert 'dpkg-statoverride --list "$file"' in text
    assert '= "root:root 644"' in text
    assert os.access(POSTINST, os.X_OK)


@pytest.mark.parametrize("script", [POSTINST, POSTRM], ids=lambda path: path.name)
def test_debhelper_marker_appears_once(script: Path) -> None:
    """debhelper replaces every occurrence, comments included: twice would run its snippets
    (systemd-sysusers, the service start) twice."""
    assert script.read_text(encoding="utf-8").count("#DEBHELPER#") == 1


def test_debian_postrm_drops_the_overrides_on_purge() -> None:
    text = POSTRM.read_text(encoding="utf-8")
    purge = text[text.index('"$1" = "purge"') : text.index("#DEBHELPER#")]
    assert 'dpkg-statoverride --remove "$file"' in purge
    for path in CONFIG_FILES:
        assert path in purge


def test_rpm_installs_the_config_files_0640_with_the_group_created_first() -> None:
    text = SPEC.read_text(encoding="utf-8")
    for path in ("%{_sysconfdir}/%{service}/config.yaml", "%{_sysconfdir}/sysconfig/%{service}"):
        assert re.search(
            rf"^%config\(noreplace\) %attr\(0640,root,%{{service}}\) {re.escape(path)}$",
            text,
            re.MULTILINE,
        ), path
    pre = text[text.index("\n%pre\n") : text.index("\n%post\n")]
    assert "%sysusers_create_compat" in pre


def test_environment_and_config_files_say_they_hold_secrets() -> None:
    env = (ROOT / "systemd" / f"{SERVICE}.env").read_text(encoding="utf-8")
    assert "0640" in env and "HF_TOKEN" in env
    config = (ROOT / "systemd" / "config.yaml").read_text(encoding="utf-8")
    assert "0640 root:docker-model-runner" in config and "#api_key:" in config


# --- logs: in-process caps plus a logrotate snippet ---------------------------------------------


def test_log_settings_match_the_logging_defaults() -> None:
    assert SETTINGS_BY_NAME["log_max_size"].default == logfiles.DEFAULT_MAX_BYTES
    assert SETTINGS_BY_NAME["log_backups"].default == logfiles.DEFAULT_BACKUPS
    assert SETTINGS_BY_NAME["log_max_size"].env == "DMR_LOG_MAX_SIZE"
    assert SETTINGS_BY_NAME["log_max_size"].convert("20MiB") == 20 * 1024 * 1024
    assert SETTINGS_BY_NAME["max_load_size"].convert("256GiB") == 256 << 30


@pytest.mark.parametrize(
    ("packaging_file", "needle"),
    [
        (RULES, f"systemd/{SERVICE}.logrotate"),
        (RULES, f"$(PKG)/etc/logrotate.d/{SERVICE}"),
        (SPEC, "%{buildroot}%{_sysconfdir}/logrotate.d/%{service}"),
        (SPEC, "%config(noreplace) %{_sysconfdir}/logrotate.d/%{service}\n"),
    ],
)
def test_both_packages_install_the_logrotate_snippet(packaging_file: Path, needle: str) -> None:
    assert needle in packaging_file.read_text(encoding="utf-8")


def _logrotate_body() -> dict[str, str]:
    text = LOGROTATE.read_text(encoding="utf-8")
    (body,) = re.findall(r"^/var/log/docker-model-runner/\*\.log \{\n(.*?)^\}", text, re.M | re.S)
    directives = [line.split(None, 1) for line in body.splitlines() if line.strip()]
    return {words[0]: words[1] if len(words) > 1 else "" for words in directives}


def test_logrotate_snippet_suits_the_daemon() -> None:
    body = _logrotate_body()
    # The engine writes through a descriptor nobody can reopen: copy and truncate in place.
    assert "copytruncate" in body
    # Rotate as the owner of the directory, never as root in a directory a user controls.
    assert body["su"] == f"{SERVICE} {SERVICE}"
    # dateext: names never collide with the daemon's own <name>.log.N rotations.
    assert "dateext" in body and "%s" in body["dateformat"]
    assert {"missingok", "notifempty", "compress"} <= set(body)


def _scratch_snippet(tmp_path: Path) -> tuple[Path, Path]:
    """Return the snippet rewritten for ``tmp_path/logs`` and the current user, and its dir."""
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    text = LOGROTATE.read_text(encoding="utf-8")
    text = text.replace(f"/var/log/{SERVICE}/", f"{logs}/")
    text = text.replace(f"su {SERVICE} {SERVICE}", f"su {user} {group}")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text, encoding="utf-8")
    conf.chmod(0o644)
    return conf, logs


def _logrotate(conf: Path, state: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    assert LOGROTATE_BIN is not None
    return subprocess.run(
        [LOGROTATE_BIN, *flags, "--state", str(state), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_logrotate
def test_logrotate_debug_parses_the_snippet(tmp_path: Path) -> None:
    conf, logs = _scratch_snippet(tmp_path)
    (logs / "inference.log").write_text("line\n", encoding="utf-8")
    result = _logrotate(conf, tmp_path / "state", "--debug", "--force")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert "copying " in output and "truncating " in output, output


@needs_logrotate
def test_logrotate_rotates_beside_the_daemons_own_backups(tmp_path: Path) -> None:
    """A forced rotation copies each log to a dated name, empties it in place, and leaves the
    daemon's ``.log.1`` backups and empty logs alone."""
    conf, logs = _scratch_snippet(tmp_path)
    (logs / "inference.log").write_text("daemon line\n", encoding="utf-8")
    (logs / "inference.log.1").write_text("older, rotated by the daemon\n", encoding="utf-8")
    (logs / "engine-abc-completion.log").write_text("engine line\n", encoding="utf-8")
    (logs / "engine-def-embedding.log").write_text("", encoding="utf-8")
    # The engine keeps writing through its own O_APPEND descriptor across the rotation.
    with open(logs / "engine-abc-completion.log", "ab") as engine:
        result = _logrotate(conf, tmp_path / "state", "--force")
        assert result.returncode == 0, result.stdout + result.stderr
        engine.write(b"after the rotation\n")
    names = sorted(path.name for path in logs.iterdir())
    dated = re.compile(r"^(inference|engine-abc-completion)\.log-\d{8}-\d+$")
    assert len([name for name in names if dated.match(name)]) == 2, names
    assert (logs / "inference.log").read_bytes() == b""
    assert (logs / "engine-abc-completion.log").read_bytes() == b"after the rotation\n"
    assert (logs / "inference.log.1").read_text() == "older, rotated by the daemon\n"
    assert "engine-def-embedding.log" in names and not any(
        name.startswith("engine-def-embedding.log-") for name in names
    )
    (rotated,) = logs.glob("inference.log-*")
    assert rotated.read_text() == "daemon line\n"


# --- dependency floors ---------------------------------------------------------------------------


def _relation(field_text: str, package: str) -> str:
    match = re.search(rf"\b{re.escape(package)} \(>= ([^)]+)\)", field_text)
    assert match, f"{package} has no version floor"
    return match.group(1)


def _dpkg_version_at_least(version: str, floor: str) -> bool:
    if shutil.which("dpkg") is None:  # pragma: no cover - the packaging tests run on Debian
        pytest.skip("dpkg not installed")
    return (
        subprocess.run(["dpkg", "--compare-versions", version, "ge", floor], check=False).returncode
        == 0
    )


@pytest.mark.parametrize(
    ("package", "patched"),
    [
        # Debian 12 revisions whose changelog names the fixes (see debian/control).
        ("python3-gunicorn", "20.1.0-6+deb12u1"),
        ("python3-urllib3", "1.26.12-1+deb12u4"),
    ],
)
def test_debian_floors_require_the_patched_revisions(package: str, patched: str) -> None:
    text = CONTROL.read_text(encoding="utf-8")
    source, binary = text.split("\nPackage: ", 1)
    for paragraph in (source, binary):
        assert _dpkg_version_at_least(_relation(paragraph, package), patched), paragraph


def test_debian_control_says_why_unpatched_requests_cves_do_not_reach_us() -> None:
    text = CONTROL.read_text(encoding="utf-8")
    for cve in ("CVE-2023-32681", "CVE-2024-35195", "CVE-2024-47081"):
        assert cve in text


def test_unit_never_lets_requests_read_a_netrc() -> None:
    """CVE-2024-47081 (unfixed in Debian 12's python3-requests) needs a .netrc to leak."""
    assert "\nEnvironment=NETRC=/dev/null\n" in UNIT.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("distribution", "floor"),
    [("gunicorn", (23, 0, 0)), ("requests", (2, 33, 0)), ("urllib3", (2, 7, 0))],
)
def test_pip_floors_are_above_the_known_fixes(distribution: str, floor: tuple[int, ...]) -> None:
    from setuptools.config.setupcfg import read_configuration

    requirements = read_configuration(str(ROOT / "setup.cfg"))["options"]["install_requires"]
    (requirement,) = [item for item in requirements if re.match(rf"{distribution}\b", item)]
    match = re.fullmatch(rf"{distribution}>=([\d.]+)", requirement)
    assert match, requirement
    assert tuple(int(part) for part in match.group(1).split(".")) >= floor

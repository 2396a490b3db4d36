"""Static checks of the packaging files: the unit, its snippets, the config and the package specs.

These run in the default suite (a few seconds). The builds and the installed-service smoke test
are ``make package-test`` (packaging/package-test.sh), which needs root and minutes.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator import __version__
from orchestrator.server import graceful_timeout_seconds
from orchestrator.settings import SETTINGS, Config, load

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "docker-model-runner.service"
SERVICE_USER = "docker-model-runner"

needs_systemd_tools = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or shutil.which("systemd-sysusers") is None,
    reason="systemd-analyze/systemd-sysusers not installed (apt-get install systemd)",
)


def _unit_values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(encoding="utf-8"), flags=re.MULTILINE)


def _fake_root(tmp_path: Path) -> Path:
    """Return a root with the system's units, a stub ExecStart binary and our unit installed."""
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    stub = root / "usr" / "bin" / "model-runner"
    stub.write_text("#!/bin/sh\n", encoding="utf-8")
    stub.chmod(0o755)
    shutil.copy(UNIT, root / "etc" / "systemd" / "system" / UNIT.name)
    return root


@needs_systemd_tools
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd_tools
def test_unit_security_exposure_is_ok_or_better(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    # systemd's levels: SAFE below 1.0, OK 1.0-4.9, MEDIUM from 5.0. The unit scores 1.8;
    # a limit of 2.0 catches a hardening line lost by accident.
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_keeps_gpu_device_nodes_reachable() -> None:
    text = UNIT.read_text(encoding="utf-8")
    for setting in (
        "PrivateDevices=yes",
        "DevicePolicy=",
        "PrivateUsers=yes",
        "MemoryDenyWriteExecute=yes",
    ):
        assert f"\n{setting}" not in text, setting


def test_unit_process_model() -> None:
    assert _unit_values("Type") == ["notify"]
    assert _unit_values("KillMode") == ["mixed"]
    assert _unit_values("Restart") == ["on-failure"]
    assert _unit_values("ExecStart") == ["/usr/bin/model-runner serve"]
    # gunicorn workers setuid() to their own uid at boot: @privileged must stay allowed.
    assert all("@privileged" not in value for value in _unit_values("SystemCallFilter"))


def test_stop_timeout_exceeds_the_daemon_shutdown_deadline() -> None:
    (timeout,) = _unit_values("TimeoutStopSec")
    deadline = graceful_timeout_seconds(Config())
    assert float(timeout.rstrip("s")) >= deadline + 10, (timeout, deadline)


def test_unit_points_settings_at_its_directories() -> None:
    env = dict(value.split("=", 1) for value in _unit_values("Environment"))
    assert env["MODELS_PATH"] == "%S/docker-model-runner/models"
    assert env["DMR_RUNTIME_DIR"] == "%t/docker-model-runner"
    assert env["MODEL_RUNNER_LOG_DIR"] == "%L/docker-model-runner"
    assert env["DMR_CONFIG"] == "%E/docker-model-runner/config.yaml"
    assert _unit_values("StateDirectory") == ["docker-model-runner docker-model-runner/models"]
    assert _unit_values("RuntimeDirectory") == ["docker-model-runner"]
    assert _unit_values("LogsDirectory") == ["docker-model-runner"]
    assert _unit_values("EnvironmentFile")[0] == "-/etc/default/docker-model-runner"


@needs_systemd_tools
def test_sysusers_and_tmpfiles_create_user_and_directories(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "docker-model-runner.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text(encoding="utf-8")
    assert re.search(
        rf"^{SERVICE_USER}:x:\d+:\d+:[^:]*:/var/lib/{SERVICE_USER}:/usr/sbin/nologin$",
        passwd,
        re.MULTILINE,
    )
    group = (tmp_path / "etc" / "group").read_text(encoding="utf-8")
    assert re.search(rf"^render:x:\d+:{SERVICE_USER}$", group, re.MULTILINE)
    # systemd-tmpfiles resolves owners through the host's NSS, not --root: check the entries.
    lines = [
        line.split()
        for line in (SYSTEMD / "docker-model-runner.tmpfiles")
        .read_text(encoding="utf-8")
        .splitlines()
        if line and not line.startswith("#")
    ]
    assert {fields[1] for fields in lines} == {
        f"/var/lib/{SERVICE_USER}",
        f"/var/lib/{SERVICE_USER}/models",
        f"/var/log/{SERVICE_USER}",
    }
    assert all(fields[2:5] == ["0750", SERVICE_USER, SERVICE_USER] for fields in lines)


def test_default_config_is_all_comments_and_documents_every_setting() -> None:
    text = (SYSTEMD / "config.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) is None
    for setting in SETTINGS:
        assert re.search(rf"^#{setting.name}: ", text, re.MULTILINE), setting.name
        assert setting.env in text, setting.env


def test_default_config_examples_are_valid(tmp_path: Path) -> None:
    text = (SYSTEMD / "config.yaml").read_text(encoding="utf-8")
    uncommented = tmp_path / "config.yaml"
    uncommented.write_text(re.sub(r"^#(\w+: )", r"\1", text, flags=re.MULTILINE), encoding="utf-8")
    config = load(config_file=str(uncommented), environ={})
    assert config.models_path == "/var/lib/docker-model-runner/models"
    assert config.origins == ("http://localhost:3000", "https://myapp.example.com")


def test_environment_file_names_only_known_variables() -> None:
    text = (SYSTEMD / "docker-model-runner.env").read_text(encoding="utf-8")
    names = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    known = {setting.env for setting in SETTINGS} | {"HF_TOKEN", "HTTPS_PROXY", "NO_PROXY"}
    assert {"DMR_RUNNER_PORT", "DMR_ORIGINS", "LLAMA_SERVER_PATH"} <= names
    assert names <= known, names - known
    # Shipped commented out: the defaults live in one place (settings.py).
    assert not re.search(r"^[A-Z]", text, flags=re.MULTILINE)


def test_package_versions_match_the_project() -> None:
    changelog = (ROOT / "debian" / "changelog").read_text(encoding="utf-8")
    assert changelog.startswith(f"docker-model-runner ({__version__}) ")
    spec = (ROOT / "rpm" / "docker-model-plugin.spec").read_text(encoding="utf-8")
    assert re.search(rf"^Version:\s+{re.escape(__version__)}$", spec, re.MULTILINE)


@pytest.mark.parametrize(
    ("packaging_file", "installed"),
    [
        ("debian/rules", "lib/systemd/system/docker-model-runner.service"),
        ("debian/rules", "usr/lib/sysusers.d/docker-model-runner.conf"),
        ("debian/rules", "usr/lib/tmpfiles.d/docker-model-runner.conf"),
        ("debian/rules", "etc/docker-model-runner/config.yaml"),
        ("debian/rules", "etc/default/docker-model-runner"),
        ("rpm/docker-model-plugin.spec", "%{_unitdir}/%{service}.service"),
        ("rpm/docker-model-plugin.spec", "%{_sysusersdir}/%{service}.conf"),
        ("rpm/docker-model-plugin.spec", "%{_tmpfilesdir}/%{service}.conf"),
        ("rpm/docker-model-plugin.spec", "%{_sysconfdir}/%{service}/config.yaml"),
        ("rpm/docker-model-plugin.spec", "%{_sysconfdir}/sysconfig/%{service}"),
    ],
)
def test_both_packages_install_every_systemd_file(packaging_file: str, installed: str) -> None:
    assert installed in (ROOT / packaging_file).read_text(encoding="utf-8")


# --- Dependencies: every third-party module orchestrator imports is packaged ----------------------
# The builds run the installed entry points (debian/rules' import check and help2man, the spec's
# %install and %check), so each such module is a build dependency as well as a runtime one. The
# clean-room builds (packaging/build-deb.sh, build-rpm.sh) fail when one is missing; these tests
# say which, in a second.

# Top-level module -> Debian 12 package, and -> the PyPI distribution the spec names as
# python3dist(...). A new third-party import fails test_every_third_party_import_is_mapped until
# it is added here and to the package files.
DEBIAN_PACKAGE = {
    "falcon": "python3-falcon",
    "gunicorn": "python3-gunicorn",
    "prometheus_client": "python3-prometheus-client",
    "psutil": "python3-psutil",
    "requests": "python3-requests",
    "rich": "python3-rich",
    "urllib3": "python3-urllib3",
    "yaml": "python3-yaml",
}
PYPI_DISTRIBUTION = {module: module for module in DEBIAN_PACKAGE} | {
    "prometheus_client": "prometheus-client",  # Fedora normalises python3dist() names
    "yaml": "pyyaml",
}
# Imported only when present, so no package depends on them: module -> PyPI distribution.
OPTIONAL_MODULES = {
    # nvidia-ml-py: Debian 12 has no package for it (`apt-cache policy python3-pynvml`: no
    # candidate); orchestrator/memory/nvml.py loads it with importlib.import_module and budgets
    # RAM only without it.
    "pynvml": "nvidia-ml-py",
}
SPEC = ROOT / "rpm" / "docker-model-plugin.spec"
RPM_BUILDDEPS_MAP = ROOT / "rpm" / "builddeps-debian.txt"


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Return the top-level modules imported by statements, and by import_module("...")."""
    static: set[str] = set()
    dynamic: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            static.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            static.add(node.module.partition(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            dynamic.add(node.args[0].value.partition(".")[0])
    return static, dynamic


def _third_party_imports() -> tuple[set[str], set[str]]:
    """Return orchestrator's third-party modules: imported by statements, and dynamically."""
    static: set[str] = set()
    dynamic: set[str] = set()
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        found_static, found_dynamic = _imports(ast.parse(path.read_text(encoding="utf-8")))
        static |= found_static
        dynamic |= found_dynamic
    local = set(sys.stdlib_module_names) | {"orchestrator", "__future__"}
    return static - local, dynamic - local


def _deb822_field(path: Path, field: str, package: str | None = None) -> str:
    """Return a field of debian/control's source paragraph, or of binary ``package``'s."""
    for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        fields = dict(
            re.findall(r"^([\w-]+):((?:.*)(?:\n[ \t].*)*)", paragraph, flags=re.MULTILINE)
        )
        if package is None and "Source" in fields:
            return fields.get(field, "")
        if package is not None and fields.get("Package", "").strip() == package:
            return fields.get(field, "")
    raise AssertionError(f"no paragraph for {package or 'the source'} in {path}")


def _relations(value: str) -> dict[str, str]:
    """Return {package: version constraint} of a Depends-style field (alternatives flattened)."""
    relations = {}
    for item in re.split(r"[,|]", value):
        match = re.match(r"\s*([a-z0-9][a-z0-9+.-]+)\s*(?:\(([^)]*)\))?", item)
        if match:
            relations[match.group(1)] = " ".join((match.group(2) or "").split())
    return relations


def _spec_relations(tag: str) -> dict[str, str]:
    """Return {name: version constraint} of the spec's ``tag`` lines (BuildRequires, Requires)."""
    relations = {}
    for value in re.findall(rf"^{tag}:\s*(.*)$", SPEC.read_text(encoding="utf-8"), re.MULTILINE):
        # "a >= 1, b c": names, each optionally followed by an operator and a version.
        for name, constraint in re.findall(r"([^\s,<>=]+)((?:\s*[<>=]+\s*[^\s,]+)?)", value):
            relations[name] = " ".join(re.sub(r"([<>=]+)", r" \1 ", constraint).split())
    return relations


def _rpm_builddeps_map() -> dict[str, list[str]]:
    mapping = {}
    for line in RPM_BUILDDEPS_MAP.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, *packages = line.split()
            assert name not in mapping, f"{name} is mapped twice"
            assert packages, f"{name} maps to nothing; write '-' and say why"
            mapping[name] = [] if packages == ["-"] else packages
    return mapping


def _required_modules() -> list[str]:
    static, _dynamic = _third_party_imports()
    return sorted(static - set(OPTIONAL_MODULES))


def test_every_third_party_import_is_mapped() -> None:
    static, dynamic = _third_party_imports()
    unmapped = (static | dynamic) - set(DEBIAN_PACKAGE) - set(OPTIONAL_MODULES)
    assert not unmapped, f"add {sorted(unmapped)} to DEBIAN_PACKAGE and to the package files"
    # The finder works: these are imported by plain statements today.
    assert {"falcon", "gunicorn", "psutil", "requests", "urllib3", "yaml"} <= static


def test_optional_modules_are_only_imported_when_present() -> None:
    static, dynamic = _third_party_imports()
    assert not static & set(OPTIONAL_MODULES), (
        "import optional modules with importlib, not `import`"
    )
    assert "pynvml" in dynamic


@pytest.mark.parametrize("field", ["Build-Depends", "Depends"])
def test_debian_control_lists_every_imported_module(field: str) -> None:
    package = None if field == "Build-Depends" else "docker-model-plugin"
    relations = _relations(_deb822_field(ROOT / "debian" / "control", field, package))
    missing = [DEBIAN_PACKAGE[module] for module in _required_modules()]
    missing = [name for name in missing if name not in relations]
    assert not missing, f"debian/control's {field} lacks {missing}"


@pytest.mark.parametrize("tag", ["BuildRequires", "Requires"])
def test_rpm_spec_lists_every_imported_module(tag: str) -> None:
    relations = _spec_relations(tag)
    wanted = [f"python3dist({PYPI_DISTRIBUTION[module]})" for module in _required_modules()]
    missing = [name for name in wanted if name not in relations]
    assert not missing, f"the spec's {tag} lacks {missing}"


def _upstream_floor(constraint: str) -> str:
    """Return a Debian constraint without the Debian revision (``>= 20.1.0-6+deb12u1`` ->
    ``>= 20.1.0``): rpm cannot express Debian's security revisions (see the spec)."""
    return re.sub(r"(\+dfsg\S*|-[^-\s]+)$", "", constraint)


def test_version_floors_agree_between_control_and_spec() -> None:
    build_depends = _relations(_deb822_field(ROOT / "debian" / "control", "Build-Depends"))
    depends = _relations(
        _deb822_field(ROOT / "debian" / "control", "Depends", "docker-model-plugin")
    )
    build_requires = _spec_relations("BuildRequires")
    requires = _spec_relations("Requires")
    for module in _required_modules():
        debian, rpm = DEBIAN_PACKAGE[module], f"python3dist({PYPI_DISTRIBUTION[module]})"
        assert build_depends.get(debian) == depends.get(debian), debian
        floors = [
            _upstream_floor(build_depends.get(debian, "missing")),
            _upstream_floor(depends.get(debian, "missing")),
            build_requires.get(rpm, "missing"),
            requires.get(rpm, "missing"),
        ]
        assert len(set(floors)) == 1, (
            module,
            "Build-Depends, Depends, BuildRequires, Requires",
            floors,
        )


def test_rpm_debian_mapping_covers_exactly_the_build_requires() -> None:
    mapping = _rpm_builddeps_map()
    build_requires = set(_spec_relations("BuildRequires"))
    assert not any("%" in name for name in build_requires), "build-rpm.sh does not expand macros"
    assert build_requires - set(mapping) == set(), "add these to rpm/builddeps-debian.txt"
    assert set(mapping) - build_requires == set(), "stale lines in rpm/builddeps-debian.txt"


def test_rpm_debian_mapping_agrees_with_debian_control() -> None:
    mapping = _rpm_builddeps_map()
    build_depends = _relations(_deb822_field(ROOT / "debian" / "control", "Build-Depends"))
    for module in _required_modules():
        assert mapping[f"python3dist({PYPI_DISTRIBUTION[module]})"] == [DEBIAN_PACKAGE[module]]
    # Every Debian package of the mapping that debian/control also needs is named the same there.
    for name in ("python3-setuptools", "python3-wheel", "help2man"):
        assert name in build_depends
        assert any(name in packages for packages in mapping.values())


def test_no_package_requires_an_optional_distribution() -> None:
    """setup.cfg may name one for pip; rpm's Python dependency generator must not require it."""
    spec = SPEC.read_text(encoding="utf-8")
    (exclude,) = re.findall(r"^%global __requires_exclude (.*)$", spec, re.MULTILINE)
    depends = _relations(
        _deb822_field(ROOT / "debian" / "control", "Depends", "docker-model-plugin")
    )
    for distribution in OPTIONAL_MODULES.values():
        # The spec's regex, with rpm's macro escaping (\\ -> \) undone, matches both forms.
        pattern = re.compile(exclude.replace("\\\\", "\\"))
        assert pattern.match(f"python3dist({distribution})"), exclude
        assert pattern.match(f"python3.11dist({distribution})"), exclude
        assert f"python3dist({distribution})" not in _spec_relations("Requires")
        assert not any(distribution in name for name in depends)

"""packaging/unit_exec.py: how package-test.sh reads the unit to start the daemon like systemd."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load_unit_exec() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unit_exec", ROOT / "packaging" / "unit_exec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


unit_exec = _load_unit_exec()


def _write_unit(tmp_path: Path, env_file: Path) -> Path:
    unit = tmp_path / "x.service"
    unit.write_text(
        "[Unit]\nDescription=x\n\n[Service]\n"
        "Environment=MODELS_PATH=%S/x/models\n"
        'Environment="DMR_ORIGINS=a,b" DMR_RUNNER_PORT=1\n'
        f"EnvironmentFile=-{tmp_path / 'missing'}\n"
        f"EnvironmentFile=-{env_file}\n"
        "StateDirectory=x x/models\nStateDirectoryMode=0750\nRuntimeDirectory=x\n"
        "ExecStart=/usr/bin/model-runner \\\n  serve\n",
        encoding="utf-8",
    )
    return unit


def test_environment_file_overrides_environment_lines(tmp_path: Path) -> None:
    env_file = tmp_path / "default"
    env_file.write_text(
        '# comment\nDMR_RUNNER_PORT="2345"\n#DMR_ORIGINS=ignored\n', encoding="utf-8"
    )
    env = unit_exec.environment(_write_unit(tmp_path, env_file))
    assert env["DMR_RUNNER_PORT"] == "2345"
    assert env["DMR_ORIGINS"] == "a,b"
    assert env["MODELS_PATH"] == "/var/lib/x/models"


def test_directories_and_continued_exec_start(tmp_path: Path) -> None:
    unit = _write_unit(tmp_path, tmp_path / "none")
    assert unit_exec.directories(unit) == [
        ("/var/lib/x", "0750"),
        ("/var/lib/x/models", "0750"),
        ("/run/x", "0755"),
    ]
    assert [value.split() for value in unit_exec.values(unit, "ExecStart")] == [
        ["/usr/bin/model-runner", "serve"]
    ]


def test_real_unit_resolves_every_specifier() -> None:
    unit = ROOT / "systemd" / "docker-model-runner.service"
    for key in ("Environment", "EnvironmentFile", "ExecStart"):
        for value in unit_exec.values(unit, key):
            assert "%" not in value, value

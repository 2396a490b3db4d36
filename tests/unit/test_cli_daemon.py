"""The model-runner command: help text and usage errors."""

from __future__ import annotations

import pytest

from orchestrator.cli import main
from orchestrator.settings import SETTINGS


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["package", "--help"]])
def test_help_renders(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "usage: model-runner" in out
    if argv[0] == "serve":
        for setting in SETTINGS:
            assert setting.flag in out and setting.env in out


def test_bad_setting_value_exits_with_usage_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "not-a-port"]) == 2
    assert "port" in capsys.readouterr().err


def test_package_of_a_missing_file_is_a_clear_error(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["package", "--gguf", "/nonexistent/model.gguf", "--models-path", str(tmp_path), "ai/x"])
    assert status == 1
    assert "model.gguf" in capsys.readouterr().err

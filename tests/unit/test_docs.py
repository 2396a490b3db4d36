"""README documents every setting and every error code (datasette's test_docs idea)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.settings import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _all_error_classes() -> list[type[errors.OrchestratorError]]:
    found: list[type[errors.OrchestratorError]] = []
    pending = [errors.OrchestratorError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.name)
def test_setting_has_a_readme_row(setting: object) -> None:
    row = next((line for line in README.splitlines() if line.startswith(f"| `{setting.name}` |")), None)  # type: ignore[attr-defined]
    assert row is not None, f"README's settings table lacks {setting.name}"  # type: ignore[attr-defined]
    assert f"`{setting.env}`" in row and f"`{setting.flag}`" in row  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", _all_error_classes(), ids=lambda cls: cls.__name__)
def test_error_code_has_a_readme_row(cls: type[errors.OrchestratorError]) -> None:
    assert f"| {cls.status} | `{cls.code}` |" in README, f"README lacks {cls.status} {cls.code}"

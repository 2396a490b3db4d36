"""The allow-list's idea of which flags take a value is this engine build's own (its --help)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from orchestrator.runners.engineflags import ALLOWED_FLAGS, SWITCH_FLAGS

pytestmark = pytest.mark.llama_server


def help_arity(help_text: str) -> dict[str, bool]:
    """Map each flag in llama-server's ``--help`` to whether it takes a value.

    A help line starts with the flag's spellings, comma-separated, the last one followed by a
    value hint (``N``, ``TYPE``, ``[on|off|auto]``) when the flag takes one; two spaces end it.
    """
    arity: dict[str, bool] = {}
    for line in help_text.splitlines():
        if not line.startswith("-") or line.startswith("---"):
            continue
        left = re.split(r"\s{2,}", re.sub(r",\s+", ", ", line.strip()))[0]
        parts = [part.split(" ", 1) for part in left.split(", ")]
        takes_value = any(len(part) > 1 for part in parts)
        for part in parts:
            arity[part[0]] = takes_value
    return arity


def test_switches_and_value_flags_match_the_engines_help(llama_server_bin: Path) -> None:
    result = subprocess.run(
        [str(llama_server_bin), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    arity = help_arity(result.stdout + result.stderr)
    unknown = sorted(ALLOWED_FLAGS - arity.keys())
    assert not unknown, f"allowed flags this build does not know: {unknown}"
    wrong = sorted(flag for flag in ALLOWED_FLAGS if arity[flag] == (flag in SWITCH_FLAGS))
    assert not wrong, f"flags whose arity differs from --help: {wrong}"
    assert SWITCH_FLAGS <= ALLOWED_FLAGS

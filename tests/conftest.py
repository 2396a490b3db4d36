"""Fixtures shared by every test layer: the engine, the real model, scratch stores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from orchestrator.engine import find_engine
from orchestrator.errors import EngineNotFoundError

pytest_plugins = [
    "tests.support.registry_fixtures",
    "tests.support.daemon_fixtures",
]

# tests/image needs the image that `make image` builds (minutes): `make test-image` builds it and
# runs them with DMR_TEST_IMAGE set (.ci/run calls it after `make test`).
collect_ignore = [] if os.environ.get("DMR_TEST_IMAGE") else ["image"]


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """Return the real llama-server binary, or skip when this machine has none."""
    try:
        return find_engine(os.environ.get("LLAMA_SERVER_PATH", ""))
    except EngineNotFoundError as ex:
        pytest.skip(f"llama-server is not available: {ex.message}")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Return the real SmolLM2-135M GGUF (bin/provision-model), or skip when absent."""
    candidates = [os.environ.get("DMR_TEST_MODEL", "")]
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    candidates.append(str(Path(cache_home) / "model-runner/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("the SmolLM2 test model is not available; run bin/provision-model")


@pytest.fixture(scope="session")
def docker_registry_bin() -> str:
    """Return Debian's docker-registry binary, or skip when it is not installed."""
    path = shutil.which("docker-registry")
    if path is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    return path

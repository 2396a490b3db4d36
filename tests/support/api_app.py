"""Build the real Falcon app for component tests: real Store, real Scheduler, fake engine.

The store holds a tiny synthetic GGUF model (``ai/tiny:latest``); the scheduler starts
``tests/fakes/fake_llama_server.py`` as its engine, so inference goes through the whole path
(resolve, acquire, proxy, stream) in milliseconds. Runtime directories live under a short
``/tmp/dmr-*`` path because a Unix socket path holds at most 107 bytes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import falcon
import falcon.testing

from orchestrator.app import create_app
from orchestrator.runners.scheduler import Scheduler
from orchestrator.settings import Config
from orchestrator.store.builder import build_gguf_artifact, store_artifact
from orchestrator.store.records import ModelRecord
from orchestrator.store.store import Store
from tests.support.gguf_files import write_llama_model

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = REPO / "tests" / "fakes" / "fake_llama_server.py"
TINY_TAG = "ai/tiny:latest"
ERROR_KEYS = {"message", "type", "param", "code"}


@dataclasses.dataclass
class ApiHarness:
    """An app wired to a real store and scheduler in a scratch directory."""

    app: falcon.App
    client: falcon.testing.TestClient
    store: Store
    scheduler: Scheduler
    record: ModelRecord
    workdir: Path
    config: Config

    def close(self) -> None:
        """Stop every runner and remove the scratch directory."""
        self.scheduler.shutdown(grace_seconds=2.0)
        shutil.rmtree(self.workdir, ignore_errors=True)


def add_tiny_model(store: Store, workdir: Path, tags: tuple[str, ...] = (TINY_TAG,)) -> ModelRecord:
    """Package a tiny synthetic GGUF model into ``store`` under ``tags``."""
    path = write_llama_model(workdir / "tiny.gguf")
    artifact = build_gguf_artifact(path, created=datetime(2025, 1, 1, tzinfo=UTC))
    return store_artifact(store, artifact, tags)


def write_engine_wrapper(directory: Path) -> Path:
    """Write ``<directory>/llama-server``: the fake engine, answering ``--version`` itself.

    ``create_app`` looks for an engine in ``llama_server_path`` (for ``/engines/status`` and to
    refuse inference without one); this makes that lookup independent of a real build.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "llama-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then\n'
        '  echo "version: 0.0.0-fake (build 0, commit fake)" >&2; exit 0\n'
        "fi\n"
        f'exec "{sys.executable}" "{FAKE_ENGINE}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def build_harness(**settings: Any) -> ApiHarness:
    """Return a harness; ``settings`` override :class:`Config` fields."""
    workdir = Path(tempfile.mkdtemp(prefix="dmr-", dir="/tmp"))
    engine = write_engine_wrapper(workdir / "engine")
    values: dict[str, Any] = {
        "llama_server_path": str(engine.parent),
        "models_path": str(workdir / "models"),
        "runtime_dir": str(workdir / "run"),
        "log_dir": str(workdir / "logs"),
        "load_timeout_seconds": 10.0,
        "stop_grace_seconds": 2.0,
    }
    values.update(settings)
    # Falcon's test client names the server "falconframework.org": a host name like any other,
    # which the Host check would refuse (tests/component/test_host_check.py tests that check).
    values.setdefault("allowed_hosts", ("falconframework.org",))
    config = Config(**values)
    store = Store(config.store_root)
    record = add_tiny_model(store, workdir)
    (workdir / "logs").mkdir(exist_ok=True)
    scheduler = Scheduler(
        config=config,
        store=store,
        engine_path=FAKE_ENGINE,
        runtime_dir=config.runtime_path,
        log_dir=config.log_path,
    )
    scheduler.start()
    app = create_app(config, store=store, scheduler=scheduler)
    return ApiHarness(
        app=app,
        client=falcon.testing.TestClient(app),
        store=store,
        scheduler=scheduler,
        record=record,
        workdir=workdir,
        config=config,
    )


def assert_error_shape(
    result: falcon.testing.Result, status: int, code: str | None
) -> dict[str, Any]:
    """Assert ``result`` is our one error shape with ``status`` and ``code``; return the error."""
    assert result.status_code == status, result.text
    assert result.headers.get("content-type", "").startswith("application/json"), result.headers
    body = json.loads(result.text)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    first_word = error["message"].split()[0]
    # Lowercase start, unless the sentence starts with a name such as LLAMA_SERVER_PATH.
    assert not first_word[0].isupper() or first_word.isupper(), error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not None:
        assert error["code"] == code, error
    return error

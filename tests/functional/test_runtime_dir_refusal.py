"""The daemon refuses to start in a runtime directory another user created.

End to end: ``python -m orchestrator serve`` with a squatted runtime directory (mode 0777,
owned by nobody) exits with the usage status and says which directory, who owns it and what to
do, before gunicorn binds anything. No engine or model is needed: it never gets that far.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon_fixtures import REPO_ROOT
from tests.support.processes import free_port, stop_process

NOBODY = 65534
EXIT_USAGE = 2
# A daemon that (wrongly) starts is stopped after this long and the test fails.
REFUSAL_TIMEOUT_SECONDS = 20.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


@pytest.mark.parametrize("how", ["DMR_RUNTIME_DIR", "XDG_RUNTIME_DIR"])
def test_daemon_refuses_a_squatted_runtime_dir(tmp_path: Path, how: str) -> None:
    if how == "DMR_RUNTIME_DIR":
        squatted = tmp_path / "run"
        location = {"DMR_RUNTIME_DIR": str(squatted)}
    else:
        squatted = tmp_path / "xdg" / "model-runner"  # the default inside XDG_RUNTIME_DIR
        squatted.parent.mkdir(mode=0o700)
        location = {"XDG_RUNTIME_DIR": str(squatted.parent)}
    squatted.mkdir()
    squatted.chmod(0o777)
    os.chown(squatted, NOBODY, NOBODY)
    (tmp_path / "config.yaml").write_text("")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DMR_", "MODEL_RUNNER_", "NOTIFY_SOCKET", "XDG_RUNTIME_DIR"))
    }
    env.update(
        {
            "DMR_CONFIG": str(tmp_path / "config.yaml"),
            "DMR_RUNNER_PORT": str(free_port()),
            "DMR_RUNNER_HOST": "127.0.0.1",
            "MODELS_PATH": str(tmp_path / "models"),
            "MODEL_RUNNER_LOG_DIR": str(tmp_path / "logs"),
            "PYTHONUNBUFFERED": "1",
            **location,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve"],
        cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=REFUSAL_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        stop_process(proc, grace_seconds=5.0)
        pytest.fail(f"the daemon started in the squatted runtime directory {squatted}")
    text = output.decode(errors="replace")
    assert proc.returncode == EXIT_USAGE, text
    assert f"model-runner: runtime directory {str(squatted)!r}" in text
    assert "nobody" in text and "0777" in text and "DMR_RUNTIME_DIR" in text
    assert "Traceback" not in text
    assert not (squatted / "runners").exists()  # nothing of ours went into it

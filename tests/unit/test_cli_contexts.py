"""``docker model context``: the store file, the commands, and endpoint precedence."""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
import time
from pathlib import Path

import pytest

from orchestrator.modelcli import context_store
from orchestrator.modelcli import main as cli
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.context_store import ContextStore, ModelContext, TlsSettings
from orchestrator.modelcli.endpoint import (
    SOURCE_CONTEXT,
    SOURCE_DEFAULT,
    SOURCE_ENVIRONMENT,
    resolve_endpoint,
)


def run_cli(argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
    ctx = CliContext(stdout=io.StringIO(), stderr=io.StringIO(), environ=environ)
    status = cli.main(argv, ctx)
    return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"DOCKER_CONFIG": str(tmp_path / "cfg"), "HOME": str(tmp_path)}


def contexts_file(env: dict[str, str]) -> Path:
    return Path(env["DOCKER_CONFIG"]) / "model" / "contexts.json"


def test_create_use_ls_inspect_rm_round_trip(env: dict[str, str]) -> None:
    status, out, err = run_cli(
        ["context", "create", "lab", "--host", "http://10.1.2.3:12434", "--description", "GPU box"],
        env,
    )
    assert (status, out, err) == (0, 'Context "lab" created.\n', "")
    path = contexts_file(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run_cli(["context", "use", "lab"], env)[1] == 'Current context is now "lab".\n'

    status, out, _ = run_cli(["context", "ls"], env)
    assert status == 0
    assert out.splitlines() == [
        "NAME     HOST                    DESCRIPTION                           CURRENT",
        "default  http://localhost:12434  Default Docker Model Runner endpoint",
        "lab      http://10.1.2.3:12434   GPU box                               *",
    ]
    # DMR's file format, so DMR's own CLI reads the same contexts.
    document = json.loads(path.read_text())
    assert document["version"] == 1 and document["current"] == "lab"
    stored = document["contexts"]["lab"]
    assert stored["host"] == "http://10.1.2.3:12434" and stored["tls"] == {"enabled": False}
    assert stored["createdAt"].endswith("Z")

    status, out, _ = run_cli(["context", "inspect", "lab", "default"], env)
    inspected = json.loads(out)
    assert [entry["name"] for entry in inspected] == ["lab", "default"]
    assert inspected[0]["description"] == "GPU box"
    assert inspected[1]["host"] == "http://localhost:12434"

    # The selected context cannot be removed; after switching back it can.
    status, out, err = run_cli(["context", "rm", "lab"], env)
    assert status == 1 and "currently active" in err
    run_cli(["context", "use", "default"], env)
    assert "current" not in json.loads(path.read_text())
    assert run_cli(["context", "rm", "lab"], env)[:2] == (0, 'Context "lab" removed.\n')
    assert json.loads(path.read_text())["contexts"] == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["context", "create", "x"], "--host is required"),
        (["context", "create", "x", "--host", "10.0.0.1:12434"], "must include scheme and host"),
        (["context", "create", "x", "--host", "ftp://h:1"], 'unsupported scheme "ftp"'),
        (["context", "create", "default", "--host", "http://h:1"], "is reserved"),
        (["context", "create", "_bad", "--host", "http://h:1"], "invalid context name"),
        (["context", "create", "a/b", "--host", "http://h:1"], "invalid context name"),
        (["context", "create", "x", "--host", "http://h:1", "--tls-ca-cert", "/nope.pem"], "cannot read"),
        (["context", "use", "ghost"], 'context "ghost" not found'),
        (["context", "inspect", "ghost"], 'context "ghost" not found'),
        (["context", "rm", "default"], "reserved"),
    ],
)
def test_refusals(env: dict[str, str], argv: list[str], message: str) -> None:
    status, _, err = run_cli(argv, env)
    assert status in (1, 2)
    assert message in err
    assert not contexts_file(env).exists() or "contexts" in contexts_file(env).read_text()


def test_rm_reports_each_failure_and_removes_the_rest(env: dict[str, str]) -> None:
    run_cli(["context", "create", "a", "--host", "http://h:1"], env)
    status, out, err = run_cli(["context", "rm", "ghost", "a"], env)
    assert status == 1
    assert out == 'Context "a" removed.\n'
    assert 'Error: ghost: context "ghost" not found' in err
    assert "one or more contexts could not be removed" in err


def test_duplicate_name_is_refused(env: dict[str, str]) -> None:
    run_cli(["context", "create", "a", "--host", "http://h:1"], env)
    status, _, err = run_cli(["context", "create", "a", "--host", "http://h:2"], env)
    assert status == 1 and 'context "a" already exists' in err
    assert ContextStore.for_environ(env).get("a").host == "http://h:1"


def test_ls_warns_when_the_variable_overrides_the_context(env: dict[str, str]) -> None:
    status, _, err = run_cli(["context", "ls"], {**env, "MODEL_RUNNER_HOST": "http://h:9"})
    assert status == 0
    assert err == 'Warning: MODEL_RUNNER_HOST="http://h:9" overrides the active context.\n'


def test_precedence_variable_then_context_then_default(env: dict[str, str]) -> None:
    store = ContextStore.for_environ(env)
    assert resolve_endpoint(env, store=store).source == SOURCE_DEFAULT
    assert resolve_endpoint(env, store=store).base_url == "http://localhost:12434"
    store.create("lab", ModelContext(host="http://10.1.2.3:12434"))
    assert resolve_endpoint(env, store=store).source == SOURCE_DEFAULT  # created, not selected
    store.set_active("lab")
    chosen = resolve_endpoint(env, store=store)
    assert (chosen.source, chosen.context, chosen.base_url) == (
        SOURCE_CONTEXT,
        "lab",
        "http://10.1.2.3:12434",
    )
    overridden = resolve_endpoint({**env, "MODEL_RUNNER_HOST": "127.0.0.1:5000"}, store=store)
    assert (overridden.source, overridden.base_url) == (SOURCE_ENVIRONMENT, "http://127.0.0.1:5000")


def test_context_tls_settings_and_variables_override_them_one_by_one(
    env: dict[str, str], tmp_path: Path
) -> None:
    store = ContextStore.for_environ(env)
    tls = TlsSettings(enabled=True, skip_verify=True)
    store.create("secure", ModelContext(host="http://h:12444", tls=tls))
    store.set_active("secure")
    chosen = resolve_endpoint(env, store=store)
    assert chosen.base_url == "https://h:12444" and chosen.tls_verify is False
    ca = str(tmp_path / "ca.pem")
    with_ca = resolve_endpoint({**env, "MODEL_RUNNER_TLS_CA_CERT": ca}, store=store)
    assert with_ca.tls_verify == ca
    plain = resolve_endpoint({**env, "MODEL_RUNNER_TLS": "false"}, store=store)
    assert plain.base_url == "http://h:12434".replace("12434", "12444")
    checked = resolve_endpoint({**env, "MODEL_RUNNER_TLS_SKIP_VERIFY": "false"}, store=store)
    assert checked.tls_verify is True


def test_an_unreadable_contexts_file_warns_and_falls_back(env: dict[str, str]) -> None:
    path = contexts_file(env)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    warnings: list[str] = []
    chosen = resolve_endpoint(env, warn=warnings.append)
    assert chosen.source == SOURCE_DEFAULT
    assert len(warnings) == 1 and "not valid JSON" in warnings[0]
    # The commands that edit the file refuse to overwrite it (configuration error: exit 2).
    status, _, err = run_cli(["context", "create", "a", "--host", "http://h:1"], env)
    assert status == 2 and "not valid JSON" in err
    assert path.read_text() == "{not json"


def test_cli_context_client_uses_the_selected_context(env: dict[str, str]) -> None:
    store = ContextStore.for_environ(env)
    store.create("lab", ModelContext(host="unix:///run/lab.sock"))
    store.set_active("lab")
    ctx = CliContext(stdout=io.StringIO(), stderr=io.StringIO(), environ=env)
    assert ctx.client.base_url == "unix:///run/lab.sock"
    assert ctx.host_is_explicit
    ctx.close()


def test_a_stuck_lock_holder_is_an_error_after_the_deadline_not_a_hang(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_store, "LOCK_TIMEOUT_SECONDS", 0.3)
    folder = contexts_file(env).parent
    folder.mkdir(parents=True)
    fd = os.open(folder / context_store.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another command, stuck while holding it
        started = time.monotonic()
        status, _, err = run_cli(["context", "create", "a", "--host", "http://h:1"], env)
        assert time.monotonic() - started < 5
    finally:
        os.close(fd)
    assert status == 1
    assert "timed out after 0s waiting for the lock" in err and "contexts file" in err
    assert not contexts_file(env).exists()

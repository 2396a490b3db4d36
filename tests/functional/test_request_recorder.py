"""The request recorder against the real daemon, engine and model: curl, openai, ``docker model``.

The module's daemon runs with ``DMR_API_KEY``: every client sends the key (the openai client
as ``Authorization: Bearer``, the CLI from ``DMR_API_KEY``), and no record may hold it. Tests
run in file order; each says what it builds on.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
import requests

from tests.support.daemon_fixtures import MODEL, Daemon
from tests.support.docker_cli import DOCKER, docker_model, plugin_env
from tests.support.processes import stop_process

pytestmark = pytest.mark.llama_server

KEY = "dmr-recorder-test-key-5f2c"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def keyed(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon that wants the API key."""
    return daemon_factory(DMR_API_KEY=KEY)


@pytest.fixture(scope="module")
def client(keyed: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed.url("/v1"), api_key=KEY, timeout=120, max_retries=0)


def recorded(daemon: Daemon, **params: str) -> list[dict[str, Any]]:
    answer = daemon.get("/engines/requests", params=params, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert KEY not in answer.text
    body: list[dict[str, Any]] = answer.json()
    return body


class LineReader:
    """Lines of a child's stdout, with a deadline per read."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.pending = b""

    def line(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no line within {timeout}s; got {self.pending!r}")
            data = os.read(self.fd, 65536)
            if not data:
                raise EOFError(self.pending.decode(errors="replace"))
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()

    def until(self, prefix: str, timeout: float = 60.0) -> str:
        """Return the first line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(deadline - time.monotonic(), 0.1))
            if line.startswith(prefix):
                return line


def follow(daemon: Daemon, query: str = "") -> subprocess.Popen[bytes]:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    return subprocess.Popen(
        [curl, "--silent", "--no-buffer", "-H", "Accept: text/event-stream",
         "-H", f"Authorization: Bearer {KEY}", daemon.url("/engines/requests" + query)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_openai_client_requests_are_recorded_whole(client: openai.OpenAI, keyed: Daemon) -> None:
    """A streamed and a plain chat of the openai client: both recorded, the stream made whole."""
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    [group] = recorded(keyed, model=MODEL)
    assert group["model"].startswith("sha256:") and group["count"] == 2
    first, second = group["records"]
    assert first["url"] == "/v1/chat/completions" and first["status_code"] == 200
    assert first["user_agent"].startswith("OpenAI/Python")
    assert json.loads(first["request"])["stream"] is True
    final = json.loads(first["response"])
    assert final["object"] == "chat.completion"
    assert final["choices"][0]["message"]["content"] == streamed
    assert json.loads(second["response"])["id"] == plain.id
    assert first["id"] < second["id"] and first["id"].startswith(group["model"] + "_")


def test_the_recorder_needs_the_key_and_knows_models(keyed: Daemon) -> None:
    """Records hold prompts: without the key 401; an unknown model 404."""
    assert keyed.get("/engines/requests").status_code == 401
    missing = keyed.get("/engines/requests", params={"model": "ai/absent"}, headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_curl_follow_gets_existing_then_new_requests(keyed: Daemon) -> None:
    """Follow with include_existing: connected, the kept records, then each new one."""
    proc = follow(keyed, "?include_existing=true&model=ai/smollm2")
    try:
        events = LineReader(proc)
        assert events.until("event: ") == "event: connected"
        assert events.until("data: ") == 'data: {"status": "connected"}'
        assert events.until("event: ") == "event: existing_request"
        existing = json.loads(events.until("data: ")[6:])
        assert existing[0]["count"] == 1 and existing[0]["records"][0]["status_code"] == 200
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4}
        answer = keyed.post("/engines/v1/completions", json=body, headers=AUTH)
        assert answer.status_code == 200
        while events.until("event: ") != "event: new_request":
            pass
        [fresh] = json.loads(events.until("data: ")[6:])
        record = fresh["records"][0]
        assert record["url"] == "/engines/v1/completions"
        assert json.loads(record["response"])["choices"][0]["text"] == (
            answer.json()["choices"][0]["text"]
        )
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory, keyed: Daemon) -> dict[str, str]:
    """The environment of ``docker model`` commands for the keyed daemon."""
    return plugin_env(
        tmp_path_factory.mktemp("docker-config"), keyed.base_url,
        DMR_API_KEY=KEY, DOCKER_MODEL_NOHISTORY="1",
    )  # fmt: skip


def test_cli_lists_and_refuses_include_existing_alone(docker_env: dict[str, str]) -> None:
    """`docker model requests [--model]` prints the JSON array; a lone flag is refused."""
    done = docker_model(docker_env, "requests", "--model", MODEL)
    assert done.returncode == 0, done.stderr
    [group] = json.loads(done.stdout)
    assert group["count"] == 3  # two chats, one completion (tests above)
    assert KEY not in done.stdout
    assert json.loads(docker_model(docker_env, "requests").stdout)[0]["model"] == group["model"]
    refused = docker_model(docker_env, "requests", "--include-existing")
    assert refused.returncode == 1
    assert "--include-existing can only be used with --follow" in refused.stderr
    missing = docker_model(docker_env, "requests", "--model", "ai/absent")
    assert missing.returncode == 1 and "ai/absent" in missing.stderr


def test_cli_follow_prints_each_record_as_one_line(
    docker_env: dict[str, str], client: openai.OpenAI
) -> None:
    """`docker model requests -f --include-existing`: kept records, then the new one."""
    proc = subprocess.Popen(
        [DOCKER, "model", "requests", "-f", "--include-existing", "--model", MODEL],
        env=docker_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        lines = LineReader(proc)
        kept = [json.loads(lines.line()) for _ in range(3)]
        assert all(entry[0]["count"] == 1 for entry in kept)
        client.embeddings.create(model=MODEL, input="hello")
        [fresh] = json.loads(lines.line())
        assert fresh["records"][0]["url"] == "/v1/embeddings"
        assert json.loads(fresh["records"][0]["response"])["data"][0]["object"] == "embedding"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            stop_process(proc)
    assert proc.stderr is not None
    assert b"Connected to request stream. Press Ctrl+C to stop." in proc.stderr.read()


def test_records_go_with_the_runners(keyed: Daemon) -> None:
    """Unloading every runner of the model drops its records (DMR: on runner termination)."""
    assert recorded(keyed)
    unloaded = keyed.post("/engines/unload", json={"all": True}, headers=AUTH)
    assert unloaded.json()["unloaded_runners"] >= 1
    assert recorded(keyed) == []


def test_translating_face_is_recorded_with_its_own_path(keyed: Daemon) -> None:
    """An Ollama client's chat is recorded as the client sent it (path /api/chat)."""
    ollama = pytest.importorskip("ollama")
    answer = keyed.post("/api/chat", json={"model": MODEL, "messages": MESSAGES,
                                           "stream": False, "options": {"num_predict": 4}},
                        headers=AUTH)  # fmt: skip
    if answer.status_code in (404, 405, 501):
        pytest.skip("the Ollama face is not served by this build")
    chat = ollama.Client(host=keyed.base_url, headers=AUTH).chat(
        model=MODEL, messages=MESSAGES, stream=True, options={"num_predict": 4}
    )
    text = "".join(part["message"]["content"] for part in chat)
    records = recorded(keyed)[0]["records"]
    last = records[-1]
    assert last["url"] == "/api/chat" and last["origin"] == "ollama"
    assert json.loads(last["request"])["stream"] is True  # the Ollama body, not the OpenAI one
    assert json.loads(last["response"])["choices"][0]["message"]["content"] == text


@pytest.fixture()
def plain(daemon_factory: Callable[..., Daemon]) -> Iterator[Daemon]:
    daemon = daemon_factory()
    yield daemon
    daemon.stop()


def test_follow_ends_when_the_daemon_stops(plain: Daemon) -> None:
    """A follow holds a thread; SIGTERM ends it (with the streams) instead of waiting on it."""
    stream = requests.get(
        plain.url("/engines/requests"), headers={"Accept": "text/event-stream"},
        stream=True, timeout=(5, 60),
    )  # fmt: skip
    lines = stream.iter_lines()
    assert next(lines) == b"event: connected"
    began = time.monotonic()
    plain.proc.send_signal(signal.SIGTERM)
    rest = list(lines)  # ends when the daemon ends the answer
    took = time.monotonic() - began
    assert took < 20, f"the follow outlived SIGTERM by {took:.1f}s"
    assert b"event: new_request" not in rest
    assert "error while streaming" not in plain.output()
    assert plain.proc.wait(timeout=60) == 0

"""Real curl against the daemon over TCP and over its Unix socket (with /exp/vDD4.40)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.daemon_fixtures import MODEL, Daemon

pytestmark = pytest.mark.llama_server

CURL_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return path


def run_curl(curl: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "--no-buffer",
            "--max-time",
            str(CURL_TIMEOUT_SECONDS),
            *args,
        ],
        input=data,
        capture_output=True,
        text=True,
        timeout=CURL_TIMEOUT_SECONDS + 10,
        check=False,
    )


def test_streaming_chat_over_tcp(curl: str, daemon: Daemon) -> None:
    """curl gets an SSE stream over TCP ending with data: [DONE]."""
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "hi"}],
    }
    done = run_curl(
        curl,
        "--include",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "@-",
        daemon.url("/engines/v1/chat/completions"),
        data=json.dumps(body),
    )
    assert done.returncode == 0, done.stderr
    # text mode turns the header CRLFs into plain newlines
    head, _, stream = done.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    events = [line for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_models_over_unix_socket_with_prefix(curl: str, daemon: Daemon) -> None:
    """curl --unix-socket with Docker Desktop's /exp/vDD4.40 prefix reaches the API."""
    done = run_curl(
        curl, "--unix-socket", str(daemon.socket_path), "http://localhost/exp/vDD4.40/models"
    )
    assert done.returncode == 0, done.stderr
    (model,) = json.loads(done.stdout)
    assert "docker.io/ai/smollm2:latest" in model["tags"]
    done = run_curl(
        curl,
        "--unix-socket",
        str(daemon.socket_path),
        "http://localhost/exp/vDD4.40/engines/v1/models",
    )
    assert json.loads(done.stdout)["object"] == "list"


def test_chat_over_unix_socket(curl: str, daemon: Daemon) -> None:
    """A non-streamed chat over the Unix socket answers the engine's JSON."""
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    done = run_curl(
        curl,
        "--unix-socket",
        str(daemon.socket_path),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        "@-",
        "http://localhost/exp/vDD4.40/engines/llama.cpp/v1/chat/completions",
        data=json.dumps(body),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["object"] == "chat.completion"


def test_error_shape_over_curl(curl: str, daemon: Daemon) -> None:
    """An unknown model is a 404 with the OpenAI error shape."""
    done = run_curl(
        curl,
        "--write-out",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        '{"model": "ai/nothing-here"}',
        daemon.url("/v1/chat/completions"),
    )
    body, _, status = done.stdout.rpartition("\n")
    assert status == "404"
    assert json.loads(body)["error"]["code"] == "model_not_found"


def test_a_dns_rebinding_host_is_refused(curl: str, daemon: Daemon) -> None:
    """A request naming the daemon by a foreign name (what a DNS-rebinding page sends) gets 403
    host_not_allowed on /logs and /models; localhost and the address are served."""
    for path in ("/logs", "/models"):
        done = run_curl(
            curl, "--write-out", "\n%{http_code}", "-H", "Host: rebind.evil.example:12434",
            daemon.url(path),
        )  # fmt: skip
        body, _, status = done.stdout.rpartition("\n")
        assert status == "403", done.stdout
        assert json.loads(body)["error"]["code"] == "host_not_allowed"
    for host in ("localhost", "127.0.0.1"):
        done = run_curl(
            curl, "--write-out", "\n%{http_code}", "-H", f"Host: {host}", daemon.url("/models")
        )
        assert done.stdout.rpartition("\n")[2] == "200", done.stdout

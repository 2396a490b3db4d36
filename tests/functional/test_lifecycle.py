"""Runner and daemon lifecycle with the real daemon, engine and model.

Cold and warm starts, idle reaping, settings that survive a restart, a runner killed mid-stream,
a client that goes away mid-stream, SIGTERM with a stream in flight, and kill -9 of the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.support.daemon_fixtures import MODEL, Daemon
from tests.support.processes import wait_until

pytestmark = pytest.mark.llama_server

CHAT = "/engines/v1/chat/completions"


def chat_body(max_tokens: int, *, stream: bool = False) -> dict[str, object]:
    return {
        "model": MODEL,
        "stream": stream,
        "max_tokens": max_tokens,
        # ignore_eos: the answer runs to max_tokens, so a stream is long enough to act in.
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "Tell me a long story about a cat."}],
    }


def open_stream(daemon: Daemon, max_tokens: int) -> tuple[requests.Response, Iterator[bytes]]:
    """Start a streamed chat; return the response and an iterator of its SSE lines."""
    response = requests.post(
        daemon.url(CHAT), json=chat_body(max_tokens, stream=True), stream=True, timeout=120
    )
    assert response.status_code == 200, response.text
    return response, response.iter_lines()


def next_event(lines: Iterator[bytes]) -> bytes:
    for line in lines:
        if line.startswith(b"data: "):
            return line
    raise AssertionError("the stream ended before an event")


def runner_metric(daemon: Daemon, name: str) -> float | None:
    """Return a completion runner's metric from the daemon's merged /metrics, if present."""
    for line in daemon.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and 'mode="completion"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def short_keep_alive(daemon_factory: Callable[..., Daemon]) -> Daemon:
    """A daemon whose runners stop after 2 s idle."""
    return daemon_factory(DMR_KEEP_ALIVE="2s")


def test_cold_start_then_warm(short_keep_alive: Daemon) -> None:
    """The first request starts a runner; the next one reuses it and is faster."""
    daemon = short_keep_alive
    assert daemon.runner_processes() == []
    started = time.monotonic()
    assert daemon.post(CHAT, json=chat_body(2)).status_code == 200
    cold = time.monotonic() - started
    (runner,) = daemon.runner_processes()
    started = time.monotonic()
    assert daemon.post(CHAT, json=chat_body(2)).status_code == 200
    warm = time.monotonic() - started
    assert [proc.pid for proc in daemon.runner_processes()] == [runner.pid]
    assert warm < cold, (cold, warm)


def test_idle_runner_is_reaped(short_keep_alive: Daemon) -> None:
    """With a 2 s keep-alive an idle runner is stopped and ps is empty."""
    daemon = short_keep_alive
    assert daemon.post(CHAT, json=chat_body(1)).status_code == 200
    assert daemon.runner_processes()
    assert wait_until(lambda: not daemon.runner_processes(), timeout=15, interval=0.25)
    assert daemon.get("/engines/ps").json() == []


def test_client_disconnect_stops_generation(short_keep_alive: Daemon) -> None:
    """A client gone mid-stream: the runner's requests_processing drops to 0 promptly."""
    daemon = short_keep_alive
    response, lines = open_stream(daemon, 2000)
    next_event(lines)
    next_event(lines)
    assert runner_metric(daemon, "llamacpp:requests_processing") == 1
    response.close()
    started = time.monotonic()
    # NOTE: 2000 tokens take 20 s or more here, so a stop within 5 s can only come from the
    # closed upstream connection; the bound is loose because a loaded 2-core machine delays
    # the next chunk write that reveals the disconnect.
    assert wait_until(
        lambda: runner_metric(daemon, "llamacpp:requests_processing") == 0, timeout=8, interval=0.05
    )
    assert time.monotonic() - started < 5.0
    assert not any(entry.get("in_use") for entry in daemon.get("/engines/ps").json())


def test_runner_killed_mid_stream(short_keep_alive: Daemon) -> None:
    """kill -9 of the runner mid-stream: one clean error event, and the next request works."""
    daemon = short_keep_alive
    response, lines = open_stream(daemon, 2000)
    next_event(lines)
    (runner,) = daemon.runner_processes()
    runner.send_signal(signal.SIGKILL)
    events = [line for line in lines if line.startswith(b"data: ")]
    response.close()
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "runner_crashed"
    assert set(error) == {"message", "type", "param", "code"}
    answer = daemon.post(CHAT, json=chat_body(2))
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "chat.completion"


def test_configure_survives_restart(daemon_factory: Callable[..., Daemon]) -> None:
    """_configure settings persist across a daemon restart and shape the next runner."""
    first = daemon_factory()
    answer = first.post("/engines/_configure", json={"model": MODEL, "context-size": 1536})
    assert answer.status_code == 202, answer.text
    assert wait_until(lambda: len(first.runner_processes()) == 1, timeout=60, interval=0.25)
    assert first.stop() == 0
    assert wait_until(lambda: not first.runner_processes(), timeout=10)
    second = daemon_factory(models_path=first.models_path)
    (entry,) = second.get("/engines/_configure", params={"model": MODEL}).json()
    assert entry["Config"]["context-size"] == 1536
    assert second.post(CHAT, json=chat_body(1)).status_code == 200
    (runner,) = second.runner_processes()
    argv = runner.cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "1536"


def test_sigterm_with_stream_in_flight(daemon_factory: Callable[..., Daemon]) -> None:
    """SIGTERM mid-stream: the stream ends, the daemon exits, and no llama-server stays."""
    daemon = daemon_factory()
    response, lines = open_stream(daemon, 4000)
    next_event(lines)
    assert daemon.runner_processes()
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    rest = [line for line in lines if line.startswith(b"data: ")]
    response.close()
    assert daemon.proc.wait(timeout=40) == 0
    assert time.monotonic() - started < 30
    assert rest, "the stream ended without any further event"
    assert wait_until(lambda: not daemon.runner_processes(), timeout=5)


def test_kill_9_of_the_daemon_leaves_no_runner(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """kill -9 of the whole daemon (master and worker): the parent-death signal ends the runner.

    The daemon also tells systemd it is ready (READY=1 on $NOTIFY_SOCKET) on the way up.
    """
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    try:
        daemon = daemon_factory(NOTIFY_SOCKET=str(notify_path))
        assert b"READY=1" in notify.recv(4096)
    finally:
        notify.close()
    assert daemon.post(CHAT, json=chat_body(1)).status_code == 200
    (runner,) = daemon.runner_processes()
    os.killpg(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    assert wait_until(lambda: not runner.is_running() or runner.status() == "zombie", timeout=10)
    assert not daemon.runner_processes()

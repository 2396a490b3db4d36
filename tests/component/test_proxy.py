"""The streaming proxy: bytes, headers, SSE alignment, lease ownership, disconnects, crashes.

The first half talks to a scripted upstream on a Unix socket (to produce what a real engine
won't on cue: CORS headers, split events, a death mid-event); the second half drives the
real app, scheduler and fake engine the way gunicorn does (iterate, then ``close()``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest

from orchestrator.chunked import scan_chunks
from orchestrator.errors import RunnerCrashedError
from orchestrator.proxy import forward
from tests.support.api_app import ApiHarness, build_harness
from tests.support.processes import wait_until
from tests.support.runner_views import ps


class FakeLease:
    """Counts releases and crash reports."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.released = 0
        self.crashes = 0

    def release(self) -> None:
        self.released += 1

    def report_crash(self) -> None:
        self.crashes += 1


class FakeTimer:
    """Records the request-side metrics calls."""

    def __init__(self) -> None:
        self.status = 0
        self.first = 0
        self.finished = 0

    def first_byte(self) -> None:
        self.first += 1

    def finish(self) -> None:
        self.finished += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Callable[[_Handler], None]
    seen: list[dict[str, Any]]

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.seen.append(
            {
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": self.rfile.read(length),
            }
        )
        self.script(self)

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture
def upstream() -> Iterator[
    Callable[[Callable[[_Handler], None]], tuple[str, list[dict[str, Any]]]]
]:
    """Start a scripted upstream; return ``start(script) -> (socket path, seen requests)``."""
    workdir = Path(tempfile.mkdtemp(prefix="dmr-", dir="/tmp"))
    servers: list[_Server] = []

    def start(script: Callable[[_Handler], None]) -> tuple[str, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        handler = type("Handler", (_Handler,), {"script": staticmethod(script), "seen": seen})
        path = str(workdir / f"up{len(servers)}.sock")
        server = _Server(path, handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return path, seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    shutil.rmtree(workdir, ignore_errors=True)


def _endless_events(upstream_closed: threading.Event) -> Callable[[_Handler], None]:
    """An engine streaming 1,000 events 10 ms apart that sets ``upstream_closed`` when the
    proxy cuts the connection."""

    def script(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            for index in range(1000):
                h.chunk(b'data: {"n": %d}\n\n' % index)
                threading.Event().wait(0.01)
        except OSError:
            upstream_closed.set()

    return script


def _app_for(
    lease: FakeLease, timer: FakeTimer, upstream_path: str = "/v1/chat/completions"
) -> falcon.App:
    class Resource:
        def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
            body = req.bounded_stream.read()
            forward(
                req, resp, lease, upstream_path=upstream_path, body=body, model="m", timer=timer
            )

    app = falcon.App()
    app.add_route("/engines/v1/chat/completions", Resource())
    return app


def test_request_is_forwarded_byte_for_byte(upstream: Any) -> None:
    """Body bytes, rewritten path, Host, Content-Length; hop-by-hop and CORS headers dropped."""

    def script(h: _Handler) -> None:
        payload = b'{"ok": true}'
        h.send_response(201)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.send_header("Access-Control-Allow-Origin", "*")
        h.send_header("Access-Control-Allow-Credentials", "true")
        h.send_header("Keep-Alive", "timeout=5")
        h.send_header("X-Engine", "yes")
        h.end_headers()
        h.wfile.write(payload)

    path, seen = upstream(script)
    lease, timer = FakeLease(path), FakeTimer()
    body = b'{"model": "m",   "messages": [], "x": "\\u00e9"}'
    result = falcon.testing.TestClient(_app_for(lease, timer)).simulate_post(
        "/engines/v1/chat/completions",
        body=body,
        headers={
            "Content-Type": "application/json",
            "Origin": "http://localhost",
            "Accept-Encoding": "gzip",
            "X-Client": "c1",
        },
    )
    assert result.status_code == 201
    assert result.content == b'{"ok": true}'
    assert result.headers["x-engine"] == "yes"
    assert result.headers["x-accel-buffering"] == "no"
    for dropped in (
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "keep-alive",
    ):
        assert dropped not in result.headers
    request = seen[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == body
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["host"] == "localhost"
    assert headers["content-length"] == str(len(body))
    assert headers["x-client"] == "c1"
    assert "origin" not in headers and "accept-encoding" not in headers
    assert (lease.released, lease.crashes, timer.first, timer.finished) == (1, 0, 1, 1)
    assert timer.status == 201


def test_sse_passes_whole_events_and_ends_with_an_error_event_on_death(upstream: Any) -> None:
    """Events split across chunks are joined; a death mid-event yields one error event."""

    def script(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.chunk(b'data: {"n": 1}\n\n')
        h.chunk(b'data: {"n":')
        h.chunk(b' 2}\n\ndata: {"n": 3}\n\n')
        h.chunk(b'data: {"half')
        h.wfile.flush()
        h.connection.shutdown(2)  # the engine dies mid-event: no final chunk

    path, _ = upstream(script)
    lease, timer = FakeLease(path), FakeTimer()
    result = falcon.testing.TestClient(_app_for(lease, timer)).simulate_post(
        "/engines/v1/chat/completions", body=b'{"model": "m", "stream": true}'
    )
    events = [event for event in result.text.split("\n\n") if event]
    assert events[:3] == ['data: {"n": 1}', 'data: {"n": 2}', 'data: {"n": 3}']
    assert len(events) == 4
    error = json.loads(events[3].removeprefix("data: "))["error"]
    assert error["code"] == "runner_crashed"
    assert set(error) == {"message", "type", "param", "code"}
    assert (lease.released, lease.crashes, timer.finished) == (1, 1, 1)


def test_silent_runner_times_out_with_an_error_event(
    upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that stops sending is cut after the read timeout (kernel SO_RCVTIMEO)."""
    import orchestrator.proxy

    monkeypatch.setattr(orchestrator.proxy, "READ_TIMEOUT_SECONDS", 1.0)
    release = threading.Event()

    def script(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.chunk(b'data: {"n": 1}\n\n')
        release.wait(10)

    path, _ = upstream(script)
    lease, timer = FakeLease(path), FakeTimer()
    try:
        result = falcon.testing.TestClient(_app_for(lease, timer)).simulate_post(
            "/engines/v1/chat/completions", body=b"{}"
        )
    finally:
        release.set()
    events = [event for event in result.text.split("\n\n") if event]
    assert events[0] == 'data: {"n": 1}'
    assert json.loads(events[1].removeprefix("data: "))["error"]["code"] == "runner_start_timeout"
    assert (lease.released, lease.crashes) == (1, 0)


def test_unreachable_runner_is_a_502_before_streaming() -> None:
    """No socket behind the lease: RunnerCrashedError, lease released, crash reported."""
    lease, timer = FakeLease("/tmp/dmr-no-such-runner.sock"), FakeTimer()
    req = falcon.testing.create_req(method="POST", path="/engines/v1/chat/completions")
    resp = falcon.Response()
    with pytest.raises(RunnerCrashedError):
        forward(
            req,
            resp,
            lease,
            upstream_path="/v1/chat/completions",
            body=b"{}",
            model="m",
            timer=timer,
        )
    assert (lease.released, lease.crashes, timer.finished, timer.status) == (1, 1, 1, 502)
    assert resp.stream is None


def test_closing_mid_stream_releases_once_and_closes_upstream(upstream: Any) -> None:
    """Closing the body iterable (what gunicorn does on a failed write) ends the upstream."""
    upstream_closed = threading.Event()
    path, _ = upstream(_endless_events(upstream_closed))
    lease, timer = FakeLease(path), FakeTimer()
    app = _app_for(lease, timer)
    env = falcon.testing.create_environ(
        method="POST", path="/engines/v1/chat/completions", body=b'{"model": "m", "stream": true}'
    )
    iterable = app(env, lambda status, headers: None)
    first = next(iter(iterable))
    assert first.startswith(b"data: ")
    iterable.close()  # type: ignore[attr-defined]
    assert lease.released == 1 and timer.finished == 1
    assert upstream_closed.wait(5), "the upstream never saw the disconnect"
    iterable.close()  # type: ignore[attr-defined]
    assert lease.released == 1


# --- the real scheduler and fake engine ---------------------------------------------------


@pytest.fixture(scope="module")
def harness() -> Iterator[ApiHarness]:
    with pytest.MonkeyPatch.context() as patch:
        # Long, slow answers so a test can act in the middle of one.
        patch.setenv("FAKE_LLAMA_TOKENS", "100")
        patch.setenv("FAKE_LLAMA_TOKEN_DELAY", "0.02")
        harness = build_harness()
        yield harness
        harness.close()


def _runner_metric(harness: ApiHarness, name: str) -> float:
    result = harness.client.simulate_get("/metrics")
    for line in result.text.splitlines():
        if line.startswith(name + "{") and 'mode="completion"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{result.text}")


def _start_stream(harness: ApiHarness) -> Any:
    env = falcon.testing.create_environ(
        method="POST",
        path="/engines/v1/chat/completions",
        body=json.dumps({"model": "ai/tiny", "stream": True, "messages": []}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return harness.app(env, lambda status, headers: None)


def test_client_disconnect_stops_generation_promptly(harness: ApiHarness) -> None:
    """A client gone mid-stream: the runner's requests_processing drops to 0, the lease returns."""
    iterable = _start_stream(harness)
    chunks = iter(iterable)
    next(chunks)
    next(chunks)
    assert _runner_metric(harness, "llamacpp:requests_processing") == 1
    assert [entry.get("in_use") for entry in ps(harness.scheduler)] == [True]
    iterable.close()
    assert wait_until(
        lambda: _runner_metric(harness, "llamacpp:requests_processing") == 0, timeout=3
    )
    assert not any(entry.get("in_use") for entry in ps(harness.scheduler))


def test_runner_killed_mid_stream_gives_one_error_event_then_recovers(harness: ApiHarness) -> None:
    """kill -9 of the runner mid-stream: one error event ends the stream; the next request works."""
    iterable = _start_stream(harness)
    chunks = iter(iterable)
    next(chunks)
    (runner,) = harness.scheduler.management.active_runners()
    assert runner.pid is not None
    os.kill(runner.pid, signal.SIGKILL)
    rest = b"".join(chunks)
    iterable.close()
    events = [event for event in rest.decode().split("\n\n") if event]
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "runner_crashed"
    assert all(json.loads(event.removeprefix("data: ")) for event in events)
    result = harness.client.simulate_post(
        "/engines/v1/completions", json={"model": "ai/tiny", "prompt": "x", "max_tokens": 2}
    )
    assert result.status_code == 200, result.text
    assert json.loads(result.text)["object"] == "chat.completion"


# --- pass-through (what the front door does) and kept-alive runner connections ----------------


def _stream_for(path: str, lease: FakeLease, timer: FakeTimer, body: bytes = b"{}") -> Any:
    """Run ``forward`` as the OpenAI route does and return the response's stream."""
    req = falcon.testing.create_req(
        method="POST", path="/engines/v1/chat/completions", body=body
    )
    resp = falcon.Response()
    forward(req, resp, lease, upstream_path="/v1/chat/completions", body=body, model="m",
            timer=timer)  # fmt: skip
    return resp.stream


def _json_script(payload: bytes, *, close_after: bool = False) -> Callable[[_Handler], None]:
    """An engine answering ``payload`` as JSON with Content-Length; ``close_after``: it then
    closes the connection without saying so (its keep-alive timeout)."""

    def script(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
        h.wfile.flush()
        h.close_connection = close_after

    return script


def _event_script(events: list[bytes], die: bool = False) -> Callable[[_Handler], None]:
    def script(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for event in events:
            h.chunk(event)
        if die:
            h.wfile.flush()
            h.connection.shutdown(2)
            return
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()

    return script


def test_pass_through_sends_the_engine_framing_unchanged_with_the_head(upstream: Any) -> None:
    """The client gets the engine's chunks byte for byte; the head rides on the first send."""
    events = [b'data: {"n": %d}\n\n' % n for n in range(3)] + [b"data: [DONE]\n\n"]
    path, _ = upstream(_event_script(events))
    lease, timer = FakeLease(path), FakeTimer()
    stream = _stream_for(path, lease, timer)
    assert stream.can_pass_through(True, None)
    assert not stream.can_pass_through(False, None)  # an HTTP/1.0 client needs payloads
    sent: list[bytes] = []
    assert stream.pass_through(b"HEAD\r\n\r\n", sent.append) is True
    wire = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    assert b"".join(sent) == b"HEAD\r\n\r\n" + wire
    assert sent[0].startswith(b"HEAD\r\n\r\n") and len(sent[0]) > len(b"HEAD\r\n\r\n")
    stream.close()
    assert (lease.released, lease.crashes, timer.first, timer.finished) == (1, 0, 1, 1)


def _framed(payload: bytes, size: bytes | None = None) -> bytes:
    return (size or b"%x" % len(payload)) + b"\r\n" + payload + b"\r\n"


_E1, _E2 = b'data: {"n": 1000}\n\n', b'data: {"n": 2000}\n\n'


@pytest.mark.parametrize(
    "pieces",
    [
        # One event per chunk, each its own write: the common case, passed on read by read.
        [_framed(_E1), _framed(_E2)],
        # An event over two chunks, then a size line in capitals.
        [_framed(b"data: "), _framed(b"{}\n\n"), _framed(_E1, b"%X" % len(_E1))],
        # A chunk extension; a size line split over two writes.
        [_framed(_E1, b"%x;x=1" % len(_E1)), b"1", _framed(_E2)[1:]],
        # A zero-padded size line; the last chunk glued to an event.
        [_framed(_E1, b"0%x" % len(_E1)), _framed(_E2) + b"0\r\n\r\n"],
        # A read that ends like a whole event chunk but is the start of a longer chunk.
        [_framed(b"data: a\n\n\r\nb\n\n")[:-5], _framed(b"data: a\n\n\r\nb\n\n")[-5:]],
    ],
    ids=[
        "one-event-per-chunk",
        "event-over-two-chunks",
        "extension-and-split-size",
        "zero-pad",
        "lookalike-end",
    ],
)
def test_pass_through_is_byte_exact_whatever_the_engine_framing(
    upstream: Any, pieces: list[bytes]
) -> None:
    """Whole chunks go out as read, others after the walk: either way the bytes are the engine's
    and the answer ends once, at the last chunk."""

    def script(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()
        for piece in pieces:
            h.wfile.write(piece)
            h.wfile.flush()
            time.sleep(0.02)  # separate reads on the proxy's side
        if not pieces[-1].endswith(b"0\r\n\r\n"):
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()

    path, _ = upstream(script)
    lease, timer = FakeLease(path), FakeTimer()
    stream = _stream_for(path, lease, timer)
    sent: list[bytes] = []
    assert stream.pass_through(b"H\r\n\r\n", sent.append) is True
    body = b"".join(pieces)
    if not body.endswith(b"0\r\n\r\n"):
        body += b"0\r\n\r\n"
    assert b"".join(sent) == b"H\r\n\r\n" + body
    # No send ever splits a chunk or an event: each is whole chunks, ending an event or the body.
    sent[0] = sent[0].removeprefix(b"H\r\n\r\n")
    for piece in sent:
        cut, _, _ = scan_chunks(piece, 0, True, None)
        assert cut == len(piece), piece
    stream.close()
    assert (lease.released, lease.crashes, timer.finished) == (1, 0, 1)


def test_pass_through_after_a_death_sends_whole_events_then_one_error_event(
    upstream: Any,
) -> None:
    """Half an event is never sent; the answer still ends with a proper last chunk."""
    path, _ = upstream(_event_script([b'data: {"n": 1}\n\n', b'data: {"hal'], die=True))
    lease, timer = FakeLease(path), FakeTimer()
    stream = _stream_for(path, lease, timer)
    sent: list[bytes] = []
    assert stream.pass_through(b"H\r\n\r\n", sent.append) is True
    wire = b"".join(sent)
    assert b"hal" not in wire and wire.endswith(b"\r\n0\r\n\r\n")
    payload = wire.split(b"\r\n\r\n", 1)[1]
    events = []
    while True:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        events.append(rest[:size])
        payload = rest[size + 2 :]
    assert events[0] == b'data: {"n": 1}\n\n'
    error = json.loads(events[1].removeprefix(b"data: "))["error"]
    assert error["code"] == "runner_crashed" and len(events) == 2
    assert (lease.released, lease.crashes) == (1, 1)


def test_pass_through_of_a_json_answer_with_content_length(upstream: Any) -> None:
    payload = b'{"data": [{"embedding": [0.5]}]}'
    path, _ = upstream(_json_script(payload))
    lease, timer = FakeLease(path), FakeTimer()
    stream = _stream_for(path, lease, timer)
    assert not stream.can_pass_through(False, len(payload) + 1)
    assert stream.can_pass_through(False, len(payload))
    sent: list[bytes] = []
    assert stream.pass_through(b"H\r\n\r\n", sent.append) is True
    assert sent == [b"H\r\n\r\n" + payload]
    assert lease.released == 1


def test_a_failed_send_to_the_client_cuts_the_engine_and_releases_once(upstream: Any) -> None:
    upstream_closed = threading.Event()
    path, _ = upstream(_endless_events(upstream_closed))
    lease, timer = FakeLease(path), FakeTimer()
    stream = _stream_for(path, lease, timer)
    calls = []

    def send(data: bytes) -> None:
        calls.append(data)
        if len(calls) == 3:
            raise BrokenPipeError("the client went away")

    with pytest.raises(BrokenPipeError):
        stream.pass_through(b"H\r\n\r\n", send)
    stream.close()
    assert (lease.released, lease.crashes, timer.finished) == (1, 0, 1)
    assert upstream_closed.wait(5), "the engine never saw the disconnect"


def test_sequential_requests_share_one_kept_alive_engine_connection(upstream: Any) -> None:
    """Answers read to their end leave the connection for the next request; one cut by the
    client does not (the engine must see that disconnect)."""
    connections: list[_Handler] = []  # a handler serves one connection, request after request
    events = [b'data: {"n": 1}\n\n', b"data: [DONE]\n\n"]
    script = _event_script(events)

    def counting(h: _Handler) -> None:
        if not any(h is seen_handler for seen_handler in connections):
            connections.append(h)
        script(h)

    path, seen = upstream(counting)
    lease, timer = FakeLease(path), FakeTimer()
    for _ in range(3):
        stream = _stream_for(path, lease, timer)
        assert stream.pass_through(b"H\r\n\r\n", lambda data: None)
    result = falcon.testing.TestClient(_app_for(lease, timer)).simulate_post(
        "/engines/v1/chat/completions", body=b"{}"
    )
    assert result.text.count("data: ") == 2
    assert len(seen) == 4 and len(connections) == 1
    stream = _stream_for(path, lease, timer)
    stream.close()  # the client went away before the body: that connection is cut
    stream = _stream_for(path, lease, timer)
    stream.close()
    assert len(seen) == 6 and len(connections) == 2
    assert lease.released == 6 and lease.crashes == 0


def test_a_kept_alive_connection_the_engine_closed_is_replaced(upstream: Any) -> None:
    """The engine closing an idle connection (its keep-alive timeout) costs nothing."""
    payload = b"{}"
    path, seen = upstream(_json_script(payload, close_after=True))
    lease, timer = FakeLease(path), FakeTimer()
    for _ in range(3):
        stream = _stream_for(path, lease, timer)
        sent: list[bytes] = []
        assert stream.pass_through(b"", sent.append)
        assert b"".join(sent) == payload
    assert len(seen) == 3 and lease.crashes == 0


def test_a_stale_connection_is_retried_once_when_the_engine_cannot_have_read_it(
    upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the idle check misses the close (a race), the request is sent again on a new one."""
    import orchestrator.runner_connections as runner_connections

    monkeypatch.setattr(runner_connections, "_still_open", lambda sock: True)
    path, seen = upstream(_json_script(b"{}", close_after=True))
    lease, timer = FakeLease(path), FakeTimer()
    for _ in range(3):
        stream = _stream_for(path, lease, timer)
        assert stream.pass_through(b"", lambda data: None)
    assert len(seen) == 3 and lease.crashes == 0 and lease.released == 3

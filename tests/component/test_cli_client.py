"""``docker model`` against an in-process fake daemon (TCP loopback and a Unix socket).

The fake answers the way the spec says the daemon does (JSON errors, chunked progress lines,
SSE chat); the real daemon is exercised by tests/functional/test_cli.py.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socketserver
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator.modelcli import main as cli
from orchestrator.modelcli.commands import manage as model_commands
from orchestrator.modelcli.context import CliContext
from tests.support.gguf_files import write_llama_model

MODEL_ID = "sha256:" + "ab" * 32


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Route = Callable[["Handler", Seen], None]


@dataclass
class FakeDaemon:
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    suffix_routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    daemon: FakeDaemon

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; also Unix sockets have no client address to print

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
        self.daemon.seen.append(seen)
        route = self.daemon.routes.get((self.command, parts.path))
        for (method, suffix), candidate in self.daemon.suffix_routes.items():
            if route is None and method == self.command and parts.path.endswith(suffix):
                route = candidate
        if route is None:
            self.send_json(
                404,
                {
                    "error": {
                        "message": f"no route {parts.path}",
                        "type": "not_found_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
            )
            return
        route(self, seen)

    do_GET = do_POST = do_DELETE = _handle

    def send_json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_chunks(
        self, status: int, chunks: list[bytes], content_type: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class ThreadingUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fake() -> Iterator[tuple[FakeDaemon, str]]:
    daemon = FakeDaemon()
    handler = type("BoundHandler", (Handler,), {"daemon": daemon})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for _ in serve(server):
        yield daemon, f"127.0.0.1:{server.server_address[1]}"


def run_cli(host: str, argv: list[str], stdin: str = "", **env: str) -> tuple[int, str, str]:
    ctx = CliContext(
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        stdin=io.StringIO(stdin),
        environ={"MODEL_RUNNER_HOST": host, **env},
    )
    status = cli.main(argv, ctx)
    return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]


def progress(layer: str, size: int, current: int) -> dict[str, Any]:
    return {
        "type": "progress",
        "message": "Downloaded",
        "total": size,
        "layer": {"id": layer, "size": size, "current": current},
        "mode": "pull",
    }


def lines(*events: dict[str, Any], escape: bool = False) -> list[bytes]:
    out = []
    for event in events:
        text = json.dumps(event)
        if escape:
            text = text.replace('"', "&#34;")
        out.append(text.encode() + b"\n")
    return out


def test_unix_socket_transport(tmp_path: Path) -> None:
    daemon = FakeDaemon()
    daemon.routes[("GET", "/version")] = lambda h, s: h.send_json(200, {"version": "9.9.9"})
    handler = type("BoundHandler", (Handler,), {"daemon": daemon})
    socket_path = tmp_path / "dmr.sock"
    for _ in serve(ThreadingUnixServer(str(socket_path), handler)):
        status, out, err = run_cli(f"unix://{socket_path}", ["version"])
    assert status == 0, err
    assert " Version:    9.9.9\n Engine:     Docker Engine (Manual Install)\n" in out
    assert daemon.seen[0].headers["User-Agent"].startswith("docker-model-cli/")


def test_daemon_json_error_is_one_line_on_stderr(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("GET", "/models/ai/nope")] = lambda h, s: h.send_json(
        404,
        {
            "error": {
                "message": "model 'ai/nope:latest' is not in the local store; pull it first",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        },
    )
    status, out, err = run_cli(host, ["inspect", "ai/nope"])
    assert (status, out) == (1, "")
    assert err == "docker-model: model 'ai/nope:latest' is not in the local store; pull it first\n"


def test_list_table_and_json(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    model = {
        "id": MODEL_ID,
        "tags": ["docker.io/ai/smollm2:latest"],
        "created": 0,
        "config": {
            "format": "gguf",
            "parameters": "134.52M",
            "size": "93.80MiB",
            "context_size": 2048,
        },
    }
    daemon.routes[("GET", "/models")] = lambda h, s: h.send_json(200, [model])
    status, out, _ = run_cli(host, ["ls"])
    assert status == 0
    assert out.splitlines()[0].startswith("MODEL NAME  PARAMETERS")
    assert out.splitlines()[1].startswith("smollm2     134.52M")
    status, out, _ = run_cli(host, ["ls", "--json"])
    assert json.loads(out) == [model]
    status, out, _ = run_cli(host, ["ls", "-q"])
    assert out == "ab" * 6 + "\n"


def test_pull_draws_progress_and_prints_success(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    layer = "sha256:" + "cd" * 32
    events = lines(
        progress(layer, 2_000_000, 1_000_000),
        progress(layer, 2_000_000, 2_000_000),
        {"type": "success", "message": "Model pulled successfully"},
        escape=True,
    )
    daemon.routes[("POST", "/models/create")] = lambda h, s: h.send_chunks(
        200, events, "text/plain"
    )
    status, out, err = run_cli(host, ["pull", "ai/smollm2"])
    assert status == 0, err
    assert out == "Model pulled successfully\n"
    assert "cdcdcdcdcdcd: Pull complete" in err
    request = daemon.seen[0]
    assert json.loads(request.body) == {"from": "ai/smollm2"}
    assert request.headers["Accept"] == "application/json"


def test_pull_sends_hf_token_for_hugging_face_only(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("POST", "/models/create")] = lambda h, s: h.send_chunks(
        200, lines({"type": "success", "message": "Model pulled successfully"})
    )
    run_cli(host, ["pull", "hf.co/org/repo"], HF_TOKEN="hf_secret")
    run_cli(host, ["pull", "ai/smollm2"], HF_TOKEN="hf_secret")
    assert json.loads(daemon.seen[0].body) == {
        "from": "hf.co/org/repo",
        "bearer-token": "hf_secret",
    }
    assert json.loads(daemon.seen[1].body) == {"from": "ai/smollm2"}


def test_pull_retries_transient_daemon_errors(
    fake: tuple[FakeDaemon, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, host = fake
    monkeypatch.setattr(model_commands, "_sleep", lambda seconds: None)
    answers = iter(
        [
            lambda h: h.send_json(
                503, {"error": {"message": "registry busy", "code": "unavailable"}}
            ),
            lambda h: h.send_chunks(
                200, lines({"type": "success", "message": "Using cached model: 93.80MiB"})
            ),
        ]
    )
    daemon.routes[("POST", "/models/create")] = lambda h, s: next(answers)(h)
    status, out, err = run_cli(host, ["pull", "ai/smollm2"])
    assert status == 0, err
    assert out == "Using cached model: 93.80MiB\n"
    assert "registry busy; retrying in 1 s" in err


def test_pull_error_line_fails_with_its_message(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("POST", "/models/create")] = lambda h, s: h.send_chunks(
        200,
        lines(
            {"type": "error", "message": "Error: repository 'ai/nope' was not found in docker.io"}
        ),
    )
    status, out, err = run_cli(host, ["pull", "ai/nope"])
    assert (status, out) == (1, "")
    assert err == "docker-model: repository 'ai/nope' was not found in docker.io\n"


def test_rm_prints_untagged_and_deleted_and_reports_missing(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("DELETE", "/models/ai/smollm2")] = lambda h, s: h.send_json(
        200, [{"Untagged": "docker.io/ai/smollm2:latest"}, {"Deleted": MODEL_ID}]
    )
    status, out, err = run_cli(host, ["rm", "-f", "ai/smollm2", "ai/gone"])
    assert status == 1
    assert out == f"Untagged: docker.io/ai/smollm2:latest\nDeleted: {MODEL_ID}\n"
    assert err == "docker-model: no such model: ai/gone\n"
    assert daemon.seen[0].query == {"force": ["true"]}


def test_tag_sends_repo_and_tag(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("POST", "/models/smollm2/tag")] = lambda h, s: h.send_json(
        201, {"message": "ok"}
    )
    status, out, _ = run_cli(host, ["tag", "smollm2", "127.0.0.1:5000/team/small:v2"])
    assert status == 0
    assert out == 'Model "smollm2" tagged successfully with "127.0.0.1:5000/team/small:v2"\n'
    assert daemon.seen[0].query == {"repo": ["127.0.0.1:5000/team/small"], "tag": ["v2"]}


def sse(*contents: str) -> list[bytes]:
    chunks = [b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n']
    chunks += [
        b"data: " + json.dumps({"choices": [{"delta": {"content": c}}]}).encode() + b"\n\n"
        for c in contents
    ]
    return chunks + [b"data: [DONE]\n\n"]


def test_run_one_shot_streams_the_answer_with_piped_input(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("GET", "/models/ai/smollm2")] = lambda h, s: h.send_json(200, {"id": MODEL_ID})
    daemon.routes[("POST", "/engines/v1/chat/completions")] = lambda h, s: h.send_chunks(
        200, sse("Hello", ", world"), "text/event-stream"
    )
    status, out, err = run_cli(host, ["run", "ai/smollm2", "Summarise:"], stdin="some text\n")
    assert status == 0, err
    assert out == "Hello, world\n"
    body = json.loads(daemon.seen[-1].body)
    assert body["stream"] is True and body["model"] == "ai/smollm2"
    assert body["messages"] == [{"role": "user", "content": "Summarise:\n\nsome text\n"}]


def test_run_pulls_a_missing_model_first(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    present = []
    daemon.routes[("GET", "/models/ai/smollm2")] = lambda h, s: (
        h.send_json(200, {"id": MODEL_ID})
        if present
        else h.send_json(404, {"error": {"message": "not local", "code": "model_not_found"}})
    )

    def pull(h: Handler, s: Seen) -> None:
        present.append(True)
        h.send_chunks(200, lines({"type": "success", "message": "Model pulled successfully"}))

    daemon.routes[("POST", "/models/create")] = pull
    daemon.routes[("POST", "/engines/v1/chat/completions")] = lambda h, s: h.send_chunks(
        200, sse("Hi"), "text/event-stream"
    )
    status, out, err = run_cli(host, ["run", "ai/smollm2", "Hello"])
    assert status == 0, err
    assert out == "Hi\n"
    assert "Unable to find model 'ai/smollm2' locally. Pulling from the server." in err


def test_run_detach_preloads_only(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("GET", "/models/ai/smollm2")] = lambda h, s: h.send_json(200, {"id": MODEL_ID})
    daemon.routes[("POST", "/engines/v1/chat/completions")] = lambda h, s: h.send_chunks(200, [])
    status, out, _ = run_cli(host, ["run", "-d", "ai/smollm2"])
    assert (status, out) == (0, "")
    assert daemon.seen[-1].headers["X-Preload-Only"] == "true"
    assert json.loads(daemon.seen[-1].body) == {"model": "ai/smollm2", "messages": []}


def test_unload_messages(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    counts = iter([2, 0, 0])
    daemon.routes[("POST", "/engines/unload")] = lambda h, s: h.send_json(
        200, {"unloaded_runners": next(counts)}
    )
    assert run_cli(host, ["unload", "--all"])[1] == "Unloaded 2 model(s).\n"
    assert run_cli(host, ["stop", "--all"])[1] == "No models are running.\n"
    assert (
        run_cli(host, ["unload", "ai/x", "--backend", "llama.cpp"])[1]
        == "No such model(s) running.\n"
    )
    assert json.loads(daemon.seen[-1].body) == {
        "all": False,
        "models": ["ai/x"],
        "backend": "llama.cpp",
    }


def test_purge_asks_first(fake: tuple[FakeDaemon, str]) -> None:
    daemon, host = fake
    daemon.routes[("POST", "/engines/unload")] = lambda h, s: h.send_json(
        200, {"unloaded_runners": 0}
    )
    daemon.routes[("DELETE", "/models/purge")] = lambda h, s: h.send_json(200, None)
    status, out, _ = run_cli(host, ["purge"], stdin="n\n")
    assert status == 0 and "Aborted." in out and daemon.seen == []
    status, out, _ = run_cli(host, ["purge"], stdin="y\n")
    assert status == 0 and out.endswith("Model cache removed.\n")
    assert [(s.method, s.path) for s in daemon.seen] == [
        ("POST", "/engines/unload"),
        ("DELETE", "/models/purge"),
    ]


def test_package_streams_a_tar_and_tags_the_model_id(
    fake: tuple[FakeDaemon, str], tmp_path: Path
) -> None:
    daemon, host = fake
    gguf_path = write_llama_model(tmp_path / "tiny.gguf")
    license_path = tmp_path / "LICENSE"
    license_path.write_text("Apache-2.0\n")
    loaded: dict[str, Any] = {}

    def load(h: Handler, s: Seen) -> None:
        with tarfile.open(fileobj=io.BytesIO(s.body), mode="r|") as archive:
            for member in archive:
                if member.isfile():
                    loaded[member.name] = archive.extractfile(member).read()  # type: ignore[union-attr]
        h.send_chunks(200, lines({"type": "success", "message": "Model loaded successfully"}))

    daemon.routes[("POST", "/models/load")] = load
    daemon.suffix_routes[("POST", "/tag")] = lambda h, s: h.send_json(201, {"message": "tagged"})
    status, out, err = run_cli(
        host,
        [
            "package",
            "--gguf",
            str(gguf_path),
            "--license",
            str(license_path),
            "--context-size",
            "1024",
            "team/tiny:v1",
        ],
    )
    assert status == 0, err
    assert "Model loaded successfully" in err
    manifest = loaded["manifest.json"]
    model_id = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tag_request = daemon.seen[-1]
    assert tag_request.path == f"/models/{model_id}/tag"
    assert tag_request.query == {"repo": ["docker.io/team/tiny"], "tag": ["v1"]}
    load_request = daemon.seen[0]
    assert int(load_request.headers["Content-Length"]) == len(load_request.body)
    assert load_request.headers["Content-Type"] == "application/x-tar"
    layer_digests = [layer["digest"] for layer in json.loads(manifest)["layers"]]
    assert loaded[f"blobs/sha256/{layer_digests[0].split(':')[1]}"] == gguf_path.read_bytes()
    assert loaded[f"blobs/sha256/{layer_digests[1].split(':')[1]}"] == b"Apache-2.0\n"

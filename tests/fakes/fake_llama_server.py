#!/usr/bin/env python3
"""A scriptable stand-in for llama-server, for the failure paths a real engine won't produce.

It accepts the argv the daemon builds (``-ngl 999 --metrics --no-webui --model M --host S ...``;
unknown flags are ignored) and serves HTTP like llama-server: on a Unix socket when ``--host``
ends in ``.sock``, else on ``--host``/``--port``. Standard library only.

Behaviour, from ``--fake-*`` flags or ``FAKE_LLAMA_*`` environment variables (the daemon passes
its environment to runners, so tests set these with ``monkeypatch.setenv``):

- ``FAKE_LLAMA_BEHAVIOUR`` / ``--fake-behaviour``: ``serve`` (default); ``crash`` (print
  llama.cpp's model-loading error lines and exit 1); ``hang`` (listen, answer 503 forever);
  ``signal:<NAME>`` (die by that signal during the load's warm-up, as a build whose CPU traps an
  instruction does: ``signal:SIGILL``); ``signal-on-generate:<NAME>`` (become ready, then die by
  it on the first completion, as the same build does with ``--no-warmup``).
- ``FAKE_LLAMA_LOAD_SECONDS``: answer 503 ``Loading model`` for this long (default 0.1).
- ``FAKE_LLAMA_IGNORE_SIGTERM=1``: ignore SIGTERM (only SIGKILL stops it).
- ``FAKE_LLAMA_SHUTDOWN_SECONDS`` (default 0): how long the clean-up after SIGTERM takes. As in
  llama-server, a second SIGTERM meanwhile ends it at once with status 1.
- ``FAKE_LLAMA_TOKENS`` (default 8) and ``FAKE_LLAMA_TOKEN_DELAY`` seconds (default 0.005):
  length and pace of ``/v1/chat/completions`` answers, streamed as SSE when ``"stream": true``.
- ``FAKE_LLAMA_START_LOG``: append ``<pid>\\n`` to this file at start (to count processes).

Like the real build it exits at once when the socket path already exists, and fails to load
when the model file is missing. It answers llama-server's native ``POST /completion`` too
(``tokens_predicted`` and ``timings``). Extra endpoints: ``GET /fake/argv`` (its argv and pid) and
``POST /fake/crash`` (exit 3 immediately, mid-request). A chat or text completion whose body
holds ``"fake_status"`` is answered with that status and ``"fake_error"`` as the JSON body (an
engine error, such as llama-server's 500 for a field it cannot parse).

Opt-in chat behaviour for the translating faces (Ollama's ``/api/chat``), off unless set:

- ``FAKE_LLAMA_TIMINGS=1``: answers carry llama-server's ``timings`` object (``prompt_n`` 3,
  ``prompt_ms`` 12.5, ``predicted_n`` = tokens, ``predicted_ms`` 20.0) in the whole answer and
  in the streamed chunk with ``finish_reason``, plus the usage chunk when ``stream_options``
  asks for ``include_usage``.
- ``FAKE_LLAMA_TOOL_CALL='<name> <json arguments>'``: the answer is that tool call; streamed,
  the arguments arrive in 5-character fragments across deltas, as llama-server sends them,
  and ``finish_reason`` is ``tool_calls``.
- ``FAKE_LLAMA_STREAM_CRASH_AFTER=N``: a streamed answer exits the process (status 3) after N
  content chunks, mid-stream.
- ``FAKE_LLAMA_BODY_LOG=<path>``: append each chat request's JSON body to that file, one line
  each (to check what a face translated a request into).

Anthropic Messages (``POST /v1/messages``, ``/v1/messages/count_tokens``), in the shapes the
real llama-server of this build writes (``to_json_anthropic*``): text of ``FAKE_LLAMA_TOKENS``
pieces, or the tool call of ``FAKE_LLAMA_TOOL_CALL`` as a ``tool_use`` block (streamed, its
``content_block_start`` has no ``input``, as the engine's); ``model`` is the GGUF path and
``id`` ``chatcmpl-...``; with ``stop_sequences`` the answer stops after two pieces with
``stop_reason`` ``end_turn`` and ``stop_sequence`` the first one (the engine's words).
``FAKE_LLAMA_BODY_LOG`` logs these bodies too, ``fake_status`` works as on chat, and
``FAKE_LLAMA_STREAM_CRASH_AFTER`` exits mid-stream. ``FAKE_LLAMA_ANTHROPIC_ERROR_AFTER=N``: a
streamed answer ends after N text deltas with the engine's ``event: error`` (its bare error
object, ``{"code": 500, "message", "type": "server_error"}``).
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class Options:
    """Parsed command line: the llama-server flags we use plus ``--fake-*`` overrides."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.model = ""
        self.host = "127.0.0.1"
        self.port = 8080
        self.ctx_size = 0
        self.behaviour = _env("FAKE_LLAMA_BEHAVIOUR", "serve")
        self.load_seconds = float(_env("FAKE_LLAMA_LOAD_SECONDS", "0.1"))
        self.ignore_sigterm = _env("FAKE_LLAMA_IGNORE_SIGTERM", "") not in ("", "0")
        self.shutdown_seconds = float(_env("FAKE_LLAMA_SHUTDOWN_SECONDS", "0"))
        self.tokens = int(_env("FAKE_LLAMA_TOKENS", "8"))
        self.token_delay = float(_env("FAKE_LLAMA_TOKEN_DELAY", "0.005"))
        self.start_log = _env("FAKE_LLAMA_START_LOG", "")
        # Parse by hand: argparse would read "-cb" as "-c b" and choke on llama.cpp's flags.
        values = {
            "-m": "model", "--model": "model", "--host": "host", "--port": "port",
            "-c": "ctx_size", "--ctx-size": "ctx_size", "--fake-behaviour": "behaviour",
            "--fake-load-seconds": "load_seconds", "--fake-tokens": "tokens",
            "--fake-token-delay": "token_delay", "--fake-start-log": "start_log",
        }
        index = 0
        while index < len(argv):
            flag = argv[index]
            if flag == "--fake-ignore-sigterm":
                self.ignore_sigterm = True
            elif flag in values and index + 1 < len(argv):
                name = values[flag]
                current = getattr(self, name)
                setattr(self, name, type(current)(argv[index + 1]))
                index += 1
            index += 1


OPTIONS = Options(sys.argv[1:])
STARTED = time.monotonic()
COUNTERS = {"requests_processing": 0, "tokens_predicted_total": 0, "prompt_tokens_total": 0}
COUNTERS_LOCK = threading.Lock()


def say(line: str) -> None:
    """Print one engine log line (stdout is the runner's log file)."""
    print(line, flush=True)


def is_ready() -> bool:
    """Return whether loading is over."""
    if OPTIONS.behaviour == "hang":
        return False
    return time.monotonic() - STARTED >= OPTIONS.load_seconds


class Handler(BaseHTTPRequestHandler):
    """llama-server's HTTP surface, reduced to what the daemon touches."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-llama-server"

    def address_string(self) -> str:  # Unix sockets have no peer address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        say("srv  log_server_r: " + (format % args))

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _text(self, status: int, text: str, content_type: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _loading(self) -> bool:
        if is_ready():
            return False
        self._json(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
        return True

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            parsed = {}
        return parsed if isinstance(parsed, dict) else {}

    def do_GET(self) -> None:
        if self._loading():
            return
        if self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/metrics":
            with COUNTERS_LOCK:
                counters = dict(COUNTERS)
            lines = []
            for name, value in counters.items():
                kind = "counter" if name.endswith("_total") else "gauge"
                lines += [f"# HELP llamacpp:{name} fake", f"# TYPE llamacpp:{name} {kind}",
                          f"llamacpp:{name} {value}"]
            self._text(200, "\n".join(lines) + "\n", "text/plain; version=0.0.4")
        elif self.path == "/v1/models":
            name = os.path.basename(OPTIONS.model)
            self._json(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llamacpp"}]})
        elif self.path == "/fake/argv":
            self._json(200, {"argv": OPTIONS.argv, "pid": os.getpid(), "ctx_size": OPTIONS.ctx_size})
        else:
            self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    def do_POST(self) -> None:
        if self.path == "/fake/crash":
            say("fake: crashing on request")
            os._exit(3)
        if self._loading():
            return
        body = self._body()
        if self.path in ("/v1/chat/completions", "/v1/completions") and "fake_status" in body:
            self._json(int(body["fake_status"]), body.get("fake_error", {}))
        elif self.path == "/v1/chat/completions" and face_extras_wanted():
            serve_face_extras(self, body)
        elif self.path in ("/v1/chat/completions", "/v1/completions"):
            with COUNTERS_LOCK:
                COUNTERS["requests_processing"] += 1
            try:
                if body.get("stream"):
                    self._stream(body)
                else:
                    self._complete(body)
            finally:
                with COUNTERS_LOCK:
                    COUNTERS["requests_processing"] -= 1
        elif self.path == "/completion":
            if OPTIONS.behaviour.startswith("signal-on-generate:"):
                die_by(OPTIONS.behaviour.split(":", 1)[1])
            pieces = self._tokens()
            self._json(200, {"content": "".join(pieces), "tokens_predicted": len(pieces),
                             "timings": {"predicted_per_second": 123.0}})
        elif self.path in ("/v1/messages", "/v1/messages/count_tokens"):
            serve_anthropic(self, body)
        elif self.path == "/v1/embeddings":
            self._json(200, {"object": "list", "model": body.get("model", ""),
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                             "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        else:
            self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    def _tokens(self) -> list[str]:
        return [f"tok{index} " for index in range(OPTIONS.tokens)]

    def _complete(self, body: dict[str, Any]) -> None:
        pieces = []
        for piece in self._tokens():
            time.sleep(OPTIONS.token_delay)
            pieces.append(piece)
        with COUNTERS_LOCK:
            COUNTERS["tokens_predicted_total"] += len(pieces)
        self._json(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(pieces)}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(pieces), "total_tokens": 3 + len(pieces)},
        })

    def _chunk(self, payload: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        self.wfile.flush()

    def _stream(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model", "")}
        try:
            first = {**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"role": "assistant", "content": None}}]}
            self._chunk(b"data: " + json.dumps(first).encode() + b"\n\n")
            for piece in self._tokens():
                time.sleep(OPTIONS.token_delay)
                event = {**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"content": piece}}]}
                self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                with COUNTERS_LOCK:
                    COUNTERS["tokens_predicted_total"] += 1
            last = {**base, "choices": [{"index": 0, "finish_reason": "stop", "delta": {}}]}
            self._chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            say("srv  stream: client disconnected")


def face_extras_wanted() -> bool:
    """Return whether one of the opt-in chat behaviours for translating faces is set."""
    names = ("FAKE_LLAMA_TIMINGS", "FAKE_LLAMA_TOOL_CALL", "FAKE_LLAMA_STREAM_CRASH_AFTER",
             "FAKE_LLAMA_BODY_LOG")
    return any(os.environ.get(name) for name in names)


def _fake_timings(predicted: int) -> dict[str, Any]:
    return {"cache_n": 0, "prompt_n": 3, "prompt_ms": 12.5, "prompt_per_token_ms": 4.1,
            "predicted_n": predicted, "predicted_ms": 20.0, "predicted_per_token_ms": 2.5}


def _tool_call() -> tuple[str, str] | None:
    spec = os.environ.get("FAKE_LLAMA_TOOL_CALL", "")
    if not spec:
        return None
    name, _, arguments = spec.partition(" ")
    return name, arguments


def serve_face_extras(handler: Handler, body: dict[str, Any]) -> None:
    """Answer a chat completion with the opt-in behaviours of the module docstring."""
    log_path = os.environ.get("FAKE_LLAMA_BODY_LOG", "")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(body) + "\n")
    timings = os.environ.get("FAKE_LLAMA_TIMINGS", "") not in ("", "0")
    tool = _tool_call()
    pieces = handler._tokens()
    usage = {"prompt_tokens": 3, "completion_tokens": len(pieces), "total_tokens": 3 + len(pieces)}
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        if tool is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_fake", "type": "function",
                 "function": {"name": tool[0], "arguments": tool[1]}}]}
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""), "usage": usage,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if tool else "length"}]}
        if timings:
            answer["timings"] = _fake_timings(len(pieces))
        handler._json(200, answer)
        return
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "")}

    def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        event = {**base, "choices": choices, **extra}
        handler._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")

    crash_after = int(os.environ.get("FAKE_LLAMA_STREAM_CRASH_AFTER", "0") or 0)
    try:
        send([{"index": 0, "finish_reason": None, "delta": {"role": "assistant", "content": None}}])
        if tool is not None:
            name, arguments = tool
            send([{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                {"index": 0, "id": "call_fake", "type": "function",
                 "function": {"name": name, "arguments": ""}}]}}])
            for start in range(0, len(arguments), 5):
                send([{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": arguments[start:start + 5]}}]}}])
            finish = "tool_calls"
        else:
            for count, piece in enumerate(pieces, 1):
                time.sleep(OPTIONS.token_delay)
                send([{"index": 0, "finish_reason": None, "delta": {"content": piece}}])
                if crash_after and count >= crash_after:
                    say("fake: crashing mid-stream")
                    os._exit(3)
            finish = "length"
        extra = {"timings": _fake_timings(len(pieces))} if timings else {}
        send([{"index": 0, "finish_reason": finish, "delta": {}}], **extra)
        if (body.get("stream_options") or {}).get("include_usage"):
            send([], usage=usage, **extra)
        handler._chunk(b"data: [DONE]\n\n")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        say("srv  stream: client disconnected")


def _anthropic_message(body: dict[str, Any], pieces: list[str], tool: tuple[str, str] | None,
                       stop: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "".join(pieces)}] if pieces else []
    if tool is not None:
        content.append({"type": "tool_use", "id": "call_fake", "name": tool[0],
                        "input": json.loads(tool[1] or "{}")})
    reason = "tool_use" if tool else "end_turn" if stop else "max_tokens"
    return {"id": "chatcmpl-fake", "type": "message", "role": "assistant", "content": content,
            "model": OPTIONS.model, "stop_reason": reason, "stop_sequence": stop,
            "usage": {"cache_read_input_tokens": 0, "input_tokens": 3,
                      "output_tokens": len(pieces) or 1}}


def serve_anthropic(handler: Handler, body: dict[str, Any]) -> None:
    """Answer ``/v1/messages[/count_tokens]`` as llama-server does (module docstring)."""
    log_path = os.environ.get("FAKE_LLAMA_BODY_LOG", "")
    if log_path:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(body) + "\n")
    if "fake_status" in body:
        handler._json(int(body["fake_status"]), body.get("fake_error", {}))
        return
    if handler.path.endswith("/count_tokens"):
        handler._json(200, {"input_tokens": 3 + len(json.dumps(body.get("messages"))) // 4})
        return
    tool = _tool_call()
    stops = body.get("stop_sequences") or []
    stop = stops[0] if stops and tool is None else None
    pieces = [] if tool else handler._tokens()[: 2 if stop else None]
    message = _anthropic_message(body, pieces, tool, stop)
    if not body.get("stream"):
        handler._json(200, message)
        return
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def send(name: str, data: dict[str, Any]) -> None:
        handler._chunk(b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n")

    crash_after = int(os.environ.get("FAKE_LLAMA_STREAM_CRASH_AFTER", "0") or 0)
    error_after = int(os.environ.get("FAKE_LLAMA_ANTHROPIC_ERROR_AFTER", "0") or 0)
    try:
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**message["usage"], "output_tokens": 0}}
        send("message_start", {"type": "message_start", "message": start})
        if pieces:
            send("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}})
        for count, piece in enumerate(pieces, 1):
            time.sleep(OPTIONS.token_delay)
            send("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": piece}})
            if crash_after and count >= crash_after:
                say("fake: crashing mid-stream")
                os._exit(3)
            if error_after and count >= error_after:
                send("error", {"code": 500, "message": "fake engine failure", "type": "server_error"})
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
                return
        if pieces:
            send("content_block_stop", {"type": "content_block_stop", "index": 0})
        if tool is not None:
            index = 1 if pieces else 0
            send("content_block_start", {"type": "content_block_start", "index": index,
                                         "content_block": {"type": "tool_use", "id": "call_fake",
                                                           "name": tool[0]}})
            for at in range(0, len(tool[1]), 5):
                send("content_block_delta", {"type": "content_block_delta", "index": index,
                                             "delta": {"type": "input_json_delta",
                                                       "partial_json": tool[1][at:at + 5]}})
            send("content_block_stop", {"type": "content_block_stop", "index": index})
        send("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": message["stop_reason"], "stop_sequence": stop},
                               "usage": {"output_tokens": message["usage"]["output_tokens"]}})
        send("message_stop", {"type": "message_stop"})
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        say("srv  stream: client disconnected")


class UnixServer(socketserver.ThreadingUnixStreamServer):
    """HTTP over a Unix socket, one thread per connection."""

    daemon_threads = True


def die_by(name: str) -> None:
    """Die by the signal ``name`` with its default action (no core file), as a CPU trap does."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Python leaves SIGILL, SIGBUS and SIGSEGV at their default action (end with a core).
    os.kill(os.getpid(), signal.Signals[name])
    time.sleep(5)  # not reached: the default action of SIGILL/SIGBUS/SIGSEGV ends the process
    os._exit(99)


_TERMINATING = False


def _on_sigterm(signum: int, frame: object) -> None:
    global _TERMINATING
    if _TERMINATING:
        say("Received second interrupt, terminating immediately.")
        os._exit(1)
    _TERMINATING = True
    say("srv    operator(): operator(): cleaning up before exit...")
    time.sleep(OPTIONS.shutdown_seconds)  # a second SIGTERM interrupts this (see above)
    raise SystemExit(0)


def main() -> int:
    """Run the fake engine until SIGTERM (or forever when it ignores it)."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if OPTIONS.start_log:
        with open(OPTIONS.start_log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, signal.SIG_IGN if OPTIONS.ignore_sigterm else _on_sigterm)
    say(f"build: fake (0000000) with fake-llama-server; argv={' '.join(OPTIONS.argv)}")
    say(f"main: loading model '{OPTIONS.model}'")
    if OPTIONS.behaviour.startswith("signal:"):
        say("load_tensors:   CPU_REPACK model buffer size =    51.28 MiB")
        say("common_init_from_params: warming up the model with an empty run")
        die_by(OPTIONS.behaviour.split(":", 1)[1])
    if OPTIONS.behaviour == "crash" or not os.path.isfile(OPTIONS.model):
        time.sleep(min(OPTIONS.load_seconds, 0.05))
        say(f"gguf_init_from_file: failed to open GGUF file '{OPTIONS.model}'")
        say(f"llama_model_load: error loading model: llama_model_loader: failed to load model from {OPTIONS.model}")
        say("llama_model_load_from_file_impl: failed to load model")
        say("srv    load_model: failed to load model, '" + OPTIONS.model + "'")
        say("main: exiting due to model loading error")
        return 1
    if OPTIONS.host.endswith(".sock"):
        if os.path.exists(OPTIONS.host):
            say(f"main: couldn't bind HTTP server socket, hostname: {OPTIONS.host}, port: {OPTIONS.port}")
            return 1
        server: socketserver.BaseServer = UnixServer(OPTIONS.host, Handler)
        where = f"unix://{OPTIONS.host}"
    else:
        server = ThreadingHTTPServer((OPTIONS.host, OPTIONS.port), Handler)
        where = f"http://{OPTIONS.host}:{OPTIONS.port}"
    say(f"main: server is listening on {where} - starting the main loop")
    try:
        server.serve_forever(poll_interval=0.05)
    except SystemExit:
        pass
    finally:
        server.server_close()
        if OPTIONS.host.endswith(".sock") and os.path.exists(OPTIONS.host):
            os.unlink(OPTIONS.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())

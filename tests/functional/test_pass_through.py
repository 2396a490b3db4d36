"""The real daemon relays llama-server's answers as they are framed, on kept-alive connections.

Through gunicorn and the front door, with the real engine: a streamed answer reaches an HTTP/1.1
client in llama-server's own chunks (each one or more whole events), several answers share one
client connection, and a client of HTTP/1.0 still gets a plain body. Issue 18.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.support.daemon_fixtures import MODEL, Daemon

pytestmark = pytest.mark.llama_server

PATH = "/engines/v1/chat/completions"


def _request(body: dict[str, object], version: str = "HTTP/1.1") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {PATH} {version}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


class _Reader:
    """Reads HTTP/1.1 answers off one socket, keeping each chunk as it came."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the daemon closed the connection")
        self.buffer += data

    def _take_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        part, _, self.buffer = self.buffer.partition(marker)
        return part

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        part, self.buffer = self.buffer[:size], self.buffer[size:]
        return part

    def answer(self) -> tuple[str, dict[str, str], list[bytes]]:
        """Return (status line, headers, chunks) of the next answer (a Content-Length body is
        one "chunk")."""
        status, *lines = self._take_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while (size := int(self._take_until(b"\r\n"), 16)) > 0:
                chunks.append(self._take(size))
                assert self._take(2) == b"\r\n"
            assert self._take(2) == b"\r\n"
            return status, headers, chunks
        return status, headers, [self._take(int(headers["content-length"]))]


def test_streamed_answers_keep_the_engine_framing_on_one_connection(daemon: Daemon) -> None:
    chat = {"model": MODEL, "stream": True, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Count to three."}]}  # fmt: skip
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=120) as sock:
        reader = _Reader(sock)
        for _ in range(3):
            sock.sendall(_request(chat))
            status, headers, chunks = reader.answer()
            assert status.startswith("HTTP/1.1 200"), status
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["connection"] == "keep-alive"
            # llama-server's chunks, as it sent them: each ends an event.
            assert len(chunks) >= 3
            assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in chunks)
            events = [event for chunk in chunks for event in chunk.split(b"\n\n") if event]
            assert events[-1] == b"data: [DONE]"
            deltas = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
            assert all(d["object"] == "chat.completion.chunk" for d in deltas)
        # A JSON answer (Content-Length) on the same connection.
        sock.sendall(_request({**chat, "stream": False}))
        status, headers, (body,) = reader.answer()
        assert status.startswith("HTTP/1.1 200")
        answer = json.loads(body)
        assert answer["object"] == "chat.completion"
        assert answer["usage"]["completion_tokens"] == 8


def test_an_http_1_0_client_gets_a_plain_body(daemon: Daemon) -> None:
    chat = {"model": MODEL, "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hi."}]}  # fmt: skip
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=120) as sock:
        sock.sendall(_request(chat, version="HTTP/1.0"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding" not in head.lower()
    events = [event for event in body.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]" and len(events) >= 3

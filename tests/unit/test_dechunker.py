"""The proxy's chunked-body reader, fed through a real socket pair in awkward pieces."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from orchestrator.proxy import dechunker

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def read_all(pieces: list[bytes], *, pause: float = 0.01) -> Iterator[bytes]:
    """Send ``pieces`` with pauses (so they arrive as separate reads); yield what read() gives."""
    ours, theirs = socket.socketpair()

    def send() -> None:
        for piece in pieces:
            theirs.sendall(piece)
            time.sleep(pause)
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        response = http.client.HTTPResponse(ours)
        response.begin()
        read = dechunker(response, ours)
        while True:
            data = read()
            if not data:
                break
            yield data
    finally:
        sender.join()
        ours.close()


def test_one_chunk_per_read() -> None:
    pieces = [HEAD, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]
    assert list(read_all(pieces)) == [b"hello", b" world"]


def test_chunks_split_anywhere_and_merged() -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n3\r\n!!!\r\n0\r\nTrailer: x\r\n\r\n"
    pieces = [HEAD + body[:2], body[2:9], body[9:10], body[10:30], body[30:]]
    assert b"".join(read_all(pieces)) == b"hello world!!!"


def test_everything_buffered_with_the_headers() -> None:
    pieces = [HEAD + b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"]
    assert list(read_all(pieces)) == [b"abcd"]


def test_end_before_the_last_chunk_is_an_error() -> None:
    with pytest.raises(http.client.IncompleteRead):
        list(read_all([HEAD, b"5\r\nhel"]))


def test_garbage_size_line_is_an_error() -> None:
    with pytest.raises(http.client.IncompleteRead):
        list(read_all([HEAD, b"zz\r\nhello\r\n"]))

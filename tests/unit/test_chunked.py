"""Chunked bodies from a runner: the payload reader and the pass-through walk.

The reader is fed through a real socket pair in awkward pieces; the walk is given the bytes
directly, cut at every offset, and must agree with the reader on what is complete.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from orchestrator.chunked import MAX_HELD_BYTES, IncompleteBody, dechunker, scan_chunks
from orchestrator.runner_connections import MalformedAnswer, RunnerConnection

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
        conn = RunnerConnection(ours, "pair")
        head = conn.read_head()
        assert head.chunked and head.status == 200
        read = dechunker(conn)
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
    with pytest.raises(IncompleteBody):
        list(read_all([HEAD, b"5\r\nhel"]))


def test_garbage_size_line_is_an_error() -> None:
    with pytest.raises(MalformedAnswer):
        list(read_all([HEAD, b"zz\r\nhello\r\n"]))


def test_chunk_longer_than_its_size_is_an_error() -> None:
    with pytest.raises(MalformedAnswer):
        list(read_all([HEAD, b"2\r\nabc\r\n0\r\n\r\n"]))


# --- scan_chunks: what the front door may pass on as it is --------------------------------

def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


BODY = (
    chunk(b'data: {"n": 1}\n\n')  # one whole event
    + chunk(b'data: {"n":')  # half an event ...
    + chunk(b' 2}\n\ndata: {"n": 3}\n\n')  # ... and its end with another
    + b"0\r\n\r\n"
)


def walk(data: bytes, events: bool) -> tuple[list[bytes], bool, list[bytes]]:
    """Feed ``data`` one byte at a time, as recv() might; return what was passed on."""
    passed: list[bytes] = []
    kept: list[bytes] = []
    pending, pos, ended = b"", 0, False
    for index in range(len(data)):
        pending += data[index : index + 1]
        cut, pos, ended = scan_chunks(pending, pos, events, kept.append)
        if cut:
            passed.append(pending[:cut])
            pending, pos = pending[cut:], pos - cut
        if ended:
            assert pending == b""
            break
    return passed, ended, kept


def test_walk_passes_the_body_through_unchanged_in_whole_chunks() -> None:
    passed, ended, kept = walk(BODY, events=False)
    assert ended and b"".join(passed) == BODY
    assert passed[0] == chunk(b'data: {"n": 1}\n\n')
    assert b"".join(kept) == b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: {"n": 3}\n\n'


def test_walk_of_an_event_stream_holds_chunks_until_an_event_ends() -> None:
    passed, ended, _ = walk(BODY, events=True)
    assert ended and b"".join(passed) == BODY
    # The half event never leaves alone: it goes with the chunk that ends it.
    assert passed[1] == BODY[len(passed[0]) : BODY.index(b"0\r\n\r\n")]


def test_walk_with_trailers_and_extensions() -> None:
    body = b"3;x=1\r\nabc\r\n0\r\nTrailer: y\r\n\r\n"
    passed, ended, kept = walk(body, events=False)
    assert ended and b"".join(passed) == body and kept == [b"abc"]


def test_walk_never_passes_an_incomplete_chunk() -> None:
    data = b"5\r\nhel"
    assert scan_chunks(data, 0, False, None) == (0, 0, False)
    assert scan_chunks(b"5\r\nhello\r\n3\r\nab", 0, False, None) == (10, 10, False)


def test_walk_passes_a_huge_event_on_once_it_holds_too_much() -> None:
    size = MAX_HELD_BYTES + 10
    data = b"%x\r\n%s\r\n" % (size, b"x" * size)
    cut, pos, ended = scan_chunks(data, 0, True, None)
    assert (cut, pos, ended) == (len(data), len(data), False)


@pytest.mark.parametrize("bad", [b"zz\r\nab\r\n", b"-1\r\n", b"2\r\nabcd\r\n", b"1" * 2000])
def test_walk_refuses_what_is_not_chunked_framing(bad: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        scan_chunks(bad, 0, False, None)

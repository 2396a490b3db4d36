"""HTTP/1.1 chunked bodies from a runner: read as payloads, or passed on as whole chunks.

Two readers of the same framing, for the proxy's two ways of answering:

* :func:`dechunker` returns the payloads, for the code that looks at them (the Anthropic face's
  translation, a client that cannot take chunked framing).
* :func:`scan_chunks` walks complete chunks without copying them, so the front door can send the
  engine's bytes to the client as they are, framing included (the client speaks HTTP/1.1 and our
  answer is chunked too): no de-chunking and re-chunking per token, one ``send`` per ``recv``.

Both hold back what cannot be passed on whole: :func:`scan_chunks` a chunk that is not complete
yet and, for an event stream, chunks after the last complete event, so that an error event sent
after a failure is never glued to half an event.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.runner_connections import MalformedAnswer, RunnerConnection

# An SSE event bigger than this without a blank line is passed on anyway.
MAX_HELD_BYTES = 1024 * 1024
# A chunk-size line (hex size and extensions) longer than this is not one.
MAX_SIZE_LINE = 1024


class IncompleteBody(ConnectionResetError):
    """The engine's body ended before its last chunk (or its Content-Length)."""


def _chunk_size(data: bytes, start: int, line_end: int) -> int:
    try:
        size = int(data[start:line_end].partition(b";")[0], 16)
    except ValueError:
        raise MalformedAnswer(f"bad chunk size line {data[start:line_end][:40]!r}") from None
    if size < 0:
        raise MalformedAnswer(f"bad chunk size line {data[start:line_end][:40]!r}")
    return size


def scan_chunks(
    data: bytes, pos: int, events: bool, keep: Callable[[bytes], None] | None
) -> tuple[int, int, bool]:
    """Walk the complete chunks of ``data`` from offset ``pos`` (where a chunk starts).

    Args:
        data: Body bytes not passed on yet, starting at a chunk boundary.
        pos: Where the walk resumes (the first chunk not walked yet).
        events: The body is an event stream: only pass on through the end of a chunk whose
            payload ends an event (unless :data:`MAX_HELD_BYTES` are held).
        keep: Called with each complete chunk's payload (the request recorder), or ``None``.

    Returns:
        ``(cut, pos, ended)``: ``data[:cut]`` may be passed on (0: nothing yet); ``pos`` is
        where the next walk resumes; ``ended`` says the last chunk (and any trailers) came,
        and then ``cut`` is just past it.

    Raises:
        MalformedAnswer: The bytes are not chunked framing.
    """
    cut = 0
    find = data.find
    while True:
        line_end = find(b"\r\n", pos)
        if line_end < 0:
            if len(data) - pos > MAX_SIZE_LINE:
                raise MalformedAnswer("a chunk size line without its end")
            break
        # PERF: the hot loop of streaming, once per token: the common size line is parsed
        # inline; extensions and errors take the slow path.
        try:
            size = int(data[pos:line_end], 16)
        except ValueError:
            size = _chunk_size(data, pos, line_end)
        if size <= 0:
            if size < 0:
                raise MalformedAnswer("a negative chunk size")
            end = find(b"\r\n\r\n", line_end)
            if end < 0:
                break
            return end + 4, end + 4, True
        end = line_end + 4 + size
        if end > len(data):
            break
        if data[end - 2 : end] != b"\r\n":
            raise MalformedAnswer("a chunk does not end where its size says")
        if keep is not None:
            keep(data[line_end + 2 : end - 2])
        pos = end
        if not events:
            cut = end
        elif (size >= 2 and data[end - 4 : end - 2] == b"\n\n") or (
            size >= 4 and data[end - 6 : end - 2] == b"\r\n\r\n"
        ):
            cut = end
    if events and pos - cut > MAX_HELD_BYTES:
        cut = pos
    return cut, pos, False


def payloads_of(data: bytes) -> bytes:
    """Return the payloads of the complete chunks at the start of ``data`` (a recorded body,
    maybe cut short), joined; what does not parse ends the walk."""
    parts: list[bytes] = []
    try:
        scan_chunks(data, 0, False, parts.append)
    except MalformedAnswer:
        pass
    return b"".join(parts)


def dechunker(conn: RunnerConnection) -> Callable[[], bytes]:
    """Return ``read()`` giving the payload of the next complete chunks; ``b""`` at the end.

    Usually one ``recv`` and a few slices per call (llama-server sends one event per chunk).
    What follows the last chunk and its trailers stays in ``conn.buffered``.

    Raises:
        IncompleteBody: The body ended before its last chunk.
        MalformedAnswer: Not chunked framing.
        OSError: The socket failed (``BlockingIOError`` when SO_RCVTIMEO expired).
    """
    recv = conn.recv
    pending = b""
    done = False

    def read() -> bytes:
        nonlocal pending, done
        if done:
            return b""
        out: list[bytes] = []
        while True:
            line_end = pending.find(b"\r\n")
            if line_end >= 0:
                size = _chunk_size(pending, 0, line_end)
                if size == 0:
                    end = pending.find(b"\r\n\r\n", line_end)
                    if end >= 0:
                        done = True
                        conn.buffered = pending[end + 4 :]
                        return b"".join(out)
                else:
                    end = line_end + 2 + size
                    if len(pending) >= end + 2:
                        if pending[end : end + 2] != b"\r\n":
                            raise MalformedAnswer("a chunk does not end where its size says")
                        out.append(pending[line_end + 2 : end])
                        pending = pending[end + 2 :]
                        continue
            elif len(pending) > MAX_SIZE_LINE:
                raise MalformedAnswer("a chunk size line without its end")
            if out:
                return out[0] if len(out) == 1 else b"".join(out)
            data = recv()
            if not data:
                raise IncompleteBody("the engine's body ended before its last chunk")
            pending = pending + data if pending else data

    return read

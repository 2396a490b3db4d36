"""Find the end of an HTTP/1.x request head in the bytes read so far, and the little the event
loop needs from it before a thread takes the request.

This is not the parser. gunicorn parses every request again, strictly, in the thread (request
smuggling rules, header limits, the error for a malformed line). The scan here only decides when
a request is complete enough to hand over and which lane serves it, so it is lenient: anything it
cannot read is handed over as it is, and gunicorn's parser answers the 400.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qsl, urlsplit

# gunicorn's own limits are a 4094-byte request line and 100 fields of 8190 bytes; a head that
# has not ended after 64 KiB is refused (431) without waiting for more.
MAX_HEAD_BYTES = 64 * 1024
_END_OF_HEAD = b"\r\n\r\n"


class HeadTooLarge(Exception):
    """No blank line ended the request head within :data:`MAX_HEAD_BYTES`."""


@dataclasses.dataclass(frozen=True)
class RequestHead:
    """What the event loop reads from a complete request head.

    Attributes:
        method: Request method, upper case ("" when the request line is unreadable).
        path: Target path without the query.
        query: Query parameters (the first value of each name).
        head_length: Bytes up to and including the blank line.
        content_length: The body's declared length; ``None`` when absent, repeated or unreadable.
        chunked: Whether ``Transfer-Encoding`` names ``chunked``.
        expects_continue: Whether the client waits for ``100 Continue`` before its body.
    """

    method: str
    path: str
    query: dict[str, str]
    head_length: int
    content_length: int | None
    chunked: bool
    expects_continue: bool = False

    def body_within(self, limit: int) -> int | None:
        """Return the body's length when the whole request can be read before dispatch.

        ``None`` for chunked bodies, bodies over ``limit`` and bodies whose sender waits for
        ``100 Continue`` (gunicorn sends it in the thread): those are read by the thread, each
        read under the client timeout. 0 for a request without a body (or unreadable framing).
        """
        if self.chunked or self.expects_continue:
            return None
        if self.content_length is None:
            return 0
        return self.content_length if self.content_length <= limit else None


def scan_head(buffer: bytes | bytearray) -> RequestHead | None:
    """Return the request head at the start of ``buffer``; ``None`` while it has not ended.

    Raises:
        HeadTooLarge: No end of head within :data:`MAX_HEAD_BYTES`.
    """
    # RFC 9112 2.2: a server should ignore empty lines before the request line.
    start = 0
    while buffer.startswith(b"\r\n", start):
        start += 2
    end = buffer.find(_END_OF_HEAD, start, start + MAX_HEAD_BYTES + len(_END_OF_HEAD))
    if end < 0:
        if len(buffer) - start > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"request head longer than {MAX_HEAD_BYTES} bytes")
        return None
    lines = bytes(buffer[start:end]).split(b"\r\n")
    method, path, query = _request_line(lines[0])
    content_lengths: list[str] = []
    chunked = False
    expects_continue = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        field = name.strip().lower()
        if field == b"content-length":
            content_lengths.append(value.strip().decode("latin-1"))
        elif field == b"transfer-encoding":
            chunked = chunked or b"chunked" in value.lower()
        elif field == b"expect":
            expects_continue = value.strip().lower() == b"100-continue"
    return RequestHead(
        method=method,
        path=path,
        query=query,
        head_length=end + len(_END_OF_HEAD),
        content_length=_content_length(content_lengths),
        chunked=chunked,
        expects_continue=expects_continue,
    )


def _request_line(line: bytes) -> tuple[str, str, dict[str, str]]:
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3:
        return "", "", {}
    split = urlsplit(parts[1])
    query = dict(reversed(parse_qsl(split.query, keep_blank_values=True)))
    return parts[0].upper(), split.path, query


def _content_length(values: list[str]) -> int | None:
    # Several values or a non-digit one is a framing error gunicorn refuses; hand it over.
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        return None
    return int(values[0])

"""A minimal, low-overhead HTTP client that times streamed chat completions.

The same client talks to all three targets, so its own cost is the same for each. It builds the
request body before starting the clock, opens a fresh connection per request (what a simple
client does), and looks at the raw bytes instead of parsing every SSE event: the first event
with a non-empty ``content`` gives the time to first token, the ``usage`` block of the last
event gives the token count.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from dataclasses import dataclass

from orchestrator.unixhttp import open_connection

REQUEST_TIMEOUT_SECONDS = 180.0
READ_SIZE = 65536
_CONTENT = re.compile(rb'"content":"[^"]')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":(\d+)')


@dataclass(frozen=True)
class Target:
    """One way of reaching the model.

    Attributes:
        key: ``A``, ``B`` or ``C``.
        label: ``direct``, ``daemon`` or ``router``.
        address: A Unix socket path or ``127.0.0.1:<port>``.
        chat_path: Path of chat completions on that server.
        model: The ``model`` field the server expects.
    """

    key: str
    label: str
    address: str
    chat_path: str
    model: str

    @property
    def name(self) -> str:
        """Return ``A direct`` and the like."""
        return f"{self.key} {self.label}"


@dataclass(frozen=True)
class StreamResult:
    """Timings of one streamed chat completion (seconds, relative to the request being sent).

    Attributes:
        ok: 200, the stream ended normally and carried as many tokens as asked.
        status: HTTP status (0 when there was none).
        error: What went wrong, empty when ``ok``.
        started: ``time.monotonic()`` when the connection was opened.
        ttft: Time to the first content token.
        total: Time to the end of the stream.
        tokens: Completion tokens (from ``usage``; else counted events).
        generation_tps: Tokens per second between the first and the last token.
    """

    ok: bool
    status: int
    error: str
    started: float
    ttft: float
    total: float
    tokens: int
    generation_tps: float


def chat_body(target: Target, *, prompt: str, max_tokens: int, seed: int) -> bytes:
    """Return the request body: fixed seed, fixed length (``ignore_eos``), usage at the end."""
    return json.dumps(
        {
            "model": target.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "seed": seed,
            "temperature": 0.7,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


def stream_chat(
    target: Target,
    *,
    prompt: str,
    max_tokens: int,
    seed: int,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> StreamResult:
    """Send one streamed chat completion to ``target`` and time it."""
    body = chat_body(target, prompt=prompt, max_tokens=max_tokens, seed=seed)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    conn = open_connection(target.address, timeout)
    started = time.monotonic()
    status = 0
    first = last = 0.0
    counted = 0
    tail = b""
    try:
        conn.request("POST", target.chat_path, body=body, headers=headers)
        response = conn.getresponse()
        status = response.status
        if status != 200:
            text = response.read()[:300].decode(errors="replace")
            return StreamResult(
                False, status, text, started, 0.0, time.monotonic() - started, 0, 0.0
            )
        read1 = response.read1
        monotonic = time.monotonic
        chunk = read1(READ_SIZE)
        while chunk:
            now = monotonic()
            hits = len(_CONTENT.findall(chunk))
            if hits:
                if not counted:
                    first = now
                last = now
                counted += hits
            # Only the end of the stream matters for usage and errors.
            tail = (tail + chunk)[-4096:]
            chunk = read1(READ_SIZE)
        end = monotonic()
    except (OSError, http.client.HTTPException) as ex:
        return StreamResult(
            False, status, repr(ex), started, 0.0, time.monotonic() - started, 0, 0.0
        )
    finally:
        conn.close()
    # The last usage block in the tail is the final one.
    matches = list(_COMPLETION_TOKENS.finditer(tail))
    tokens = int(matches[-1].group(1)) if matches else counted
    error = ""
    if b'"error"' in tail:
        error = "error event in stream: " + tail[-300:].decode(errors="replace")
    elif not counted:
        error = "no content tokens in the stream"
    elif tokens < max_tokens:
        error = f"only {tokens} of {max_tokens} tokens"
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return StreamResult(
        not error,
        status,
        error,
        started,
        first - started if counted else 0.0,
        end - started,
        tokens,
        rate,
    )


def burst(
    target: Target, *, clients: int, prompt: str, max_tokens: int, seed: int
) -> tuple[list[StreamResult], float]:
    """Run ``clients`` streamed completions at once; return their results and the wall time."""
    results: list[StreamResult | None] = [None] * clients
    gate = threading.Barrier(clients + 1)

    def one(index: int) -> None:
        try:
            gate.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        results[index] = stream_chat(
            target, prompt=prompt, max_tokens=max_tokens, seed=seed + index
        )

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    try:
        gate.wait(timeout=30)
    except threading.BrokenBarrierError:
        pass
    deadline = time.monotonic() + REQUEST_TIMEOUT_SECONDS + 30
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    wall = time.monotonic() - began
    done = [
        result
        if result is not None
        else StreamResult(False, 0, "client thread did not finish", began, 0.0, wall, 0, 0.0)
        for result in results
    ]
    return done, wall


def timed_get(conn: http.client.HTTPConnection, path: str) -> tuple[float, int, int]:
    """``GET path`` on a kept-alive connection; return (seconds, status, body bytes)."""
    started = time.monotonic()
    conn.request("GET", path)
    response = conn.getresponse()
    data = response.read()
    return time.monotonic() - started, response.status, len(data)


def request_json(
    address: str, method: str, path: str, payload: object | None = None, *, timeout: float = 60.0
) -> tuple[int, bytes]:
    """Send one small JSON request; return (status, body). Raises ``OSError`` when unreachable."""
    conn = open_connection(address, timeout)
    try:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as ex:
        raise OSError(f"{method} {path} failed: {ex!r}") from ex
    finally:
        conn.close()

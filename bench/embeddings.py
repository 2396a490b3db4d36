"""Section 8: small embedding requests in a row, direct llama-server against the daemon.

A is ``llama-server`` started with the argv the daemon's scheduler builds for embedding mode
(``--embeddings --pooling ...``), on its Unix socket; B is the daemon's
``/engines/v1/embeddings``, whose first request starts the same runner. Per round and subject:
``requests`` POSTs back to back on one kept-alive connection (only that subject busy, so the
daemon worker's CPU delta over the window belongs to those requests); rounds alternate the
order (A B, B A, ...) so drift hits both alike.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.procs import process_cpu_seconds, thread_cpu_seconds
from orchestrator.unixhttp import open_connection

REQUEST_TIMEOUT_SECONDS = 60.0
# Short inputs (a handful of tokens each), cycled in the same order for A and B.
TEXTS = (
    "The cat sat on the mat.",
    "A quick brown fox.",
    "Rain is expected tomorrow.",
    "Bicycles have two wheels.",
    "Lighthouses guide ships at night.",
    "Bread rises in a warm kitchen.",
    "The river runs to the sea.",
    "Stars are far away.",
)


@dataclass(frozen=True)
class EmbedSubject:
    """One way of reaching an embedding model, with the proxy to meter (``None`` for A)."""

    key: str
    address: str
    path: str
    model: str
    proxy_pid: Callable[[], int | None]


def embed_once(conn: http.client.HTTPConnection, subject: EmbedSubject, text: str) -> float:
    """POST one embedding request on ``conn``; return its seconds.

    Raises:
        OSError: Not a 200 with an ``embedding`` in it (the run must not count failures).
    """
    body = json.dumps({"model": subject.model, "input": text}).encode()
    headers = {"Content-Type": "application/json"}
    started = time.monotonic()
    conn.request("POST", subject.path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = time.monotonic() - started
    if response.status != 200 or b'"embedding"' not in data:
        raise OSError(f"{subject.key}: status {response.status}: {data[:200]!r}")
    return elapsed


def run_block(subject: EmbedSubject, requests: int) -> dict[str, Any]:
    """``requests`` embeddings back to back on one connection; timings and proxy CPU."""
    proxy = subject.proxy_pid()
    threads_before, process_before = thread_cpu_seconds(proxy), process_cpu_seconds(proxy)
    conn = open_connection(subject.address, REQUEST_TIMEOUT_SECONDS)
    try:
        samples = [embed_once(conn, subject, TEXTS[i % len(TEXTS)]) for i in range(requests)]
    except http.client.HTTPException as ex:
        raise OSError(f"{subject.key}: {ex!r}") from ex
    finally:
        conn.close()
    return {
        "request_s": samples,
        "proxy_thread_cpu_s": thread_cpu_seconds(proxy) - threads_before,
        "proxy_process_cpu_s": process_cpu_seconds(proxy) - process_before,
    }


def embeddings(
    subjects: Sequence[EmbedSubject],
    *,
    rounds: int,
    requests: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Run ``rounds`` interleaved blocks of ``requests`` per subject; return raw samples."""
    data: dict[str, dict[str, Any]] = {
        s.key: {
            "request_s": [],
            "round_mean_s": [],
            "round_p50_s": [],
            "requests": 0,
            "proxy_thread_cpu_s": 0.0,
            "proxy_process_cpu_s": 0.0,
        }
        for s in subjects
    }
    for round_index in range(rounds):
        shift = round_index % len(subjects)
        for subject in [*subjects[shift:], *subjects[:shift]]:
            block = run_block(subject, requests)
            entry = data[subject.key]
            entry["request_s"].extend(block["request_s"])
            entry["round_mean_s"].append(statistics.fmean(block["request_s"]))
            entry["round_p50_s"].append(statistics.median(block["request_s"]))
            entry["requests"] += requests
            entry["proxy_thread_cpu_s"] += block["proxy_thread_cpu_s"]
            entry["proxy_process_cpu_s"] += block["proxy_process_cpu_s"]
        log(
            f"  round {round_index + 1}/{rounds}: "
            + ", ".join(f"{k} {d['round_mean_s'][-1] * 1e3:.2f} ms" for k, d in data.items())
        )
    return data

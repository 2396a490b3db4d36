"""Per-request cost of each API face next to the same request as plain OpenAI chat.

Usage (about two minutes on 2 cores)::

    LLAMA_SERVER_PATH="$(bin/provision-engine)" DMR_TEST_MODEL="$(bin/provision-model)" \\
        .venv/bin/python -m bench.faces [--rounds 30] [--tokens 8]

One ``model-runner serve`` on a scratch store with SmolLM2 (``model-runner package``, as
``make run``). Every round sends the same prompt (temperature 0, ``--tokens`` tokens, not
streamed, one keep-alive connection per face) five ways, in an order rotated each round:

* ``direct``: ``/v1/chat/completions`` on the daemon's own runner socket (the engine alone);
* ``openai``: ``/engines/v1/chat/completions`` through the daemon (the pass-through proxy);
* ``ollama``: ``/api/chat`` (translated to chat completions);
* ``anthropic``: ``/anthropic/v1/messages`` (llama-server's native Messages, answer fixed);
* ``responses``: ``/v1/responses`` (translated to chat completions, stored).

It prints per face the median latency, the median of the per-round difference to ``openai``
(paired, so drift of a busy machine cancels), and the gunicorn worker's CPU per request
(``/proc`` ticks summed over the rounds). The engine's time is the same for every face; what
differs is the face's own work.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import BenchError, cpu_seconds
from bench.targets import DAEMON_MODEL, Workspace, package_model, start_daemon
from orchestrator import unixhttp

PROMPT = "Say hello."
REQUEST_TIMEOUT_SECONDS = 120.0


def _bodies(tokens: int) -> dict[str, tuple[str, dict[str, Any]]]:
    messages = [{"role": "user", "content": PROMPT}]
    chat = {"model": DAEMON_MODEL, "messages": messages, "max_tokens": tokens, "temperature": 0}
    return {
        "direct": ("/v1/chat/completions", chat),
        "openai": ("/engines/v1/chat/completions", chat),
        "ollama": (
            "/api/chat",
            {
                "model": DAEMON_MODEL, "messages": messages, "stream": False,
                "options": {"num_predict": tokens, "temperature": 0},
            },
        ),  # fmt: skip
        "anthropic": (
            "/anthropic/v1/messages",
            {"model": DAEMON_MODEL, "messages": messages, "max_tokens": tokens, "temperature": 0},
        ),
        "responses": (
            "/v1/responses",
            {
                "model": DAEMON_MODEL, "input": PROMPT, "max_output_tokens": tokens,
                "temperature": 0,
            },
        ),  # fmt: skip
    }


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, Any]) -> float:
    data = json.dumps(body).encode()
    started = time.perf_counter()
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise BenchError(f"{path} answered {response.status}: {answer[:300]!r}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args(argv)
    engine = Path(os.environ["LLAMA_SERVER_PATH"]) / "llama-server"
    model = Path(os.environ["DMR_TEST_MODEL"])
    scratch = Path(tempfile.mkdtemp(prefix="faces-", dir="/tmp"))
    ws = Workspace(scratch=scratch, engine=engine, model_gguf=model)
    try:
        models = scratch / "models"
        package_model(ws, models)
        daemon = start_daemon(ws, "d", models)
        bodies = _bodies(args.tokens)
        conns = {
            name: http.client.HTTPConnection(
                "127.0.0.1", daemon.port, timeout=REQUEST_TIMEOUT_SECONDS
            )
            for name in bodies
            if name != "direct"
        }
        for name, conn in conns.items():  # loads the runner, warms every face
            _post(conn, *bodies[name])
        sockets = glob.glob(str(daemon.base / "run" / "**" / "*.sock"), recursive=True)
        if not sockets:
            raise BenchError("the daemon's runner socket was not found")
        conns["direct"] = unixhttp.open_connection(sockets[0], REQUEST_TIMEOUT_SECONDS)
        _post(conns["direct"], *bodies["direct"])
        worker = daemon.worker_pid()
        names = list(bodies)
        latency: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                before = cpu_seconds(worker)
                latency[name].append(_post(conns[name], *bodies[name]))
                cpu[name] += cpu_seconds(worker) - before
        base = latency["openai"]
        print(f"{args.rounds} rotated rounds of {args.tokens} tokens, not streamed")
        print("| face | p50 ms | paired p50 over openai, ms | worker CPU ms/request |")
        print("|---|---|---|---|")
        for name in names:
            paired = statistics.median(a - b for a, b in zip(latency[name], base, strict=True))
            print(
                f"| {name} | {statistics.median(latency[name]) * 1e3:.1f} | {paired * 1e3:+.2f} | "
                f"{cpu[name] * 1e3 / args.rounds:.2f} |"
            )
        return 0
    except BenchError as ex:
        print(f"bench failed: {ex}", file=sys.stderr)
        return 1
    finally:
        ws.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())

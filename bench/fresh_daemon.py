"""Section 10: the first request on a freshly started daemon, next to a bare spawn of A.

Per repeat, in alternating order: **A** spawns ``llama-server`` with the daemon's argv and
times spawn -> ready and spawn -> first token (:func:`bench.inference.bare_spawn`); **F**
starts a new ``model-runner serve`` on the same store, waits until ``GET /version`` answers
(polled every 5 ms: the daemon's "ready" point), then times one streamed chat request
(``max_tokens`` 1) from sending it to its first token; that request starts the runner, so it
pays for what A's spawn -> first token pays for, plus whatever the daemon adds. Then the daemon
is stopped (its runner with it) before the next repeat.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.client import Target, stream_chat
from bench.inference import PROMPTS, SEED, bare_spawn
from bench.procs import BenchError, is_gone, wait_until
from bench.targets import DAEMON_MODEL, Workspace, live_argv, start_daemon

RUNNER_GONE_TIMEOUT_SECONDS = 30.0
VERSION_POLL_SECONDS = 0.005


def fresh_daemon_first_token(ws: Workspace, models: Path, repeat: int) -> dict[str, Any]:
    """Start a daemon on ``models``, time its first request, stop it; seconds or ``error``."""
    began = time.monotonic()
    daemon = start_daemon(ws, f"fresh{repeat}", models, ready_interval=VERSION_POLL_SECONDS)
    ready_at = time.monotonic()
    try:
        target = Target(
            "F", "fresh daemon", daemon.address, "/engines/v1/chat/completions", DAEMON_MODEL
        )
        result = stream_chat(target, prompt=PROMPTS[0], max_tokens=1, seed=SEED)
        runner = daemon.runner_pid()
        argv = live_argv(runner, ws.scratch / "fresh-a.sock")
        if runner is not None:
            ws.procs.adopt([runner])
    finally:
        ws.procs.stop(daemon.proc)
    if runner is not None and not wait_until(
        lambda: is_gone(runner), timeout=RUNNER_GONE_TIMEOUT_SECONDS
    ):
        raise BenchError(f"the fresh daemon's runner (pid {runner}) outlived it")
    if not result.ok:
        return {"error": result.error[:200]}
    return {
        "spawn_to_version_s": ready_at - began,
        "first_token_s": result.ttft,
        "spawn_to_first_token_s": result.started + result.ttft - began,
        "runner_argv": argv,
    }


def fresh_daemon(
    ws: Workspace,
    *,
    models: Path,
    template: Target,
    spawn_direct: Callable[[int, list[str]], tuple[Any, str]],
    argv: list[str],
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run ``repeats`` interleaved pairs (F fresh daemon, A bare spawn); return raw seconds.

    A spawns with the argv the latest fresh daemon's runner ran (``argv`` until there is one);
    F goes first in even repeats, so A's first spawn already copies a live runner.
    """
    data: dict[str, Any] = {
        "A_spawn_to_ready_s": [],
        "A_spawn_to_first_token_s": [],
        "F_spawn_to_version_s": [],
        "F_first_token_s": [],
        "F_spawn_to_first_token_s": [],
        "errors": [],
        "runner_argv": None,
    }
    for repeat in range(repeats):
        for key in ("F", "A") if repeat % 2 == 0 else ("A", "F"):
            if key == "A":
                live = data["runner_argv"] or argv
                spawn = bare_spawn(
                    lambda r, live=live: spawn_direct(r, live), ws.procs.stop, template, repeat
                )
                if "error" in spawn:
                    data["errors"].append(f"A: {spawn['error']}")
                    continue
                data["A_spawn_to_ready_s"].append(spawn["ready_s"])
                data["A_spawn_to_first_token_s"].append(spawn["first_token_s"])
            else:
                fresh = fresh_daemon_first_token(ws, models, repeat)
                if "error" in fresh:
                    data["errors"].append(f"F: {fresh['error']}")
                    continue
                data["runner_argv"] = fresh.pop("runner_argv") or data["runner_argv"]
                for name, value in fresh.items():
                    data[f"F_{name}"].append(value)
        log(
            f"  repeat {repeat + 1}/{repeats}: A spawn->1st token "
            f"{[round(v * 1e3, 1) for v in data['A_spawn_to_first_token_s'][-1:]]} ms, "
            f"fresh daemon request->1st token "
            f"{[round(v * 1e3, 1) for v in data['F_first_token_s'][-1:]]} ms"
        )
    return data

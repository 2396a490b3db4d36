"""Sections 1-5: streamed generation, warm TTFT, cold start, concurrency, proxy CPU.

Rounds interleave the subjects (A B C, then B C A, then C A B, ...) so that drift of a busy
machine hits all three alike. Every request has a fixed seed and a fixed length (``max_tokens``
with ``ignore_eos``), and the same prompt goes to each subject within a round. The raw samples
are returned; :mod:`bench.report` turns them into medians and percentiles.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.client import StreamResult, Target, burst, request_json, stream_chat
from bench.procs import (
    BenchError,
    cpu_seconds,
    engine_children,
    http_status,
    process_cpu_seconds,
    thread_cpu_seconds,
    wait_until,
)
from bench.targets import Subject

SEED = 4242
PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle gear system works, step by step, for a curious child.",
    "List ten ideas for a rainy Sunday afternoon and say why each one is fun.",
    "Describe the water cycle as if you were a single drop of rain.",
    "Give advice to someone learning to cook their first dinner for friends.",
)
UNLOAD_TIMEOUT_SECONDS = 30.0
SPAWN_POLL_SECONDS = 0.005
COLD_READY_TIMEOUT_SECONDS = 90.0
# Requests after the first one on a freshly started A, for its warm TTFT.
WARM_PROBES = 3


def rotated(subjects: Sequence[Subject], shift: int) -> list[Subject]:
    """Return ``subjects`` rotated left by ``shift`` (round r starts with subject r mod n)."""
    shift %= len(subjects)
    return [*subjects[shift:], *subjects[:shift]]


def _note_error(errors: list[str], result: StreamResult) -> None:
    if len(errors) < 20:
        errors.append(f"status={result.status} {result.error[:200]}")


def single_stream(
    subjects: Sequence[Subject],
    *,
    rounds: int,
    gen_requests: int,
    max_tokens: int,
    ttft_probes: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Sections 1, 2 and the single-stream half of 5.

    Per round and subject: ``gen_requests`` generations back to back (only that subject busy,
    so the CPU deltas of its proxy and engine belong to those tokens), then ``ttft_probes``
    one-token requests per subject, interleaved, on the round's (now cached) prompt.
    """
    data: dict[str, dict[str, Any]] = {
        s.target.key: {
            "generation_tps": [],
            "ttft_s": [],
            "errors": [],
            "error_count": 0,
            "tokens": 0,
            "proxy_cpu_s": 0.0,
            "proxy_thread_cpu_s": 0.0,
            # The proxy's process CPU clock (ended threads too): what compares the daemon's
            # worker with the bare relay, which starts a thread per connection.
            "proxy_process_cpu_s": 0.0,
            "engine_cpu_s": 0.0,
            "round_mean_tps": [],
            # Per round, the median of that round's TTFT probes: paired B-A differences.
            "round_ttft_p50_s": [],
        }
        for s in subjects
    }
    for round_index in range(rounds):
        prompt = PROMPTS[round_index % len(PROMPTS)]
        order = rotated(subjects, round_index)
        for subject in order:
            subject.check_alive()
            entry = data[subject.target.key]
            proxy, engine = subject.proxy_pid(), subject.engine_pid()
            proxy_before, engine_before = cpu_seconds(proxy), cpu_seconds(engine)
            threads_before = thread_cpu_seconds(proxy)
            process_before = process_cpu_seconds(proxy)
            rates = []
            for request_index in range(gen_requests):
                result = stream_chat(
                    subject.target,
                    prompt=prompt,
                    max_tokens=max_tokens,
                    seed=SEED + 100 * round_index + request_index,
                )
                if result.ok:
                    entry["generation_tps"].append(result.generation_tps)
                    rates.append(result.generation_tps)
                    entry["tokens"] += result.tokens
                else:
                    entry["error_count"] += 1
                    _note_error(entry["errors"], result)
            entry["proxy_cpu_s"] += cpu_seconds(proxy) - proxy_before
            entry["proxy_thread_cpu_s"] += thread_cpu_seconds(proxy) - threads_before
            entry["proxy_process_cpu_s"] += process_cpu_seconds(proxy) - process_before
            entry["engine_cpu_s"] += cpu_seconds(engine) - engine_before
            entry["round_mean_tps"].append(sum(rates) / len(rates) if rates else 0.0)
        round_ttft: dict[str, list[float]] = {s.target.key: [] for s in subjects}
        for probe in range(ttft_probes):
            for subject in rotated(order, probe):
                entry = data[subject.target.key]
                result = stream_chat(
                    subject.target, prompt=prompt, max_tokens=1, seed=SEED + round_index
                )
                if result.ok:
                    entry["ttft_s"].append(result.ttft)
                    round_ttft[subject.target.key].append(result.ttft)
                else:
                    entry["error_count"] += 1
                    _note_error(entry["errors"], result)
        for key, samples in round_ttft.items():
            data[key]["round_ttft_p50_s"].append(statistics.median(samples) if samples else None)
        summary = ", ".join(f"{key} {d['round_mean_tps'][-1]:.1f} tok/s" for key, d in data.items())
        log(f"  round {round_index + 1}/{rounds}: {summary}")
    return data


def _wait_daemon_unloaded(daemon_address: str, runner_pid: Callable[[], int | None]) -> None:
    status, body = request_json(daemon_address, "POST", "/engines/unload", {"all": True})
    if status != 200:
        raise BenchError(f"POST /engines/unload answered {status}: {body[:200]!r}")

    def unloaded() -> bool:
        status, body = request_json(daemon_address, "GET", "/engines/ps")
        return status == 200 and json.loads(body) == [] and runner_pid() is None

    if not wait_until(unloaded, timeout=UNLOAD_TIMEOUT_SECONDS, interval=0.05):
        raise BenchError("the daemon's runner did not stop after POST /engines/unload")


def _wait_router_unloaded(router_address: str, model: str, router_pid: int) -> None:
    status, body = request_json(router_address, "POST", "/models/unload", {"model": model})
    if status != 200:
        raise BenchError(f"router POST /models/unload answered {status}: {body[:200]!r}")
    if not wait_until(lambda: not engine_children(router_pid), timeout=UNLOAD_TIMEOUT_SECONDS):
        raise BenchError("the router's child llama-server did not stop after /models/unload")

    def unloaded() -> bool:
        status, body = request_json(router_address, "GET", "/models")
        if status != 200:
            return False
        entries = json.loads(body).get("data", [])
        return all(entry.get("status", {}).get("value") == "unloaded" for entry in entries)

    if not wait_until(unloaded, timeout=UNLOAD_TIMEOUT_SECONDS):
        raise BenchError("the router still lists the model as loaded after /models/unload")


def bare_spawn(
    spawn_direct: Callable[[int], tuple[Any, str]],
    stop_direct: Callable[[Any], None],
    template: Target,
    repeat: int,
) -> dict[str, Any]:
    """Spawn a cold llama-server (A), time it to ready and to its first token, then stop it.

    Poll ``/health`` every 5 ms until 200 (spawn-to-ready), send the first request (spawn to
    first token: the same first, uncached request a daemon's cold start serves) and
    :data:`WARM_PROBES` more (A's warm TTFT). Returns the timings in seconds, or ``error``
    alone when the first request failed.

    Raises:
        BenchError: The server exited or did not become ready.
    """
    began = time.monotonic()
    proc, address = spawn_direct(repeat)
    try:
        ready = wait_until(
            lambda: proc.poll() is not None or http_status(address, "/health") == 200,
            timeout=COLD_READY_TIMEOUT_SECONDS,
            interval=SPAWN_POLL_SECONDS,
        )
        ready_at = time.monotonic()
        if not ready or proc.poll() is not None:
            raise BenchError(f"cold llama-server did not become ready on {address}")
        target = Target(template.key, template.label, address, template.chat_path, template.model)
        result = stream_chat(target, prompt=PROMPTS[0], max_tokens=1, seed=SEED)
        warm = [
            stream_chat(target, prompt=PROMPTS[0], max_tokens=1, seed=SEED)
            for _ in range(WARM_PROBES)
        ]
    finally:
        stop_direct(proc)
    if not result.ok:
        return {"error": result.error[:200]}
    return {
        "ready_s": ready_at - began,
        "first_request_ttft_s": result.ttft,
        "first_token_s": result.started + result.ttft - began,
        "warm_ttft_s": [probe.ttft for probe in warm if probe.ok],
    }


def cold_start(
    *,
    targets: dict[str, Target],
    spawn_direct: Callable[[int], tuple[Any, str]],
    stop_direct: Callable[[Any], None],
    daemon_runner_pid: Callable[[], int | None],
    router_pid: int,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Section 3: first token from an unloaded model, next to a bare spawn of A.

    A: spawn ``llama-server`` (the daemon's argv, a fresh socket), poll ``/health`` every
    5 ms until 200 (spawn-to-ready), then one request (spawn-to-first-token: the same first,
    uncached request B and C get) and a few more (warm TTFT). B: unload every
    runner, wait until it is gone, then time one request. C: unload the router's model, wait
    until its child is gone, then time one request.
    """
    data: dict[str, Any] = {
        "A_spawn_to_ready_s": [],
        "A_spawn_to_first_token_s": [],
        "A_first_request_ttft_s": [],
        "A_warm_ttft_s": [],
        "B_cold_first_token_s": [],
        "C_cold_first_token_s": [],
        "errors": [],
    }
    for repeat in range(repeats):
        for key in rotated(["A", "B", "C"], repeat):  # type: ignore[arg-type]
            if key == "A":
                spawn = bare_spawn(spawn_direct, stop_direct, targets["A"], repeat)
                if "error" in spawn:
                    data["errors"].append(f"A: {spawn['error']}")
                else:
                    data["A_spawn_to_ready_s"].append(spawn["ready_s"])
                    data["A_first_request_ttft_s"].append(spawn["first_request_ttft_s"])
                    data["A_spawn_to_first_token_s"].append(spawn["first_token_s"])
                    data["A_warm_ttft_s"].extend(spawn["warm_ttft_s"])
            elif key == "B":
                _wait_daemon_unloaded(targets["B"].address, daemon_runner_pid)
                result = stream_chat(targets["B"], prompt=PROMPTS[0], max_tokens=1, seed=SEED)
                if result.ok:
                    data["B_cold_first_token_s"].append(result.ttft)
                else:
                    data["errors"].append(f"B: {result.error[:200]}")
            else:
                _wait_router_unloaded(targets["C"].address, targets["C"].model, router_pid)
                result = stream_chat(targets["C"], prompt=PROMPTS[0], max_tokens=1, seed=SEED)
                if result.ok:
                    data["C_cold_first_token_s"].append(result.ttft)
                else:
                    data["errors"].append(f"C: {result.error[:200]}")
        log(
            f"  repeat {repeat + 1}/{repeats}: A ready {data['A_spawn_to_ready_s'][-1:]}, "
            f"B cold {data['B_cold_first_token_s'][-1:]}, "
            f"C cold {data['C_cold_first_token_s'][-1:]}"
        )
    return data


def concurrency(
    subjects: Sequence[Subject],
    *,
    levels: Sequence[int],
    rounds: int,
    max_tokens: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Section 4 and the concurrent half of 5: bursts of N streaming clients per subject."""
    data: dict[str, dict[str, dict[str, Any]]] = {s.target.key: {} for s in subjects}
    for level_index, level in enumerate(levels):
        for subject in subjects:
            data[subject.target.key][str(level)] = {
                "aggregate_tps": [],
                "ttft_s": [],
                "errors": 0,
                "error_samples": [],
                "requests": 0,
                "tokens": 0,
                "wall_s": 0.0,
                "proxy_cpu_s": 0.0,
                "proxy_thread_cpu_s": 0.0,
                "proxy_process_cpu_s": 0.0,
                "engine_cpu_s": 0.0,
            }
        for round_index in range(rounds):
            for subject in rotated(subjects, round_index + level_index):
                subject.check_alive()
                entry = data[subject.target.key][str(level)]
                proxy, engine = subject.proxy_pid(), subject.engine_pid()
                proxy_before, engine_before = cpu_seconds(proxy), cpu_seconds(engine)
                threads_before = thread_cpu_seconds(proxy)
                process_before = process_cpu_seconds(proxy)
                results, wall = burst(
                    subject.target,
                    clients=level,
                    prompt=PROMPTS[round_index % len(PROMPTS)],
                    max_tokens=max_tokens,
                    seed=SEED + 1000 * level + round_index,
                )
                entry["proxy_cpu_s"] += cpu_seconds(proxy) - proxy_before
                entry["proxy_thread_cpu_s"] += thread_cpu_seconds(proxy) - threads_before
                entry["proxy_process_cpu_s"] += process_cpu_seconds(proxy) - process_before
                entry["engine_cpu_s"] += cpu_seconds(engine) - engine_before
                good = [result for result in results if result.ok]
                tokens = sum(result.tokens for result in good)
                entry["requests"] += len(results)
                entry["errors"] += len(results) - len(good)
                for result in results:
                    if not result.ok:
                        _note_error(entry["error_samples"], result)
                entry["tokens"] += tokens
                entry["wall_s"] += wall
                entry["aggregate_tps"].append(tokens / wall if wall > 0 else 0.0)
                entry["ttft_s"].extend(result.ttft for result in good)
        parts = []
        for key, entry in data.items():
            rates = entry[str(level)]["aggregate_tps"]
            mean = sum(rates) / max(1, len(rates))
            parts.append(f"{key} {mean:.1f} tok/s ({entry[str(level)]['errors']} errors)")
        log(f"  {level:>2} clients: " + ", ".join(parts))
    return data


def argv_matches(daemon_runner_pid: int | None, direct_argv: list[str]) -> dict[str, Any]:
    """Compare the daemon runner's command line with A's (socket paths aside)."""
    if daemon_runner_pid is None:
        return {"checked": False, "reason": "no daemon runner running"}
    try:
        raw = Path(f"/proc/{daemon_runner_pid}/cmdline").read_bytes()
    except OSError as ex:
        return {"checked": False, "reason": repr(ex)}
    runner = [part.decode() for part in raw.split(b"\0") if part]

    def without_host(argv: list[str]) -> list[str]:
        index = argv.index("--host") if "--host" in argv else -1
        return argv[:index] + argv[index + 2 :] if index >= 0 else argv

    same = without_host(runner) == without_host(direct_argv)
    return {"checked": True, "identical_except_socket": same, "daemon_runner_argv": runner}

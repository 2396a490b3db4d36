"""``docker model bench``: generation throughput at several concurrency levels.

For each level N, N threads send non-streaming chat requests back to back for ``--duration``;
the table reports requests, failures, generated tokens (``usage.completion_tokens``), tokens per
second over the level's wall time and the mean request latency.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import asdict, dataclass

from orchestrator import errors
from orchestrator.modelcli.commands.run import CHAT_PATH, ensure_local, preload
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.daemon_client import DaemonClient
from orchestrator.modelcli.formatting import render_table
from orchestrator.settings import parse_duration

DEFAULT_CONCURRENCY = (1, 2, 4, 8)
DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."


@dataclass
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    requests: int = 0
    failed: int = 0
    completion_tokens: int = 0
    duration_seconds: float = 0.0
    latency_total_seconds: float = 0.0
    last_error: str = ""

    @property
    def tokens_per_second(self) -> float:
        """Return generated tokens per second of wall time."""
        return self.completion_tokens / self.duration_seconds if self.duration_seconds > 0 else 0.0

    @property
    def average_latency_seconds(self) -> float:
        """Return the mean latency of successful requests."""
        done = self.requests - self.failed
        return self.latency_total_seconds / done if done > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        """Return the ``--json`` form of this level."""
        data: dict[str, object] = asdict(self)
        data.pop("latency_total_seconds")
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        data["average_latency_seconds"] = round(self.average_latency_seconds, 3)
        data["duration_seconds"] = round(self.duration_seconds, 3)
        return data


def _concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as ex:
        raise argparse.ArgumentTypeError(f"expected numbers such as 1,2,4,8, not {text!r}") from ex
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be 1 or more")
    return levels


def _seconds(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as ex:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30s or 2m, not {text!r}"
        ) from ex
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be more than 0")
    return value


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench`` to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "bench", help="Benchmark a model's generation speed at several concurrency levels"
    )
    cmd.add_argument("model", metavar="MODEL")
    cmd.add_argument(
        "--concurrency",
        type=_concurrency_list,
        default=list(DEFAULT_CONCURRENCY),
        help="comma list of concurrent request counts (default 1,2,4,8)",
    )
    cmd.add_argument(
        "--duration", type=_seconds, default=30.0, help="how long each level runs (default 30s)"
    )
    cmd.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt sent in every request")
    cmd.add_argument(
        "--max-tokens", type=int, default=128, help="tokens generated per request (default 128)"
    )
    cmd.add_argument(
        "--timeout", type=_seconds, default=300.0, help="timeout of one request (default 5m)"
    )
    cmd.add_argument("--json", action="store_true", help="print the results as JSON")
    cmd.set_defaults(func=cmd_bench)


def _worker(
    client: DaemonClient,
    body: dict[str, object],
    deadline: float,
    timeout: float,
    result: LevelResult,
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                answer = client.post_json(CHAT_PATH, body, read_timeout=timeout) or {}
                tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
                error = ""
            except errors.OrchestratorError as ex:
                tokens, error = 0, ex.message
            elapsed = time.monotonic() - started
            with lock:
                result.requests += 1
                if error:
                    result.failed += 1
                    result.last_error = error
                else:
                    result.completion_tokens += tokens
                    result.latency_total_seconds += elapsed
    finally:
        client.close()


def run_level(
    ctx: CliContext,
    model: str,
    concurrency: int,
    *,
    prompt: str,
    max_tokens: int,
    duration: float,
    timeout: float,
) -> LevelResult:
    """Run one concurrency level and return what it measured."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    result = LevelResult(concurrency)
    lock, stop = threading.Lock(), threading.Event()
    started = time.monotonic()
    deadline = started + duration
    threads = [
        threading.Thread(
            target=_worker,
            args=(DaemonClient(ctx.client.base_url), body, deadline, timeout, result, lock, stop),
            name=f"bench-{index}",
            daemon=True,
        )
        for index in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    try:
        # A request started just before the deadline may run for up to `timeout` more.
        join_deadline = deadline + timeout + 5.0
        for thread in threads:
            thread.join(max(0.0, join_deadline - time.monotonic()))
    finally:
        stop.set()
    result.duration_seconds = time.monotonic() - started
    return result


def cmd_bench(args: argparse.Namespace, ctx: CliContext) -> int:
    """``bench MODEL``."""
    ensure_local(ctx, args.model)
    ctx.err(f"Loading {args.model}...")
    preload(ctx.client, args.model)
    results = []
    for level in args.concurrency:
        ctx.err(f"Running {level} concurrent request(s) for {args.duration:g}s...")
        results.append(
            run_level(
                ctx,
                args.model,
                level,
                prompt=args.prompt,
                max_tokens=args.max_tokens,
                duration=args.duration,
                timeout=args.timeout,
            )
        )
    if args.json:
        ctx.out(
            json.dumps({"model": args.model, "results": [r.to_dict() for r in results]}, indent=4)
        )
    else:
        rows = [
            [
                str(r.concurrency),
                str(r.requests),
                str(r.failed),
                str(r.completion_tokens),
                f"{r.tokens_per_second:.2f}",
                f"{r.average_latency_seconds:.2f}s",
            ]
            for r in results
        ]
        ctx.stdout.write(
            render_table(
                ("CONCURRENCY", "REQUESTS", "FAILED", "TOKENS", "TOKENS/S", "AVG LATENCY"),
                rows,
                right_aligned=range(6),
            )
        )
    failures = [r for r in results if r.requests and r.failed == r.requests]
    if failures:
        first = failures[0]
        ctx.err(
            f"{ctx.prog}: every request failed at concurrency {first.concurrency}: "
            f"{first.last_error}"
        )
        return 1
    return 0
